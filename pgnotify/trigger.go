package pgnotify

import (
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/template"
	"unicode/utf8"
)

// triggerTemplate is trigger.sql: the trigger function and the two
// triggers that TriggerSQL renders for a table.
//
//go:embed trigger.sql
var triggerTemplate string

var triggerTmpl = template.Must(template.New("trigger.sql").Parse(triggerTemplate))

// DefaultChannel is the channel the trigger notifies and a Listener
// listens on, by default.
const DefaultChannel = "tiercache"

// Defaults of TriggerConfig's zero fields.
const (
	// DefaultTrigger names the row trigger; the TRUNCATE trigger's name
	// adds "_truncate".
	DefaultTrigger = "tiercache_notify"
	// functionSuffix ends the default trigger function's name.
	functionSuffix = "_tiercache_notify"
)

// pgMaxNameBytes is PostgreSQL's NAMEDATALEN - 1: a longer name is
// truncated without an error (so two long names could name one object);
// TriggerSQL refuses it instead.
const pgMaxNameBytes = 63

// TriggerConfig describes the trigger that makes a table's writes
// notifications: which table, which cache namespace its rows are, which
// column is the key and which columns name groups.
//
// Schema, Table, KeyColumn, Function, Trigger and each GroupColumn.Column
// are names, not SQL: TriggerSQL quotes each as an identifier, so a name
// is taken exactly as written (a table created unquoted as Products is
// named products), and refuses one that cannot be quoted (empty, NUL,
// invalid UTF-8, longer than 63 bytes).
type TriggerConfig struct {
	// Schema, if set, qualifies Table and Function. Optional; default: the
	// search_path of the session that runs the SQL.
	Schema string
	// Table is the table whose writes are sent. Required.
	Table string
	// Namespace is the tier.Config.Namespace of the cache whose entries
	// are the table's rows (or, with no KeyColumn, the namespace of the
	// entries in the groups). Required, and it must be listed in the
	// Listener's Config.Namespaces.
	Namespace string
	// KeyColumn is the column whose ::text is the key's string form in
	// the cache: tier.Config.Key's, by default a string itself or an
	// integer's decimal form, which is what PostgreSQL's ::text gives for
	// text, varchar and integer columns. Choose a column whose text does
	// not depend on session settings (not a timestamp or a float, whose
	// ::text follows DateStyle, TimeZone or extra_float_digits). Optional
	// if Groups is set: a table whose rows are no cache entries of their
	// own, such as a join table, can send groups only.
	KeyColumn string
	// Groups are the groups a row's entries belong to: each is a prefix
	// followed by a column's ::text, as tier.Config.Groups names them. An
	// UPDATE sends the groups of the old row and of the new one, so a row
	// moved between groups invalidates both. Optional.
	Groups []GroupColumn
	// Channel is the channel the trigger notifies, the Listener's
	// Config.Channel. Default DefaultChannel.
	Channel string
	// Function names the trigger function. Default Table followed by
	// "_tiercache_notify" (an error if that is longer than 63 bytes: set
	// Function then).
	Function string
	// Trigger names the row trigger; the TRUNCATE trigger is Trigger
	// followed by "_truncate". Default DefaultTrigger. Trigger names are
	// the table's own, so the default serves every table.
	Trigger string
}

// GroupColumn names the group of a row: Prefix followed by Column's ::text
// (category_id 7 with the prefix "category:" is the group "category:7").
// A NULL column, or an empty group name, names no group.
type GroupColumn struct {
	// Prefix starts the group's name. Optional.
	Prefix string
	// Column is the column whose ::text ends it. Required.
	Column string
}

// triggerArgs are trigger.sql's fields, quoted.
type triggerArgs struct {
	Function, Table, Key, Trigger, TruncateTrigger string
	Namespace, Channel                             string
	Groups                                         []groupArgs
	Tag                                            string
}

type groupArgs struct {
	Prefix, Column string
}

// TriggerSQL returns the SQL that creates, or replaces, the trigger
// function and the triggers of cfg's table (trigger.sql, filled in): run it
// once, as a migration, by a role that may create triggers on the table.
// The row trigger fires AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW,
// and sends the keys and groups of the NEW row (INSERT), the OLD row
// (DELETE), or both (UPDATE); the statement trigger fires AFTER TRUNCATE
// and sends the whole namespace. The payload is built by PostgreSQL's
// json_build_object, so that quoting is PostgreSQL's, in the format
// ParsePayload reads. A payload that would reach the 8000-byte limit sends
// the whole namespace instead, so that no write fails for its notification.
// An invalid cfg is an error wrapping ErrConfig.
func TriggerSQL(cfg TriggerConfig) (string, error) {
	a, err := cfg.args()
	if err != nil {
		return "", err
	}
	// The function's body is a dollar-quoted string: its tag must not
	// appear inside, where a namespace, prefix or name could put it.
	for i := 0; ; i++ {
		a.Tag = "$tiercache$"
		if i > 0 {
			a.Tag = "$tiercache" + strconv.Itoa(i) + "$"
		}
		var b strings.Builder
		if err := triggerTmpl.Execute(&b, a); err != nil {
			return "", fmt.Errorf("pgnotify: rendering trigger.sql: %w", err)
		}
		if s := b.String(); strings.Count(s, a.Tag) == 2 {
			return s, nil
		}
	}
}

