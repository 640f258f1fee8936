package sqlsource

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/tiercache/tiercache/internal/safelog"
	"github.com/tiercache/tiercache/tier"
)

// DefaultMaxRows is the most rows LoadAll reads by default (Config.MaxRows).
const DefaultMaxRows = 100000

// Querier runs a query: *sql.DB, *sql.Conn and *sql.Tx satisfy it, and so
// does a wrapper that counts or traces queries.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Row is the row that Config.Scan reads.
type Row interface {
	// Scan copies the row's columns, in the order of Config.Columns, into
	// dest, as (*sql.Rows).Scan does, with one exception: a *sql.RawBytes
	// destination is an error, because its bytes are overwritten by the
	// next row while a cache would still hold them; scan into []byte.
	Scan(dest ...any) error
}

// Config describes a table, or the rows of one that a condition selects,
// as a source of one kind of object: each row is one object, found by the
// value of its key column.
type Config[K comparable, V any] struct {
	// DB runs the queries. Required. A *sql.DB is what a cache wants: it
	// is safe for concurrent use and replaces a connection that broke. A
	// *sql.Conn or *sql.Tx ties every query to one connection; the caller
	// must then not run two at once (a tier.Cache does), and a broken
	// connection stays broken.
	DB Querier
	// Dialect is the database's SQL: Postgres or MySQL (which is also
	// MariaDB's). Required.
	Dialect Dialect
	// Schema, if set, qualifies Table: a PostgreSQL schema, a MySQL
	// database. Optional; default: the connection's own (search_path, the
	// database of the DSN).
	Schema string
	// Table is the table's (or view's) name. Required.
	Table string
	// Key is the name of the key column: the column whose value is K. It
	// should be unique (a primary key) and compare as Go compares K; see
	// ErrDuplicateKey and ErrKeyMismatch for what happens otherwise.
	// Required.
	Key string
	// Columns are the columns to read, in the order Scan reads them.
	// Required, at least one; list Key among them if Scan needs it to
	// return the key, as it usually does.
	//
	// Schema, Table, Key and Columns are names, not SQL: New quotes each
	// for the Dialect, so a name is taken exactly as written (on
	// PostgreSQL, a table created unquoted as Users is named users), and
	// refuses a name that cannot be quoted (empty, NUL, invalid UTF-8,
	// too long for the database, or a character MySQL forbids).
	Columns []string
	// Where, if set, is an SQL condition that every row must also meet,
	// such as "deleted_at IS NULL": a row it excludes is not found. It is
	// SQL, pasted into the statements in parentheses: never build it from
	// input, and use no parameters ($1, ?) in it. Optional.
	Where string
	// Scan reads one row: it calls row.Scan with a destination for each
	// of Columns, and returns the row's key and its value. Required. It
	// runs on the caller's goroutine, once per row, and must not keep row.
	// An error it returns, or a panic, fails the whole call with an error
	// wrapping ErrScan (and, for a panic, tier.ErrPanic). The key it
	// returns must be the row's key: Fetch and FetchMany check it against
	// the keys asked for (ErrKeyMismatch).
	Scan func(row Row) (K, V, error)
	// BatchSize is the most keys FetchMany asks for in one statement; it
	// runs as many statements as it takes, one after another. Default
	// DefaultPostgresBatch for Postgres (keys in one array parameter) and
	// DefaultMySQLBatch for MySQL (one parameter per key, at most 65,535);
	// negative is an error.
	BatchSize int
	// MaxRows is the most rows LoadAll reads: a table with more is an
	// error wrapping ErrTooManyRows, never a truncated map. Default
	// DefaultMaxRows; negative: no limit.
	MaxRows int
	// Logger receives a record, with the stack, of every panic that Scan
	// or a destination's Scan method raises. Default slog.Default(). A
	// handler that panics loses the record, and nothing else.
	Logger *slog.Logger
}

// Table reads the objects of a Config from its table. Its methods Fetch
// and FetchMany are a tier.Config's Fetch and FetchMany; LoadAll reads the
// whole table. A Table is safe for concurrent use if its DB is (a *sql.DB
// is); it holds no connection of its own.
type Table[K comparable, V any] struct {
	db      Querier
	dialect Dialect
	name    string // the table's quoted, qualified name
	key     string // the key column's quoted name
	cols    string // the quoted column list, for messages
	ncols   int
	scan    func(Row) (K, V, error)
	batch   int
	maxRows int
	log     *slog.Logger

	fetchSQL string // one key, LIMIT 2 to see a duplicate
	loadSQL  string // every row, LIMIT MaxRows+1 to see one too many
	manySQL  string // Postgres: ANY($1); MySQL: a full batch's IN list
	// MySQL statements for a partial batch are manyHead + inList(n) +
	// manyTail.
	manyHead, manyTail string
}

