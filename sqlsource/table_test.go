package sqlsource_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

var (
	ada   = user{1, "Ada"}
	grace = user{2, "Grace"}
	alan  = user{3, "Alan"}
)

// Fetch finds a row by its key and says "not found", wrapping
// tier.ErrNotFound, for a key with no row.
func TestFetch(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		tbl, c, _ := b.users(t, db, sqlsource.Config[int64, user]{}, ada, grace)

		u, err := tbl.Fetch(t.Context(), 2)
		if err != nil || u != grace {
			t.Fatalf("Fetch(2) = %v, %v; want %v", u, err, grace)
		}
		u, err = tbl.Fetch(t.Context(), 3)
		mustErr(t, "Fetch(3)", err, tier.ErrNotFound)
		mustContain(t, "Fetch(3)", err, "no row with", "id", "= 3")
		if u != (user{}) {
			t.Fatalf("Fetch(3) returned %v with its error; want the zero value", u)
		}
		if n := c.queries(); n != 2 {
			t.Fatalf("2 Fetches ran %d queries", n)
		}
	})
}

// FetchMany returns the rows it found, reports the keys it did not as not
// found, asks for a repeated key once, and runs no query for no keys.
func TestFetchMany(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		tbl, c, _ := b.users(t, db, sqlsource.Config[int64, user]{}, ada, grace, alan)

		got, err := tbl.FetchMany(t.Context(), []int64{1, 99, 3, 1, 98})
		want := map[int64]user{1: ada, 3: alan}
		var ke *tier.KeyErrors[int64]
		if !errors.As(err, &ke) || !maps.Equal(got, want) {
			t.Fatalf("FetchMany = %v, %v; want %v and keys 99, 98 not found", got, err, want)
		}
		if len(ke.Errs) != 2 || !errors.Is(ke.Errs[99], tier.ErrNotFound) || !errors.Is(ke.Errs[98], tier.ErrNotFound) {
			t.Fatalf("FetchMany's errors %v; want 99 and 98 not found", ke.Errs)
		}
		if n := c.queries(); n != 1 {
			t.Fatalf("FetchMany of 5 keys ran %d queries; want 1", n)
		}
		for _, keys := range [][]int64{nil, {}} {
			got, err := tbl.FetchMany(t.Context(), keys)
			if err != nil || got == nil || len(got) != 0 {
				t.Fatalf("FetchMany(%v) = %v, %v; want an empty map", keys, got, err)
			}
		}
		if n := c.queries(); n != 0 {
			t.Fatalf("FetchMany of no keys ran %d queries", n)
		}
	})
}

// FetchMany asks for at most BatchSize keys in a statement: on MariaDB,
// 5,000 keys are 5 statements of the default 1,000; on PostgreSQL, one
// array of the default 10,000. A partial last batch is read too.
func TestFetchManyBatches(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		var rows []user
		for id := int64(1); id <= 4900; id++ {
			rows = append(rows, user{id, fmt.Sprint("user ", id)})
		}
		tbl, c, name := b.users(t, db, sqlsource.Config[int64, user]{}, rows...)
		keys := make([]int64, 5000) // 100 of them with no row
		for i := range keys {
			keys[i] = int64(len(keys) - i)
		}
		got, err := tbl.FetchMany(t.Context(), keys)
		var ke *tier.KeyErrors[int64]
		if !errors.As(err, &ke) || len(ke.Errs) != 100 || !errors.Is(ke.Errs[5000], tier.ErrNotFound) {
			t.Fatalf("FetchMany of %d keys: %v; want the 100 with no row not found", len(keys), err)
		}
		if len(got) != len(rows) {
			t.Fatalf("FetchMany of %d keys found %d; want %d", len(keys), len(got), len(rows))
		}
		for _, u := range rows {
			if got[u.ID] != u {
				t.Fatalf("FetchMany: key %d = %v; want %v", u.ID, got[u.ID], u)
			}
		}
		want := map[sqlsource.Dialect]int{sqlsource.Postgres: 1, sqlsource.MySQL: 5}[b.dialect]
		if n := c.queries(); n != want {
			t.Fatalf("FetchMany of %d keys ran %d queries; want %d", len(keys), n, want)
		}
		form := map[sqlsource.Dialect]string{sqlsource.Postgres: "= ANY($1)", sqlsource.MySQL: "IN (?, ?, "}[b.dialect]
		if !strings.Contains(c.last, form) {
			t.Fatalf("FetchMany's statement %.200q does not use %q", c.last, form)
		}

		// 20 keys in batches of 7: 7, 7 and 6.
		small, err := sqlsource.New(sqlsource.Config[int64, user]{
			DB: c, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"},
			Scan: scanUser, BatchSize: 7,
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err = small.FetchMany(t.Context(), keys[len(keys)-20:])
		if err != nil || len(got) != 20 || got[20] != rows[19] {
			t.Fatalf("FetchMany of 20 keys by 7 = %d values, %v", len(got), err)
		}
		if n := c.queries(); n != 3 {
			t.Fatalf("FetchMany of 20 keys by 7 ran %d queries; want 3", n)
		}
	})
}

