package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/tiercache/tiercache/pgnotify"
	"github.com/tiercache/tiercache/sqlsource"
)

// defaultDSN is the machine's PostgreSQL, as the library's own tests use it.
const defaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// pgHint says how to get the PostgreSQL the shop needs.
const pgHint = "the shop needs PostgreSQL (by default on 127.0.0.1:5432, trust authentication, database test, user postgres; -db names another);\n" +
	"start the machine's with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

// Product is a row of the products table, and what the API answers.
type Product struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	CategoryID int64  `json:"category_id"`
}

// Currency is a row of the currencies table: how many units of it one US
// dollar buys.
type Currency struct {
	Code string  `json:"code"`
	Rate float64 `json:"rate"`
}

// currencies are the rows of the currencies table.
var currencies = []Currency{{"USD", 1}, {"EUR", 0.92}, {"GBP", 0.79}, {"JPY", 151.3}, {"CHF", 0.88}}

// The cache namespaces, and the group of a category's entries: the names
// the trigger sends and the caches use must be the same.
const (
	productsNS = "products"
	pagesNS    = "category-pages"
)

func categoryGroup(id int64) string { return "category:" + strconv.FormatInt(id, 10) }

// productColumns are read by every query of products, in Product's order.
var productColumns = []string{"id", "name", "price_cents", "category_id"}

func scanProduct(row sqlsource.Row) (int64, Product, error) {
	var p Product
	err := row.Scan(&p.ID, &p.Name, &p.PriceCents, &p.CategoryID)
	return p.ID, p, err
}

// productsTable is the products table as a cache's source: Fetch reads
// WHERE id = $1, FetchMany WHERE id = ANY($1).
func productsTable(db *sql.DB) (*sqlsource.Table[int64, Product], error) {
	return sqlsource.New(sqlsource.Config[int64, Product]{
		DB: db, Dialect: sqlsource.Postgres,
		Table: "products", Key: "id", Columns: productColumns,
		Scan: scanProduct,
	})
}

// currenciesTable is the currencies table, read whole as a resource.
func currenciesTable(db *sql.DB) (*sqlsource.Table[string, Currency], error) {
	return sqlsource.New(sqlsource.Config[string, Currency]{
		DB: db, Dialect: sqlsource.Postgres,
		Table: "currencies", Key: "code", Columns: []string{"code", "rate"},
		Scan: func(row sqlsource.Row) (string, Currency, error) {
			var c Currency
			err := row.Scan(&c.Code, &c.Rate)
			return c.Code, c, err
		},
	})
}

// categoryPage reads a category's products, in id order: the source of
// the category pages (sqlsource reads objects by a unique key; a page is a
// query of its own).
func categoryPage(ctx context.Context, db *sql.DB, category int64) ([]Product, error) {
	rows, err := db.QueryContext(ctx, "SELECT id, name, price_cents, category_id FROM products WHERE category_id = $1 ORDER BY id", category)
	if err != nil {
		return nil, fmt.Errorf("category %d: %w", category, err)
	}
	defer rows.Close()
	page := []Product{} // an empty category is an empty page, not "not found"
	for rows.Next() {
		var p Product
		if err := rows.Scan(&p.ID, &p.Name, &p.PriceCents, &p.CategoryID); err != nil {
			return nil, fmt.Errorf("category %d: %w", category, err)
		}
		page = append(page, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("category %d: %w", category, err)
	}
	return page, nil
}

// poolSize bounds a process's connections to PostgreSQL, and keeps them
// open: database/sql keeps only 2 idle by default, so that a burst of
// cache misses would open and close a connection (a PostgreSQL process)
// per query.
const poolSize = 8

// openDB returns a pool on dsn whose connections use schema (if set) as
// their search_path, so that every query names its tables plainly.
func openDB(dsn, schema string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("-db %q: %w", dsn, err)
	}
	if schema != "" {
		cfg.RuntimeParams["search_path"] = schema
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(poolSize)
	db.SetMaxIdleConns(poolSize)
	return db, nil
}

// newSchemaName returns a schema name no other run uses. It doubles as the
// NOTIFY channel, so that runs sharing a database never hear each other.
func newSchemaName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "shop_" + hex.EncodeToString(b[:])
}

// productTrigger is the pgnotify trigger of the products table: every
// write sends the row's id and its category's group, old and new.
func productTrigger(channel string) pgnotify.TriggerConfig {
	return pgnotify.TriggerConfig{
		Table:     "products",
		Namespace: productsNS,
		KeyColumn: "id",
		Groups:    []pgnotify.GroupColumn{{Prefix: "category:", Column: "category_id"}},
		Channel:   channel,
	}
}

// createSchema creates the schema that db's search_path names, its two
// tables with their rows, and, if trigger, the trigger on products.
func createSchema(ctx context.Context, db *sql.DB, schema string, products, categories int, trigger bool) error {
	var values []string
	for _, c := range currencies {
		values = append(values, fmt.Sprintf("('%s', %v)", c.Code, c.Rate))
	}
	type step struct {
		sql  string
		args []any
	}
	steps := []step{
		{sql: "CREATE SCHEMA " + schema},
		{sql: "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, price_cents bigint NOT NULL, category_id bigint NOT NULL)"},
		{sql: "CREATE INDEX ON products (category_id)"},
		{sql: `INSERT INTO products (id, name, price_cents, category_id)
			SELECT i, 'product ' || i, 100 + (i * 7919) % 10000, (i - 1) % $2 + 1 FROM generate_series(1, $1::bigint) AS i`,
			args: []any{products, categories}},
		{sql: "CREATE TABLE currencies (code text PRIMARY KEY, rate numeric NOT NULL)"},
		{sql: "INSERT INTO currencies (code, rate) VALUES " + strings.Join(values, ", ")},
	}
	if trigger {
		// Run once, as a migration would: from now on every write to
		// products, by any client, notifies the channel named schema.
		sql, err := pgnotify.TriggerSQL(productTrigger(schema))
		if err != nil {
			return err
		}
		steps = append(steps, step{sql: sql})
	}
	for _, s := range steps {
		if _, err := db.ExecContext(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("creating schema %s: %w\n%s", schema, err, s.sql)
		}
	}
	return nil
}

// dropSchema drops the schema with everything in it: tables, trigger and
// trigger function.
func dropSchema(ctx context.Context, db *sql.DB, schema string) error {
	if _, err := db.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
		return fmt.Errorf("dropping schema %s: %w", schema, err)
	}
	return nil
}