// New checks cfg and returns its Table. Every name is quoted and checked
// here, so that a query never fails for a name; errors wrap ErrConfig.
func New[K comparable, V any](cfg Config[K, V]) (*Table[K, V], error) {
	d := cfg.Dialect
	switch {
	case cfg.DB == nil:
		return nil, fmt.Errorf("%w: nil DB", ErrConfig)
	case d != Postgres && d != MySQL:
		return nil, fmt.Errorf("%w: Dialect is %v; use sqlsource.Postgres or sqlsource.MySQL", ErrConfig, d)
	case cfg.Scan == nil:
		return nil, fmt.Errorf("%w: nil Scan", ErrConfig)
	case len(cfg.Columns) == 0:
		return nil, fmt.Errorf("%w: no Columns", ErrConfig)
	case cfg.BatchSize < 0 || cfg.BatchSize > d.maxBatch():
		return nil, fmt.Errorf("%w: BatchSize %d is negative or over %d, the most %v takes", ErrConfig, cfg.BatchSize, d.maxBatch(), d)
	}
	quote := func(field, name string) (string, error) {
		q, err := d.quote(name)
		if err != nil {
			return "", fmt.Errorf("%w: %s %q: %v", ErrConfig, field, name, err)
		}
		return q, nil
	}
	name, err := quote("Table", cfg.Table)
	if err != nil {
		return nil, err
	}
	if cfg.Schema != "" {
		schema, err := quote("Schema", cfg.Schema)
		if err != nil {
			return nil, err
		}
		name = schema + "." + name
	}
	key, err := quote("Key", cfg.Key)
	if err != nil {
		return nil, err
	}
	cols := make([]string, len(cfg.Columns))
	for i, c := range cfg.Columns {
		if cols[i], err = quote("Columns["+strconv.Itoa(i)+"]", c); err != nil {
			return nil, err
		}
	}
	t := &Table[K, V]{
		db:      cfg.DB,
		dialect: d,
		name:    name,
		key:     key,
		cols:    strings.Join(cols, ", "),
		ncols:   len(cols),
		scan:    cfg.Scan,
		batch:   cfg.BatchSize,
		maxRows: cfg.MaxRows,
	}
	if t.batch == 0 {
		t.batch = d.defaultBatch()
	}
	switch t.maxRows {
	case 0:
		t.maxRows = DefaultMaxRows
	case math.MaxInt: // no count of rows exceeds it, and LIMIT MaxRows+1 would overflow
		t.maxRows = -1
	}
	// A handler that panics while a panic is logged loses the record, and
	// the call still returns the panic as its error.
	t.log = safelog.New(cfg.Logger, nil)

	sel := "SELECT " + t.cols + " FROM " + name
	and := ""
	if cfg.Where != "" {
		and = " AND (" + cfg.Where + ")"
	}
	t.fetchSQL = sel + " WHERE " + key + " = " + d.param(1) + and + " LIMIT 2"
	t.loadSQL = sel
	if cfg.Where != "" {
		t.loadSQL += " WHERE (" + cfg.Where + ")"
	}
	if t.maxRows > 0 {
		t.loadSQL += " LIMIT " + strconv.Itoa(t.maxRows+1)
	}
	if d == Postgres {
		t.manySQL = sel + " WHERE " + key + " = ANY($1)" + and
	} else {
		t.manyHead = sel + " WHERE " + key + " "
		t.manyTail = and
		t.manySQL = t.manyHead + inList(t.batch) + t.manyTail
	}
	return t, nil
}

