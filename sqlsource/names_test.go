package sqlsource_test

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

// Names that need quoting (spaces, quotes of either kind, a reserved word,
// mixed case, letters beyond ASCII) name the table and columns they say,
// in a schema of such a name on PostgreSQL and with an explicit database
// on MariaDB.
func TestQuotedNames(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		suffix := randomHex()
		table := `Odd "Table" ` + "`name` " + suffix
		key, c1, c2 := "Key Col", "select", `a"b`+"`c Ü"
		var schema string
		switch b.dialect {
		case sqlsource.Postgres:
			schema = "Odd Schema " + suffix
			b.exec(t, db, `CREATE SCHEMA "`+schema+`"`)
			t.Cleanup(func() { b.exec(t, db, `DROP SCHEMA "`+schema+`" CASCADE`) })
			b.exec(t, db, `CREATE TABLE "Odd Schema `+suffix+`"."Odd ""Table"" `+"`name` "+suffix+`" ("Key Col" BIGINT PRIMARY KEY, "select" VARCHAR(50) NOT NULL, "a""b`+"`c Ü"+`" VARCHAR(50) NOT NULL)`)
			b.exec(t, db, `INSERT INTO "Odd Schema `+suffix+`"."Odd ""Table"" `+"`name` "+suffix+`" VALUES (1, 'one', 'uno'), (2, 'two', 'dos')`)
		case sqlsource.MySQL:
			schema = "test"
			quoted := "`test`.`Odd \"Table\" ``name`` " + suffix + "`"
			b.exec(t, db, "CREATE TABLE "+quoted+" (`Key Col` BIGINT PRIMARY KEY, `select` VARCHAR(50) NOT NULL, `a\"b``c Ü` VARCHAR(50) NOT NULL)")
			t.Cleanup(func() { b.exec(t, db, "DROP TABLE "+quoted) })
			b.exec(t, db, "INSERT INTO "+quoted+" VALUES (1, 'one', 'uno'), (2, 'two', 'dos')")
		}
		tbl, err := sqlsource.New(sqlsource.Config[int64, [2]string]{
			DB: db, Dialect: b.dialect, Schema: schema, Table: table, Key: key, Columns: []string{key, c1, c2},
			Where: map[sqlsource.Dialect]string{sqlsource.Postgres: `"select" <> 'three'`, sqlsource.MySQL: "`select` <> 'three'"}[b.dialect],
			Scan: func(r sqlsource.Row) (k int64, v [2]string, err error) {
				err = r.Scan(&k, &v[0], &v[1])
				return k, v, err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := tbl.Fetch(t.Context(), 2); err != nil || v != [2]string{"two", "dos"} {
			t.Fatalf("Fetch(2) = %v, %v", v, err)
		}
		want := map[int64][2]string{1: {"one", "uno"}, 2: {"two", "dos"}}
		got, err := tbl.FetchMany(t.Context(), []int64{1, 2, 3})
		mustErr(t, "FetchMany of a key with no row", err, tier.ErrNotFound)
		if !maps.Equal(got, want) {
			t.Fatalf("FetchMany = %v, %v", got, err)
		}
		if got, err := tbl.LoadAll(t.Context()); err != nil || !maps.Equal(got, want) {
			t.Fatalf("LoadAll = %v, %v", got, err)
		}
	})
}

// New refuses, with ErrConfig and a message naming the field, every name
// the dialect cannot quote and every missing or out-of-range field; at the
// limits it accepts.
func TestNewRejects(t *testing.T) {
	scan := func(sqlsource.Row) (int64, string, error) { return 0, "", nil }
	var db sql.DB // never queried
	base := func(d sqlsource.Dialect) sqlsource.Config[int64, string] {
		return sqlsource.Config[int64, string]{
			DB: &db, Dialect: d, Table: "t", Key: "id", Columns: []string{"id", "v"}, Scan: scan,
		}
	}
	both := []sqlsource.Dialect{sqlsource.Postgres, sqlsource.MySQL}
	for _, tc := range []struct {
		what     string
		dialects []sqlsource.Dialect
		change   func(*sqlsource.Config[int64, string])
		says     string // "" if New accepts it
	}{
		{"nil DB", both, func(c *sqlsource.Config[int64, string]) { c.DB = nil }, "nil DB"},
		{"no Dialect", both, func(c *sqlsource.Config[int64, string]) { c.Dialect = 0 }, "Dialect"},
		{"nil Scan", both, func(c *sqlsource.Config[int64, string]) { c.Scan = nil }, "nil Scan"},
		{"no Columns", both, func(c *sqlsource.Config[int64, string]) { c.Columns = nil }, "no Columns"},
		{"negative BatchSize", both, func(c *sqlsource.Config[int64, string]) { c.BatchSize = -1 }, "BatchSize"},
		{"BatchSize over MySQL's 65,535 parameters", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.BatchSize = 65536 }, "BatchSize"},
		{"BatchSize of 65,535", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.BatchSize = 65535 }, ""},
		{"empty Table", both, func(c *sqlsource.Config[int64, string]) { c.Table = "" }, "Table"},
		{"empty Key", both, func(c *sqlsource.Config[int64, string]) { c.Key = "" }, "Key"},
		{"empty column", both, func(c *sqlsource.Config[int64, string]) { c.Columns = []string{"id", ""} }, "Columns[1]"},
		{"NUL in a name", both, func(c *sqlsource.Config[int64, string]) { c.Table = "a\x00b" }, "NUL"},
		{"invalid UTF-8", both, func(c *sqlsource.Config[int64, string]) { c.Key = "a\xffb" }, "UTF-8"},
		{"NUL in a schema", both, func(c *sqlsource.Config[int64, string]) { c.Schema = "\x00" }, "Schema"},
		{"63 bytes", []sqlsource.Dialect{sqlsource.Postgres}, func(c *sqlsource.Config[int64, string]) { c.Table = strings.Repeat("é", 31) + "x" }, ""},
		{"64 bytes, which PostgreSQL truncates", []sqlsource.Dialect{sqlsource.Postgres}, func(c *sqlsource.Config[int64, string]) { c.Table = strings.Repeat("é", 32) }, "63 bytes"},
		{"64 characters", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.Table = strings.Repeat("é", 64) }, ""},
		{"65 characters", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.Table = strings.Repeat("é", 65) }, "64 characters"},
		{"a trailing space", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.Columns = []string{"v "} }, "space"},
		{"a trailing space", []sqlsource.Dialect{sqlsource.Postgres}, func(c *sqlsource.Config[int64, string]) { c.Columns = []string{"v "} }, ""},
		{"a character beyond the BMP", []sqlsource.Dialect{sqlsource.MySQL}, func(c *sqlsource.Config[int64, string]) { c.Table = "cache🙂" }, "Basic Multilingual Plane"},
		{"a character beyond the BMP", []sqlsource.Dialect{sqlsource.Postgres}, func(c *sqlsource.Config[int64, string]) { c.Table = "cache🙂" }, ""},
	} {
		for _, d := range tc.dialects {
			t.Run(d.String()+"/"+tc.what, func(t *testing.T) {
				cfg := base(d)
				tc.change(&cfg)
				tbl, err := sqlsource.New(cfg)
				switch {
				case tc.says == "" && err != nil:
					t.Fatalf("New = %v; want it accepted", err)
				case tc.says == "":
				case !errors.Is(err, sqlsource.ErrConfig) || tbl != nil:
					t.Fatalf("New = %v, %v; want an error wrapping ErrConfig", tbl, err)
				case !strings.Contains(err.Error(), tc.says):
					t.Fatalf("New = %q; want it to mention %q", err, tc.says)
				}
			})
		}
	}
}

