package pgnotify_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"strconv"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, for the caches' Fetch
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/pgnotify"
	"github.com/tiercache/tiercache/tier"
)

// The trigger of a products table: keys are ids, and each product is in
// the group of its category, which the category pages are cached in.
func ExampleTriggerSQL() {
	sql, err := pgnotify.TriggerSQL(pgnotify.TriggerConfig{
		Table:     "products",
		Namespace: "products",
		KeyColumn: "id",
		Groups:    []pgnotify.GroupColumn{{Prefix: "category:", Column: "category_id"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sql)
	// Output:
	// -- The trigger of github.com/tiercache/tiercache/pgnotify, as TriggerSQL
	// -- renders it for one table: every INSERT, UPDATE, DELETE and TRUNCATE of
	// -- the table sends, with pg_notify, the keys and groups it changed to the
	// -- Listeners of the channel, at the commit of its transaction (a write that
	// -- rolls back sends nothing).
	// --
	// --   INSERT    the NEW row's key and groups
	// --   UPDATE    the OLD row's and the NEW row's: a changed key, or a row moved
	// --             from one group to another, invalidates both
	// --   DELETE    the OLD row's
	// --   TRUNCATE  the whole namespace: {"ns": ..., "all": true}
	// --
	// -- A key is its column's ::text, which must equal the key's string form in
	// -- the cache (tier.Config.Key; an integer's decimal form by default). A
	// -- group is its prefix followed by its column's ::text. NULL and empty ones
	// -- are left out; duplicates are sent once. A payload that would reach
	// -- PostgreSQL's limit of 8000 bytes is replaced by the whole namespace, so
	// -- that no write fails for its notification. PostgreSQL 11 or later.
	//
	// CREATE OR REPLACE FUNCTION "products_tiercache_notify"() RETURNS trigger
	// LANGUAGE plpgsql AS $tiercache$
	// DECLARE
	// 	tc_keys    text[] := '{}';
	// 	tc_groups  text[] := '{}';
	// 	tc_payload text;
	// BEGIN
	// 	IF TG_OP = 'TRUNCATE' THEN
	// 		PERFORM pg_notify('tiercache', json_build_object('ns', 'products', 'all', true)::text);
	// 		RETURN NULL;
	// 	END IF;
	// 	IF TG_OP IN ('UPDATE', 'DELETE') THEN
	// 		tc_keys := tc_keys || OLD."id"::text;
	// 		tc_groups := tc_groups || ('category:' || OLD."category_id"::text);
	// 	END IF;
	// 	IF TG_OP IN ('INSERT', 'UPDATE') THEN
	// 		tc_keys := tc_keys || NEW."id"::text;
	// 		tc_groups := tc_groups || ('category:' || NEW."category_id"::text);
	// 	END IF;
	// 	tc_keys := ARRAY(SELECT DISTINCT u.k FROM unnest(tc_keys) AS u(k) WHERE u.k <> '');
	// 	tc_groups := ARRAY(SELECT DISTINCT u.g FROM unnest(tc_groups) AS u(g) WHERE u.g <> '');
	// 	IF cardinality(tc_keys) = 0 AND cardinality(tc_groups) = 0 THEN
	// 		RETURN NULL;
	// 	END IF;
	// 	tc_payload := json_build_object('ns', 'products', 'keys', tc_keys, 'groups', tc_groups)::text;
	// 	IF octet_length(tc_payload) >= 8000 THEN
	// 		tc_payload := json_build_object('ns', 'products', 'all', true)::text;
	// 	END IF;
	// 	PERFORM pg_notify('tiercache', tc_payload);
	// 	RETURN NULL;
	// END
	// $tiercache$;
	//
	// DROP TRIGGER IF EXISTS "tiercache_notify" ON "products";
	// CREATE TRIGGER "tiercache_notify"
	// 	AFTER INSERT OR UPDATE OR DELETE ON "products"
	// 	FOR EACH ROW EXECUTE FUNCTION "products_tiercache_notify"();
	//
	// DROP TRIGGER IF EXISTS "tiercache_notify_truncate" ON "products";
	// CREATE TRIGGER "tiercache_notify_truncate"
	// 	AFTER TRUNCATE ON "products"
	// 	FOR EACH STATEMENT EXECUTE FUNCTION "products_tiercache_notify"();
}

// A payload as the trigger sends it, and what it invalidates.
func ExampleParsePayload() {
	n, err := pgnotify.ParsePayload([]byte(`{"ns" : "products", "keys" : ["42"], "groups" : ["category:1","category:2"]}`))
	fmt.Println(n.Namespace, n.Keys, n.Groups, n.All, err)

	_, err = pgnotify.ParsePayload([]byte(`{"ns":"products","keys":[42]}`))
	fmt.Println(err)
	// Output:
	// products [42] [category:1 category:2] false <nil>
	// pgnotify: malformed payload: field "keys": json: cannot unmarshal number into Go struct field wire.keys of type string (keys and groups are JSON strings)
}

type Product struct {
	Name     string
	Category int64
}

// A Listener that keeps a node's caches of products and of category pages
// fresh whatever client writes the table. Install the trigger once (a
// migration running TriggerSQL's output), and start the Listener before
// serving. (No Output: it needs a database and a Redis of its own.)
func Example() {
	ctx := context.Background()
	const dsn = "postgres://app@db.internal/shop"
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rdb := redis.NewClient(&redis.Options{Addr: "redis.internal:6379", ContextTimeoutEnabled: true})
	defer rdb.Close()
	node, err := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	products, err := tier.New(node, tier.Config[int64, Product]{
		Namespace: "products", // the trigger's TriggerConfig.Namespace
		Fetch: func(ctx context.Context, id int64) (Product, error) {
			var p Product
			err := db.QueryRowContext(ctx, "SELECT name, category_id FROM products WHERE id = $1", id).Scan(&p.Name, &p.Category)
			if errors.Is(err, sql.ErrNoRows) {
				return p, tier.ErrNotFound
			}
			return p, err
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	_, err = tier.New(node, tier.Config[int64, []string]{
		Namespace: "category-pages",
		Fetch: func(ctx context.Context, cat int64) ([]string, error) {
			var names []string
			err := db.QueryRowContext(ctx, "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM products WHERE category_id = $1", cat).Scan(&names)
			return names, err
		},
		// The trigger's GroupColumn{Prefix: "category:", Column: "category_id"}.
		Groups: func(cat int64, _ []string) []string { return []string{"category:" + strconv.FormatInt(cat, 10)} },
	})
	if err != nil {
		log.Fatal(err)
	}

	l, err := pgnotify.New(pgnotify.Config{
		ConnString: dsn,
		Node:       node,
		// Every namespace the notifications can make stale: the trigger's,
		// and the one whose entries are in the groups it sends.
		Namespaces: []string{"products", "category-pages"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close() // before node.Close

	select {
	case <-l.Ready():
	case <-time.After(10 * time.Second):
		log.Fatalf("not listening yet: %+v", l.Stats())
	}
	// Serve. An UPDATE of a product, from any client, now evicts its entry
	// and the pages of its old and new category, on every node.
	p, err := products.Get(ctx, 42)
	fmt.Println(p, err)
}