// Fetch reads the object of key: the one row whose key column equals key
// (and that Where admits). It is a tier.Config's Fetch.
//
// No such row is an error wrapping tier.ErrNotFound, and nothing else is.
// Two rows are an error wrapping ErrDuplicateKey; a row for which Scan
// returns another key, ErrKeyMismatch; a row that does not scan, ErrScan;
// a failed query or ctx's end, the driver's or ctx's error, wrapped.
func (t *Table[K, V]) Fetch(ctx context.Context, key K) (V, error) {
	const op = "fetch"
	var (
		v     V
		found bool
	)
	err := t.query(ctx, op, t.fetchSQL, []any{key},
		func(n int) error {
			if n > 0 { // LIMIT 2: the second row is not even scanned
				return fmt.Errorf("%w: %s %s: more than one row with %s = %s", ErrDuplicateKey, op, t.name, t.key, show(key))
			}
			return nil
		},
		func(k K, val V) error {
			if k != key {
				return fmt.Errorf("%w: %s %s: asked for %s = %s, Scan returned key %s", ErrKeyMismatch, op, t.name, t.key, show(key), show(k))
			}
			v, found = val, true
			return nil
		})
	if err != nil {
		var zero V
		return zero, err
	}
	if !found {
		return v, fmt.Errorf("sqlsource: %s %s: no row with %s = %s: %w", op, t.name, t.key, show(key), tier.ErrNotFound)
	}
	return v, nil
}

// FetchMany reads the objects of keys, at most BatchSize keys to a
// statement, and returns those it found and, if some keys have no row, a
// *tier.KeyErrors that says each of them is not found (tier.Missing): a
// tier.Config's FetchMany. Repeated keys are asked for once; no keys, no
// query.
//
// It returns every row it was asked for, or an error and no map at all, so
// that a key it reports as not found always has no row, never "not read".
// Errors are Fetch's, with ErrDuplicateKey naming the key.
// Batches are separate statements: they see one snapshot only if DB is a
// transaction that gives one.
func (t *Table[K, V]) FetchMany(ctx context.Context, keys []K) (map[K]V, error) {
	const op = "fetch many"
	want := make(map[K]struct{}, len(keys))
	uniq := make([]K, 0, len(keys))
	for _, k := range keys {
		if _, dup := want[k]; !dup {
			want[k] = struct{}{}
			uniq = append(uniq, k)
		}
	}
	found := make(map[K]V, len(uniq))
	visit := func(k K, v V) error {
		if _, ok := want[k]; !ok {
			return fmt.Errorf("%w: %s %s: Scan returned key %s, which was not asked for", ErrKeyMismatch, op, t.name, show(k))
		}
		if _, dup := found[k]; dup {
			return fmt.Errorf("%w: %s %s: more than one row with %s = %s", ErrDuplicateKey, op, t.name, t.key, show(k))
		}
		found[k] = v
		return nil
	}
	var args []any
	for start := 0; start < len(uniq); start += t.batch {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sqlsource: %s %s: %w", op, t.name, err)
		}
		chunk := uniq[start:min(start+t.batch, len(uniq))]
		q := t.manySQL
		if t.dialect == Postgres {
			args = append(args[:0], chunk)
		} else {
			if len(chunk) != t.batch {
				q = t.manyHead + inList(len(chunk)) + t.manyTail
			}
			args = args[:0]
			for _, k := range chunk {
				args = append(args, k)
			}
		}
		if err := t.query(ctx, op, q, args, nil, visit); err != nil {
			return nil, err
		}
	}
	return found, tier.Missing(uniq, found)
}