// recorder is a Querier that records the statements it is asked to run,
// and runs none.
type recorder struct {
	queries []string
	args    [][]any
}

var errRecorded = errors.New("recorded, not run")

func (r *recorder) QueryContext(_ context.Context, query string, args ...any) (*sql.Rows, error) {
	r.queries = append(r.queries, query)
	r.args = append(r.args, args)
	return nil, errRecorded
}

// The statements each dialect runs, word for word.
func TestStatements(t *testing.T) {
	for _, tc := range []struct {
		dialect sqlsource.Dialect
		fetch   string
		many    []string
		manyArg [][]any
		load    string
	}{{
		dialect: sqlsource.Postgres,
		fetch:   `SELECT "id", "name" FROM "app"."users" WHERE "id" = $1 AND (deleted_at IS NULL) LIMIT 2`,
		many: []string{
			`SELECT "id", "name" FROM "app"."users" WHERE "id" = ANY($1) AND (deleted_at IS NULL)`,
			`SELECT "id", "name" FROM "app"."users" WHERE "id" = ANY($1) AND (deleted_at IS NULL)`,
		},
		manyArg: [][]any{{[]int64{3, 1}}, {[]int64{2}}},
		load:    `SELECT "id", "name" FROM "app"."users" WHERE (deleted_at IS NULL) LIMIT 11`,
	}, {
		dialect: sqlsource.MySQL,
		fetch:   "SELECT `id`, `name` FROM `app`.`users` WHERE `id` = ? AND (deleted_at IS NULL) LIMIT 2",
		many: []string{
			"SELECT `id`, `name` FROM `app`.`users` WHERE `id` IN (?, ?) AND (deleted_at IS NULL)",
			"SELECT `id`, `name` FROM `app`.`users` WHERE `id` IN (?) AND (deleted_at IS NULL)",
		},
		manyArg: [][]any{{int64(3), int64(1)}, {int64(2)}},
		load:    "SELECT `id`, `name` FROM `app`.`users` WHERE (deleted_at IS NULL) LIMIT 11",
	}} {
		t.Run(tc.dialect.String(), func(t *testing.T) {
			rec := &recorder{}
			tbl, err := sqlsource.New(sqlsource.Config[int64, user]{
				DB: rec, Dialect: tc.dialect, Schema: "app", Table: "users", Key: "id", Columns: []string{"id", "name"},
				Where: "deleted_at IS NULL", Scan: scanUser, BatchSize: 2, MaxRows: 10,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			if _, err := tbl.Fetch(ctx, 1); !errors.Is(err, errRecorded) {
				t.Fatalf("Fetch = %v", err)
			}
			if rec.queries[0] != tc.fetch {
				t.Errorf("Fetch ran\n%s\nwant\n%s", rec.queries[0], tc.fetch)
			}
			// The first batch fails, so a second query needs a second call.
			rec.queries = nil
			rec.args = nil
			_, _ = tbl.FetchMany(ctx, []int64{3, 1, 3})
			_, _ = tbl.FetchMany(ctx, []int64{2})
			if !reflect.DeepEqual(rec.queries, tc.many) || !reflect.DeepEqual(rec.args, tc.manyArg) {
				t.Errorf("FetchMany ran\n%q with %v\nwant\n%q with %v", rec.queries, rec.args, tc.many, tc.manyArg)
			}
			rec.queries = nil
			_, _ = tbl.LoadAll(ctx)
			if rec.queries[0] != tc.load {
				t.Errorf("LoadAll ran\n%s\nwant\n%s", rec.queries[0], tc.load)
			}
		})
	}
}