// LoadAll reads the whole table, or the rows Where admits, which also
// bounds Fetch and FetchMany; more than MaxRows rows is an error, not a
// truncated map.
func TestLoadAll(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		tbl, _, _ := b.users(t, db, sqlsource.Config[int64, user]{}, ada, grace, alan)
		all, err := tbl.LoadAll(t.Context())
		want := map[int64]user{1: ada, 2: grace, 3: alan}
		if err != nil || !maps.Equal(all, want) {
			t.Fatalf("LoadAll = %v, %v; want %v", all, err, want)
		}

		where, _, _ := b.users(t, db, sqlsource.Config[int64, user]{Where: "name <> 'Grace'"}, ada, grace, alan)
		all, err = where.LoadAll(t.Context())
		delete(want, 2)
		if err != nil || !maps.Equal(all, want) {
			t.Fatalf("LoadAll with Where = %v, %v; want %v", all, err, want)
		}
		_, err = where.Fetch(t.Context(), 2)
		mustErr(t, "Fetch of a row Where excludes", err, tier.ErrNotFound)
		many, err := where.FetchMany(t.Context(), []int64{1, 2})
		mustErr(t, "FetchMany of a row Where excludes", err, tier.ErrNotFound)
		if !maps.Equal(many, map[int64]user{1: ada}) {
			t.Fatalf("FetchMany with Where = %v, %v", many, err)
		}

		for _, tc := range []struct {
			max  int
			want error
		}{{2, sqlsource.ErrTooManyRows}, {3, nil}, {-1, nil}} {
			lim, _, _ := b.users(t, db, sqlsource.Config[int64, user]{MaxRows: tc.max}, ada, grace, alan)
			all, err := lim.LoadAll(t.Context())
			if tc.want != nil {
				mustErr(t, fmt.Sprintf("LoadAll with MaxRows %d", tc.max), err, tc.want)
				if all != nil {
					t.Fatalf("LoadAll with MaxRows %d returned a map with its error", tc.max)
				}
			} else if err != nil || len(all) != 3 {
				t.Fatalf("LoadAll with MaxRows %d = %v, %v", tc.max, all, err)
			}
		}
	})
}

// Two rows with one key are an error naming the key, from every call, and
// never a value chosen among them.
func TestDuplicateKey(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		name := b.table(t, db, "id BIGINT NOT NULL, name VARCHAR(255) NOT NULL")
		b.insert(t, db, name, "id, name", []any{7, "a"}, []any{7, "b"}, []any{8, "c"})
		tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
			DB: db, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: scanUser,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tbl.Fetch(t.Context(), 7)
		mustErr(t, "Fetch(7)", err, sqlsource.ErrDuplicateKey)
		mustContain(t, "Fetch(7)", err, name, "id", "= 7")
		if u, err := tbl.Fetch(t.Context(), 8); err != nil || u.Name != "c" {
			t.Fatalf("Fetch(8) = %v, %v", u, err)
		}
		many, err := tbl.FetchMany(t.Context(), []int64{8, 7})
		mustErr(t, "FetchMany", err, sqlsource.ErrDuplicateKey)
		mustContain(t, "FetchMany", err, "= 7")
		all, err2 := tbl.LoadAll(t.Context())
		mustErr(t, "LoadAll", err2, sqlsource.ErrDuplicateKey)
		mustContain(t, "LoadAll", err2, "= 7")
		if many != nil || all != nil {
			t.Fatalf("a map came with the error: %v, %v", many, all)
		}
		if s := db.Stats(); s.InUse != 0 {
			t.Fatalf("%d connections still in use: rows left open", s.InUse)
		}
	})
}

