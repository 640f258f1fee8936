package pgnotify_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/pgnotify"
)

// TriggerSQL quotes every name as an identifier and every string as a
// literal, whatever they hold, and picks a dollar-quote tag they do not.
func TestTriggerSQLQuoting(t *testing.T) {
	sql, err := pgnotify.TriggerSQL(pgnotify.TriggerConfig{
		Schema:    `My "Schema"`,
		Table:     `Order Lines`,
		Namespace: `it's \ $tiercache$`,
		KeyColumn: `ID`,
		Groups:    []pgnotify.GroupColumn{{Prefix: `o'`, Column: `Order"Id`}},
		Channel:   `Chan`,
	})
	if err != nil {
		t.Fatalf("TriggerSQL: %v", err)
	}
	for _, want := range []string{
		`CREATE OR REPLACE FUNCTION "My ""Schema"""."Order Lines_tiercache_notify"() RETURNS trigger`,
		`LANGUAGE plpgsql AS $tiercache1$`,
		`json_build_object('ns', E'it''s \\ $tiercache$', 'keys', tc_keys, 'groups', tc_groups)`,
		`tc_keys := tc_keys || OLD."ID"::text;`,
		`tc_keys := tc_keys || NEW."ID"::text;`,
		`tc_groups := tc_groups || ('o''' || OLD."Order""Id"::text);`,
		`tc_groups := tc_groups || ('o''' || NEW."Order""Id"::text);`,
		`PERFORM pg_notify('Chan', tc_payload);`,
		`AFTER INSERT OR UPDATE OR DELETE ON "My ""Schema"""."Order Lines"`,
		`CREATE TRIGGER "tiercache_notify_truncate"`,
		`AFTER TRUNCATE ON "My ""Schema"""."Order Lines"`,
		`FOR EACH STATEMENT EXECUTE FUNCTION "My ""Schema"""."Order Lines_tiercache_notify"();`,
	} {
		if !strings.Contains(sql, want) {
			t.Errorf("TriggerSQL lacks %s", want)
		}
	}
	if strings.Count(sql, "$tiercache1$") != 2 {
		t.Errorf("the tag $tiercache1$ appears %d times; want 2", strings.Count(sql, "$tiercache1$"))
	}
	if strings.Contains(sql, "{{") || strings.Contains(sql, "double braces") {
		t.Errorf("TriggerSQL left template text:\n%s", sql)
	}

	drop, err := pgnotify.DropTriggerSQL(pgnotify.TriggerConfig{Table: "t", Namespace: "n", KeyColumn: "id", Function: "f"})
	if err != nil {
		t.Fatalf("DropTriggerSQL: %v", err)
	}
	want := "DROP TRIGGER IF EXISTS \"tiercache_notify\" ON \"t\";\nDROP TRIGGER IF EXISTS \"tiercache_notify_truncate\" ON \"t\";\nDROP FUNCTION IF EXISTS \"f\"();\n"
	if drop != want {
		t.Errorf("DropTriggerSQL = %q; want %q", drop, want)
	}
}

// A TriggerConfig that cannot make a working trigger is an error wrapping
// ErrConfig that names the field.
func TestTriggerSQLErrors(t *testing.T) {
	ok := pgnotify.TriggerConfig{Table: "products", Namespace: "products", KeyColumn: "id"}
	for _, tc := range []struct {
		name  string
		edit  func(*pgnotify.TriggerConfig)
		field string
	}{
		{"no table", func(c *pgnotify.TriggerConfig) { c.Table = "" }, "Table"},
		{"no namespace", func(c *pgnotify.TriggerConfig) { c.Namespace = "" }, "Namespace"},
		{"long namespace", func(c *pgnotify.TriggerConfig) { c.Namespace = strings.Repeat("n", 1021) }, "Namespace"},
		{"NUL namespace", func(c *pgnotify.TriggerConfig) { c.Namespace = "a\x00" }, "Namespace"},
		{"nothing to send", func(c *pgnotify.TriggerConfig) { c.KeyColumn = "" }, "KeyColumn"},
		{"NUL key", func(c *pgnotify.TriggerConfig) { c.KeyColumn = "i\x00d" }, "KeyColumn"},
		{"long table", func(c *pgnotify.TriggerConfig) { c.Table = strings.Repeat("t", 64) }, "Table"},
		{"long default function", func(c *pgnotify.TriggerConfig) { c.Table = strings.Repeat("t", 50) }, "Function"},
		{"invalid UTF-8 schema", func(c *pgnotify.TriggerConfig) { c.Schema = "\xff" }, "Schema"},
		{"long channel", func(c *pgnotify.TriggerConfig) { c.Channel = strings.Repeat("c", 64) }, "Channel"},
		{"long trigger", func(c *pgnotify.TriggerConfig) { c.Trigger = strings.Repeat("g", 60) }, "Trigger"},
		{"no group column", func(c *pgnotify.TriggerConfig) { c.Groups = []pgnotify.GroupColumn{{Prefix: "c:"}} }, "Groups[0].Column"},
		{"NUL prefix", func(c *pgnotify.TriggerConfig) {
			c.Groups = []pgnotify.GroupColumn{{Prefix: "\x00ns", Column: "c"}}
		}, "Groups[0].Prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			sql, err := pgnotify.TriggerSQL(cfg)
			if !errors.Is(err, pgnotify.ErrConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("TriggerSQL = %q, %v; want an error wrapping ErrConfig naming %s", sql, err, tc.field)
			}
		})
	}
	if _, err := pgnotify.TriggerSQL(ok); err != nil {
		t.Fatalf("TriggerSQL of a valid config: %v", err)
	}
}