// LoadAll reads every row of the table that Where admits, at most MaxRows,
// into one map: the whole table as one resource. It returns all of them or
// an error and no map; more than MaxRows rows is an error wrapping
// ErrTooManyRows, two rows with one key ErrDuplicateKey, naming the key.
// Other errors are Fetch's.
func (t *Table[K, V]) LoadAll(ctx context.Context) (map[K]V, error) {
	const op = "load all"
	all := make(map[K]V)
	err := t.query(ctx, op, t.loadSQL, nil,
		func(n int) error {
			if t.maxRows > 0 && n >= t.maxRows {
				return fmt.Errorf("%w: %s %s: more than MaxRows (%d) rows", ErrTooManyRows, op, t.name, t.maxRows)
			}
			return nil
		},
		func(k K, v V) error {
			if _, dup := all[k]; dup {
				return fmt.Errorf("%w: %s %s: more than one row with %s = %s", ErrDuplicateKey, op, t.name, t.key, show(k))
			}
			all[k] = v
			return nil
		})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// query runs q with args and, for each row n (from 0), calls before(n), if
// set, then Scan, then visit with the key and value Scan returned; the
// first error of any of them ends the query. The rows are closed and their
// error checked on every path but one: see row.scanning.
func (t *Table[K, V]) query(ctx context.Context, op, q string, args []any, before func(n int) error, visit func(K, V) error) (err error) {
	rows, err := t.db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("sqlsource: %s %s: %w", op, t.name, err)
	}
	r := &row{rows: rows, log: t.log, table: t.name}
	defer func() {
		if r.scanning {
			// A panic escaped (*sql.Rows).Scan, which then keeps a read
			// lock that Close would wait for forever (Go issue 76465).
			// Leave the rows open: the connection is lost to the pool,
			// but the caller returns.
			err = fmt.Errorf("%w; the rows are left open, and their connection lost to the pool, because database/sql cannot close rows after a panic inside Rows.Scan", err)
			return
		}
		if cerr := rows.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("sqlsource: %s %s: closing rows: %w", op, t.name, cerr)
		}
	}()
	for n := 0; rows.Next(); n++ {
		if before != nil {
			if err := before(n); err != nil {
				return err
			}
		}
		k, v, err := t.scanRow(r)
		if err != nil {
			return fmt.Errorf("%w: %s %s: row %d, %d columns (%s): %w", ErrScan, op, t.name, n+1, t.ncols, t.cols, err)
		}
		if err := visit(k, v); err != nil {
			return err
		}
	}
	// Next returned false, so no Scan holds the rows' lock and Err cannot
	// block.
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlsource: %s %s: %w", op, t.name, err)
	}
	return nil
}

// scanRow calls Config.Scan on r, turning a panic into an error wrapping
// tier.ErrPanic.
func (t *Table[K, V]) scanRow(r *row) (k K, v V, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = r.panicked("Scan", p)
		}
	}()
	return t.scan(r)
}

// row is the Row handed to Config.Scan.
type row struct {
	rows  *sql.Rows
	log   *slog.Logger
	table string
	// scanning is set while rows.Scan runs, so it stays set if a panic
	// escapes it; query then does not close the rows.
	scanning bool
	buf      []any
}

// errRawBytes is Row.Scan's error for a *sql.RawBytes destination.
var errRawBytes = errors.New("sqlsource: Row.Scan into *sql.RawBytes, whose bytes the next row overwrites; scan into []byte")

// decimalCompose is database/sql's unexported interface of a destination
// that takes a decimal in parts; database/sql calls Compose, not Scan, on
// such a destination, so it is not wrapped.
type decimalCompose interface {
	Compose(form byte, negative bool, coefficient []byte, exponent int32) error
}

// Scan implements Row. A destination that implements sql.Scanner is called
// through scanGuard, so that a panic in its Scan method is an error rather
// than a panic inside (*sql.Rows).Scan, after which database/sql could not
// close the rows (Go issue 76465).
func (r *row) Scan(dest ...any) error {
	args := dest
	for i, d := range dest {
		switch d := d.(type) {
		case *sql.RawBytes:
			return errRawBytes
		case sql.Scanner:
			if _, ok := d.(decimalCompose); ok {
				continue
			}
			if len(args) > 0 && &args[0] == &dest[0] {
				args = append(r.buf[:0], dest...)
				r.buf = args
			}
			args[i] = scanGuard{s: d, r: r}
		}
	}
	r.scanning = true
	err := r.rows.Scan(args...)
	r.scanning = false
	clear(r.buf) // keep no destination alive past the row
	return err
}

// scanGuard calls a destination's Scan method, turning a panic into an
// error wrapping tier.ErrPanic.
type scanGuard struct {
	s sql.Scanner
	r *row
}

// Scan implements sql.Scanner.
func (g scanGuard) Scan(src any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = g.r.panicked(fmt.Sprintf("the Scan method of %T", g.s), p)
		}
	}()
	return g.s.Scan(src)
}

// panicked logs the panic p of the callback named what, with its stack, and
// returns it as an error wrapping tier.ErrPanic.
func (r *row) panicked(what string, p any) error {
	r.log.Error("sqlsource: callback panicked", "callback", what, "table", r.table, "panic", p, "stack", string(debug.Stack()))
	return fmt.Errorf("%s panicked: %v (%w)", what, p, tier.ErrPanic)
}

// show formats a key for a message: quoted if it is a string, so that
// spaces and case show.
func show[K comparable](k K) string {
	if reflect.ValueOf(k).Kind() == reflect.String {
		return strconv.Quote(fmt.Sprint(k))
	}
	return fmt.Sprint(k)
}