// A row that does not scan is an error naming the table, the row and the
// columns, from every call; it is never "not found".
func TestScanFailure(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		name := b.table(t, db, "id BIGINT PRIMARY KEY, name VARCHAR(255)")
		b.insert(t, db, name, "id, name", []any{1, "Ada"}, []any{2, nil})
		newTable := func(scan func(sqlsource.Row) (int64, user, error)) *sqlsource.Table[int64, user] {
			tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
				DB: db, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: scan,
			})
			if err != nil {
				t.Fatal(err)
			}
			return tbl
		}
		for _, tc := range []struct {
			what string
			scan func(sqlsource.Row) (int64, user, error)
			key  int64
			says string
		}{
			{"NULL into a string", scanUser, 2, "NULL"},
			{"too few destinations", func(r sqlsource.Row) (int64, user, error) {
				var id int64
				return id, user{}, r.Scan(&id)
			}, 1, "destination arguments"},
			{"text into an integer", func(r sqlsource.Row) (int64, user, error) {
				var id, n int64
				return id, user{}, r.Scan(&id, &n)
			}, 1, "column index 1"},
			{"into sql.RawBytes", func(r sqlsource.Row) (int64, user, error) {
				var (
					u   user
					raw sql.RawBytes
				)
				err := r.Scan(&u.ID, &raw)
				return u.ID, u, err
			}, 1, "RawBytes"},
			{"Scan's own error", func(r sqlsource.Row) (int64, user, error) {
				id, u, err := scanUser(r)
				if err == nil {
					err = errors.New("the name is rude")
				}
				return id, u, err
			}, 1, "the name is rude"},
		} {
			t.Run(tc.what, func(t *testing.T) {
				tbl := newTable(tc.scan)
				_, err := tbl.Fetch(t.Context(), tc.key)
				mustErr(t, "Fetch", err, sqlsource.ErrScan)
				mustContain(t, "Fetch", err, name, "2 columns", tc.says)
				if errors.Is(err, tier.ErrNotFound) {
					t.Fatalf("Fetch = %v, which says not found", err)
				}
				many, err := tbl.FetchMany(t.Context(), []int64{1, 2})
				mustErr(t, "FetchMany", err, sqlsource.ErrScan)
				all, err2 := tbl.LoadAll(t.Context())
				mustErr(t, "LoadAll", err2, sqlsource.ErrScan)
				if many != nil || all != nil {
					t.Fatalf("a map came with the error: %v, %v", many, all)
				}
				if s := db.Stats(); s.InUse != 0 {
					t.Fatalf("%d connections still in use: rows left open", s.InUse)
				}
			})
		}
	})
}

// panicky is a destination whose Scan method panics.
type panicky struct{}

func (*panicky) Scan(any) error { panic("panicky cannot read this") }