// DropTriggerSQL returns the SQL that removes what TriggerSQL(cfg)
// created: both triggers and the function. Dropping the table drops the
// triggers but not the function.
func DropTriggerSQL(cfg TriggerConfig) (string, error) {
	a, err := cfg.args()
	if err != nil {
		return "", err
	}
	return "DROP TRIGGER IF EXISTS " + a.Trigger + " ON " + a.Table + ";\n" +
		"DROP TRIGGER IF EXISTS " + a.TruncateTrigger + " ON " + a.Table + ";\n" +
		"DROP FUNCTION IF EXISTS " + a.Function + "();\n", nil
}

// args checks cfg and returns its names quoted.
func (cfg TriggerConfig) args() (triggerArgs, error) {
	var a triggerArgs
	bad := func(what string, err error) (triggerArgs, error) {
		return triggerArgs{}, fmt.Errorf("%w: %s: %v", ErrConfig, what, err)
	}
	if cfg.KeyColumn == "" && len(cfg.Groups) == 0 {
		return bad("KeyColumn", errors.New("empty, and no Groups: the trigger would send nothing"))
	}
	if err := checkNamespace(cfg.Namespace); err != nil {
		return bad("Namespace", err)
	}
	var err error
	if a.Namespace, err = quoteLiteral(cfg.Namespace); err != nil {
		return bad("Namespace", err)
	}
	channel := cfg.Channel
	if channel == "" {
		channel = DefaultChannel
	}
	if err := checkChannel(channel); err != nil {
		return bad("Channel", err)
	}
	if a.Channel, err = quoteLiteral(channel); err != nil {
		return bad("Channel", err)
	}
	qualify := func(what, name string) (string, error) {
		q, err := quoteIdent(name)
		if err != nil {
			return "", fmt.Errorf("%w: %s %q: %v", ErrConfig, what, name, err)
		}
		if cfg.Schema == "" {
			return q, nil
		}
		s, err := quoteIdent(cfg.Schema)
		if err != nil {
			return "", fmt.Errorf("%w: Schema %q: %v", ErrConfig, cfg.Schema, err)
		}
		return s + "." + q, nil
	}
	if a.Table, err = qualify("Table", cfg.Table); err != nil {
		return triggerArgs{}, err
	}
	function := cfg.Function
	if function == "" {
		function = cfg.Table + functionSuffix
		if len(function) > pgMaxNameBytes {
			return bad("Function", fmt.Errorf("the default name %q is longer than %d bytes: set Function", function, pgMaxNameBytes))
		}
	}
	if a.Function, err = qualify("Function", function); err != nil {
		return triggerArgs{}, err
	}
	trigger := cfg.Trigger
	if trigger == "" {
		trigger = DefaultTrigger
	}
	if a.Trigger, err = quoteIdent(trigger); err != nil {
		return bad("Trigger", err)
	}
	if a.TruncateTrigger, err = quoteIdent(trigger + "_truncate"); err != nil {
		return bad("Trigger", err)
	}
	if cfg.KeyColumn != "" {
		if a.Key, err = quoteIdent(cfg.KeyColumn); err != nil {
			return bad("KeyColumn", err)
		}
	}
	for i, g := range cfg.Groups {
		var ga groupArgs
		if ga.Column, err = quoteIdent(g.Column); err != nil {
			return bad(fmt.Sprintf("Groups[%d].Column", i), err)
		}
		if len(g.Prefix) >= MaxGroupBytes {
			return bad(fmt.Sprintf("Groups[%d].Prefix", i), fmt.Errorf("%d bytes: a group name is at most %d", len(g.Prefix), MaxGroupBytes))
		}
		if g.Prefix != "" && g.Prefix[0] == 0 {
			return bad(fmt.Sprintf("Groups[%d].Prefix", i), errors.New("starts with NUL"))
		}
		if ga.Prefix, err = quoteLiteral(g.Prefix); err != nil {
			return bad(fmt.Sprintf("Groups[%d].Prefix", i), err)
		}
		a.Groups = append(a.Groups, ga)
	}
	return a, nil
}

// quoteIdent returns name as a PostgreSQL quoted identifier, or an error
// saying why it cannot be one. Quoting always, rather than only when
// needed, takes a name exactly as written.
func quoteIdent(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case !utf8.ValidString(name):
		return "", errors.New("not valid UTF-8")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("contains NUL, which no quoted name can hold")
	case len(name) > pgMaxNameBytes:
		return "", fmt.Errorf("longer than %d bytes: PostgreSQL would truncate it", pgMaxNameBytes)
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`, nil
}

// quoteLiteral returns s as a PostgreSQL string literal that means s
// whatever standard_conforming_strings says: with a backslash in s, an
// escape string (E'…') with the backslash doubled, as quote_literal does.
func quoteLiteral(s string) (string, error) {
	switch {
	case !utf8.ValidString(s):
		return "", errors.New("not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return "", errors.New("contains NUL, which no PostgreSQL text can hold")
	}
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q, nil
}

// checkChannel says why name cannot be a channel, or nil. A channel is an
// identifier: LISTEN quotes it, pg_notify takes it as it is, and both
// must name the same one.
func checkChannel(name string) error {
	_, err := quoteIdent(name)
	return err
}
