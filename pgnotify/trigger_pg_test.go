package pgnotify_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tiercache/tiercache/pgnotify"
)

// The trigger on a real table, read by a plain LISTEN: each write sends
// the payload its description promises, names and strings quoted however
// odd they are.
func TestTriggerOnPostgres(t *testing.T) {
	db := openDB(t)
	table := `Odd "T" ` + unique(t, "")
	channel := "Ch" + unique(t, "_")
	exec(t, db, `CREATE TABLE `+pgx.Identifier{table}.Sanitize()+` ("Key" text PRIMARY KEY, cat int, "Tag" text)`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP TABLE `+pgx.Identifier{table}.Sanitize()); err != nil {
			t.Errorf("dropping the table: %v", err)
		}
	})
	const ns = `ns 'odd' \ $tiercache$`
	install(t, db, pgnotify.TriggerConfig{
		Table:     table,
		Namespace: ns,
		KeyColumn: "Key",
		Groups: []pgnotify.GroupColumn{
			{Prefix: "cat:", Column: "cat"},
			{Prefix: "tag'", Column: "Tag"},
		},
		Channel:  channel,
		Function: unique(t, "f_"),
	})

	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgDSN)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, pgHint)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatalf("LISTEN: %v", err)
	}
	q := pgx.Identifier{table}.Sanitize()
	expect := func(what string, want pgnotify.Notification) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, guard)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("%s: no notification: %v", what, err)
		}
		got, err := pgnotify.ParsePayload([]byte(n.Payload))
		if err != nil {
			t.Fatalf("%s: %s: %v", what, n.Payload, err)
		}
		// DISTINCT gives no order.
		slices.Sort(got.Keys)
		slices.Sort(got.Groups)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s sent %s = %#v; want %#v", what, n.Payload, got, want)
		}
	}
	keys := func(k ...string) []string { return k }

	exec(t, db, "INSERT INTO "+q+` VALUES ('a', 1, NULL)`)
	expect("INSERT", pgnotify.Notification{Namespace: ns, Keys: keys("a"), Groups: keys("cat:1")})

	exec(t, db, "UPDATE "+q+` SET "Key" = 'b', cat = 2, "Tag" = 'x' WHERE "Key" = 'a'`)
	expect("UPDATE of the key and groups", pgnotify.Notification{Namespace: ns, Keys: keys("a", "b"), Groups: keys("cat:1", "cat:2", "tag'x")})

	exec(t, db, "UPDATE "+q+` SET cat = cat`)
	expect("UPDATE that changes nothing", pgnotify.Notification{Namespace: ns, Keys: keys("b"), Groups: keys("cat:2", "tag'x")})

	// A rolled-back write sends nothing: the next notification is the
	// DELETE's.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+q+` VALUES ('rolled back', 9, NULL)`); err != nil {
		t.Fatalf("insert: %v", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	exec(t, db, "DELETE FROM "+q+` WHERE "Key" = 'b'`)
	expect("DELETE", pgnotify.Notification{Namespace: ns, Keys: keys("b"), Groups: keys("cat:2", "tag'x")})

	// A row whose key and groups are all empty or NULL sends nothing; a
	// key too long for a payload sends the namespace.
	exec(t, db, "INSERT INTO "+q+` VALUES ('', NULL, NULL)`)
	exec(t, db, "INSERT INTO "+q+` VALUES ($1, 3, NULL)`, strings.Repeat("k", 9000))
	expect("INSERT of a long key", pgnotify.Notification{Namespace: ns, All: true})

	exec(t, db, "TRUNCATE "+q)
	expect("TRUNCATE", pgnotify.Notification{Namespace: ns, All: true})

	// Nothing else was sent.
	wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer wcancel()
	if n, err := conn.WaitForNotification(wctx); err == nil {
		t.Fatalf("an extra notification: %s", n.Payload)
	}
}