// A panic in Scan, or in a destination's Scan method, is an error wrapping
// ErrScan and tier.ErrPanic; the rows are closed and the connection goes
// back to the pool, which serves the next call.
func TestScanPanics(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		name := b.table(t, db, "id BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL")
		b.insert(t, db, name, "id, name", []any{1, "Ada"}, []any{2, "Grace"})
		for _, tc := range []struct {
			what string
			scan func(sqlsource.Row) (int64, user, error)
			says string
		}{
			{"Scan", func(r sqlsource.Row) (int64, user, error) {
				id, u, err := scanUser(r)
				if id == 2 {
					var m map[string]int
					m["Grace"]++ // a nil map
				}
				return id, u, err
			}, "assignment to entry in nil map"},
			{"a destination's Scan method", func(r sqlsource.Row) (int64, user, error) {
				var id int64
				var p panicky
				return id, user{}, r.Scan(&id, &p)
			}, "panicky cannot read this"},
		} {
			// The panic is logged: a Logger whose handler panics too loses
			// the record, and the calls return the same errors.
			for _, logger := range []struct {
				name string
				l    *slog.Logger
			}{{"", nil}, {" with a Logger that panics", slog.New(panicking{})}} {
				t.Run(tc.what+logger.name, func(t *testing.T) {
					tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
						DB: db, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: tc.scan,
						Logger: logger.l,
					})
					if err != nil {
						t.Fatal(err)
					}
					_, err = tbl.Fetch(t.Context(), 2)
					mustErr(t, "Fetch", err, sqlsource.ErrScan, tier.ErrPanic)
					mustContain(t, "Fetch", err, name, tc.says)
					_, err = tbl.FetchMany(t.Context(), []int64{1, 2})
					mustErr(t, "FetchMany", err, sqlsource.ErrScan, tier.ErrPanic)
					_, err = tbl.LoadAll(t.Context())
					mustErr(t, "LoadAll", err, sqlsource.ErrScan, tier.ErrPanic)
					if s := db.Stats(); s.InUse != 0 {
						t.Fatalf("%d connections still in use: rows left open", s.InUse)
					}
				})
			}
		}

		// A panic that database/sql raises inside Rows.Scan from a
		// destination Row cannot wrap (a pointer to a pointer to a
		// Scanner) leaves the rows locked (Go issue 76465): the call
		// returns its error rather than hang in Close, and the connection
		// is lost to its pool. ctx has no Done channel, so that
		// database/sql starts no goroutine to close the rows when it ends,
		// which would block forever. PostgreSQL only: go-sql-driver/mysql
		// keeps a goroutine for each connection, which would be lost too
		// and fail the leak check.
		unwrappable := func(t *testing.T) {
			lossy := b.pool(t)
			tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
				DB: lossy, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"},
				Scan: func(r sqlsource.Row) (int64, user, error) {
					var id int64
					var p *panicky
					return id, user{}, r.Scan(&id, &p)
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = tbl.Fetch(context.Background(), 1)
			mustErr(t, "Fetch", err, sqlsource.ErrScan, tier.ErrPanic)
			mustContain(t, "Fetch", err, "panicky cannot read this", "left open")
			if s := lossy.Stats(); s.InUse != 1 {
				t.Fatalf("%d connections in use; want the 1 lost", s.InUse)
			}
		}
		if b.dialect == sqlsource.Postgres {
			t.Run("unwrappable destination", unwrappable)
		}

		good, err := sqlsource.New(sqlsource.Config[int64, user]{
			DB: db, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: scanUser,
		})
		if err != nil {
			t.Fatal(err)
		}
		if u, err := good.Fetch(t.Context(), 2); err != nil || u != grace {
			t.Fatalf("Fetch after the panics = %v, %v", u, err)
		}
	})
}

