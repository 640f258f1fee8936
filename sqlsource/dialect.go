package sqlsource

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Dialect is the SQL a Table speaks: how it quotes names, writes query
// parameters and asks for many keys in one statement. The zero Dialect is
// invalid: New requires one of the constants.
type Dialect int

const (
	// Postgres is PostgreSQL's dialect: names in double quotes, parameters
	// $1, $2, …, and many keys as a single array parameter,
	// `WHERE key = ANY($1)`, so that a statement's text does not depend on
	// how many keys it asks for. The driver must bind a Go slice as a
	// PostgreSQL array, as github.com/jackc/pgx/v5/stdlib does.
	Postgres Dialect = iota + 1
	// MySQL is the dialect of MySQL and MariaDB: names in backquotes,
	// parameters ?, and many keys as `WHERE key IN (?, ?, …)`, at most
	// Config.BatchSize to a statement.
	MySQL
)

// String returns the dialect's name.
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "PostgreSQL"
	case MySQL:
		return "MySQL"
	}
	return "Dialect(" + strconv.Itoa(int(d)) + ")"
}

// Limits of the dialects.
const (
	// pgMaxNameBytes is PostgreSQL's NAMEDATALEN - 1: a longer name is
	// truncated without an error, so that two long names can name the same
	// table. New refuses it instead.
	pgMaxNameBytes = 63
	// mysqlMaxNameRunes is MySQL's and MariaDB's limit on a table's,
	// column's or database's name, in characters.
	mysqlMaxNameRunes = 64
	// mysqlMaxParams is the most parameters a MySQL prepared statement
	// takes (the count is a 16-bit field of the protocol).
	mysqlMaxParams = 65535
)

// Default batch sizes (Config.BatchSize).
const (
	// DefaultPostgresBatch is the most keys a Postgres FetchMany sends in one
	// array parameter by default.
	DefaultPostgresBatch = 10000
	// DefaultMySQLBatch is the most keys a MySQL FetchMany sends in one
	// IN list by default: well inside the 65,535 parameters a statement
	// takes, and a statement text of a few kilobytes.
	DefaultMySQLBatch = 1000
)

// defaultBatch returns d's default Config.BatchSize.
func (d Dialect) defaultBatch() int {
	if d == Postgres {
		return DefaultPostgresBatch
	}
	return DefaultMySQLBatch
}

// maxBatch returns the largest Config.BatchSize d allows.
func (d Dialect) maxBatch() int {
	if d == MySQL {
		return mysqlMaxParams
	}
	return 1 << 24 // an array parameter has no such limit; this one catches typos
}

// quote returns name as a quoted identifier of d, or an error saying why it
// cannot be one. Quoting always, rather than only when needed, means that a
// name is taken exactly as written: on PostgreSQL, an unquoted name in a
// CREATE TABLE is stored in lower case, and must be given so here.
func (d Dialect) quote(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case !utf8.ValidString(name):
		return "", errors.New("not valid UTF-8")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("contains NUL, which no quoted name can hold")
	}
	switch d {
	case Postgres:
		if len(name) > pgMaxNameBytes {
			return "", errors.New("longer than " + strconv.Itoa(pgMaxNameBytes) + " bytes: PostgreSQL would truncate it")
		}
		return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`, nil
	case MySQL:
		if n := utf8.RuneCountInString(name); n > mysqlMaxNameRunes {
			return "", errors.New("longer than " + strconv.Itoa(mysqlMaxNameRunes) + " characters")
		}
		if strings.HasSuffix(name, " ") {
			return "", errors.New("ends with a space, which MySQL does not allow in a name")
		}
		for _, r := range name {
			if r > 0xFFFF {
				return "", errors.New("holds a character beyond the Basic Multilingual Plane, which MySQL does not allow in a name")
			}
		}
		return "`" + strings.ReplaceAll(name, "`", "``") + "`", nil
	}
	return "", errors.New("unknown dialect " + d.String())
}

// param returns the text of d's i-th parameter (from 1).
func (d Dialect) param(i int) string {
	if d == Postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}

// inList returns "IN (?, ?, …)" with n parameters.
func inList(n int) string {
	var b strings.Builder
	b.Grow(len("IN ()") + 3*n)
	b.WriteString("IN (")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('?')
	}
	b.WriteByte(')')
	return b.String()
}