// A row whose key is not the key asked for is an error: on MariaDB, a
// case-insensitive collation finds "Ada" for "ada"; on PostgreSQL, a
// char(5) key finds "ab   " for "ab"; on both, a Scan that returns the
// wrong key is caught.
func TestKeyMismatch(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		keyType, stored, asked, got := "VARCHAR(255)", "Ada", "ada", `"Ada"` // MariaDB's utf8mb4_general_ci
		if b.dialect == sqlsource.Postgres {
			keyType, stored, asked, got = "CHAR(5)", "ab", "ab", `"ab   "`
		}
		name := b.table(t, db, "k "+keyType+" PRIMARY KEY, v BIGINT NOT NULL")
		b.insert(t, db, name, "k, v", []any{stored, 1})
		tbl, err := sqlsource.New(sqlsource.Config[string, int64]{
			DB: db, Dialect: b.dialect, Table: name, Key: "k", Columns: []string{"k", "v"},
			Scan: func(r sqlsource.Row) (k string, v int64, err error) {
				err = r.Scan(&k, &v)
				return k, v, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tbl.Fetch(t.Context(), asked)
		mustErr(t, "Fetch", err, sqlsource.ErrKeyMismatch)
		mustContain(t, "Fetch", err, fmt.Sprintf("%q", asked), got)
		_, err = tbl.FetchMany(t.Context(), []string{asked})
		mustErr(t, "FetchMany", err, sqlsource.ErrKeyMismatch)
		mustContain(t, "FetchMany", err, got)

		users, _, _ := b.users(t, db, sqlsource.Config[int64, user]{
			Scan: func(r sqlsource.Row) (int64, user, error) {
				id, u, err := scanUser(r)
				return id + 1, u, err // a Scan with a bug
			},
		}, ada)
		_, err = users.Fetch(t.Context(), 1)
		mustErr(t, "Fetch with a wrong Scan", err, sqlsource.ErrKeyMismatch)
		_, err = users.FetchMany(t.Context(), []int64{1})
		mustErr(t, "FetchMany with a wrong Scan", err, sqlsource.ErrKeyMismatch)
	})
}

// Keys of a named type, and string keys, go to the database as their
// underlying values, one at a time and as an array or a list.
func TestKeyTypes(t *testing.T) {
	type userID int64
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		name := b.table(t, db, "id BIGINT PRIMARY KEY, login VARCHAR(255) NOT NULL UNIQUE")
		b.insert(t, db, name, "id, login", []any{1, "ada"}, []any{2, "grace"})

		byID, err := sqlsource.New(sqlsource.Config[userID, string]{
			DB: db, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "login"},
			Scan: func(r sqlsource.Row) (id userID, login string, err error) {
				err = r.Scan(&id, &login)
				return id, login, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := byID.Fetch(t.Context(), 2); err != nil || v != "grace" {
			t.Fatalf("Fetch(userID(2)) = %q, %v", v, err)
		}
		many, err := byID.FetchMany(t.Context(), []userID{1, 2, 3})
		mustErr(t, "FetchMany of a key with no row", err, tier.ErrNotFound)
		if !maps.Equal(many, map[userID]string{1: "ada", 2: "grace"}) {
			t.Fatalf("FetchMany of userIDs = %v, %v", many, err)
		}

		byLogin, err := sqlsource.New(sqlsource.Config[string, int64]{
			DB: db, Dialect: b.dialect, Table: name, Key: "login", Columns: []string{"login", "id"},
			Scan: func(r sqlsource.Row) (login string, id int64, err error) {
				err = r.Scan(&login, &id)
				return login, id, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := byLogin.Fetch(t.Context(), "ada"); err != nil || v != 1 {
			t.Fatalf("Fetch(%q) = %d, %v", "ada", v, err)
		}
		logins, err := byLogin.FetchMany(t.Context(), []string{"grace", "nobody"})
		mustErr(t, "FetchMany of a login with no row", err, tier.ErrNotFound)
		if !maps.Equal(logins, map[string]int64{"grace": 2}) {
			t.Fatalf("FetchMany of logins = %v, %v", logins, err)
		}
	})
}

// Every call ends with ctx: at once if ctx is already done, and in the
// middle of a statement when its deadline passes.
func TestContext(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		tbl, c, name := b.users(t, db, sqlsource.Config[int64, user]{}, ada)
		done, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := tbl.Fetch(done, 1)
		mustErr(t, "Fetch", err, context.Canceled)
		_, err = tbl.FetchMany(done, []int64{1})
		mustErr(t, "FetchMany", err, context.Canceled)
		_, err = tbl.LoadAll(done)
		mustErr(t, "LoadAll", err, context.Canceled)

		// A condition that holds the statement for a minute; the deadline
		// ends it, and the server ends it too.
		sleep := map[sqlsource.Dialect]string{
			sqlsource.Postgres: "pg_sleep(60) IS NOT NULL",
			sqlsource.MySQL:    "SLEEP(60) = 0",
		}[b.dialect]
		slow, err := sqlsource.New(sqlsource.Config[int64, user]{
			DB: c, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"},
			Scan: scanUser, Where: sleep,
		})
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err = slow.Fetch(short, 1)
		mustErr(t, "Fetch past its deadline", err, context.DeadlineExceeded)
		if b.dialect == sqlsource.MySQL {
			// go-sql-driver/mysql closes the connection on a deadline but
			// does not stop the statement, which would hold the table (and
			// DROP TABLE at cleanup) for the minute.
			killStatements(t, db, name)
		}
	})
}

// killStatements stops every MariaDB statement that mentions table.
func killStatements(t *testing.T, db *sql.DB, table string) {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE ? AND ID <> CONNECTION_ID()", "%"+table+"%")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		// The statement may have ended by itself in the meantime.
		_, _ = db.ExecContext(t.Context(), fmt.Sprintf("KILL QUERY %d", id))
	}
}

// A connection that the server drops: a *sql.DB notices when it takes the
// connection from its pool and answers from a new one (pgx pings a
// connection on its first reuse, go-sql-driver/mysql checks its socket on
// every reuse), so the next call succeeds. A *sql.Conn cannot be replaced:
// the next call, and the one after, are errors, never "not found".
func TestDroppedConnection(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		admin := b.open(t)
		name := b.table(t, admin, "id BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL")
		b.insert(t, admin, name, "id, name", []any{1, "Ada"})
		newTable := func(q sqlsource.Querier) *sqlsource.Table[int64, user] {
			tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
				DB: q, Dialect: b.dialect, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: scanUser,
			})
			if err != nil {
				t.Fatal(err)
			}
			return tbl
		}
		connID := func(q interface {
			QueryRowContext(context.Context, string, ...any) *sql.Row
		}) int64 {
			var id int64
			if err := q.QueryRowContext(t.Context(), b.connID).Scan(&id); err != nil {
				t.Fatalf("%s: %v", b.connID, err)
			}
			return id
		}

		t.Run("pool", func(t *testing.T) {
			// A pool whose one connection the next line opens: a connection
			// that has never been reused is pinged by pgx on its first
			// reuse, and so is one idle for a second; a connection reused
			// a moment ago would not be, and the Fetch would fail.
			db := b.pool(t)
			db.SetMaxOpenConns(1)
			tbl := newTable(db)
			before := connID(db)
			b.kill(t, admin, before)
			u, err := tbl.Fetch(t.Context(), 1)
			if err != nil || u != ada {
				t.Fatalf("Fetch after the server dropped the pool's connection = %v, %v; want %v from a new connection", u, err, ada)
			}
			if after := connID(db); after == before {
				t.Fatalf("the pool still uses connection %d", before)
			}
		})

		t.Run("conn", func(t *testing.T) {
			db := b.open(t)
			conn, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tbl := newTable(conn)
			b.kill(t, admin, connID(conn))
			for i := range 2 {
				_, err := tbl.Fetch(t.Context(), 1)
				if err == nil || errors.Is(err, tier.ErrNotFound) {
					t.Fatalf("Fetch %d on a dropped connection = %v; want an error other than not found", i+1, err)
				}
				mustContain(t, "Fetch on a dropped connection", err, "sqlsource: fetch", name)
				t.Logf("Fetch %d on a dropped connection: %v", i+1, err)
			}
			if u, err := newTable(db).Fetch(t.Context(), 1); err != nil || u != ada {
				t.Fatalf("Fetch through the pool = %v, %v", u, err)
			}
		})
	})
}

// panicking is a slog.Handler that takes every level and panics on every
// record.
type panicking struct{}

func (panicking) Enabled(context.Context, slog.Level) bool  { return true }
func (panicking) Handle(context.Context, slog.Record) error { panic("handler bug") }
func (p panicking) WithAttrs([]slog.Attr) slog.Handler      { return p }
func (p panicking) WithGroup(string) slog.Handler           { return p }
