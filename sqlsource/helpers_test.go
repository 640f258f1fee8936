package sqlsource_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" driver, for MariaDB
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/tiercache/tiercache/sqlsource"
)

// The machine's database servers (see the go-svc machine's notes).
const (
	pgDSN    = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	mysqlDSN = "root@tcp(127.0.0.1:3306)/test?parseTime=true"

	pgHint    = "these tests need PostgreSQL on 127.0.0.1:5432 (trust authentication, database test, user postgres); start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
	mysqlHint = "these tests need MariaDB on 127.0.0.1:3306 (root, empty password, database test); start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
)

// guard bounds each test's waits on a server, so that a broken server
// fails the test instead of hanging it. No test sleeps.
const guard = 30 * time.Second

// backend is one database server the tests run against, with the SQL that
// differs between them.
type backend struct {
	name    string
	driver  string
	dsn     string
	hint    string
	dialect sqlsource.Dialect
	// connID is the statement that returns the server's id of the
	// connection that runs it.
	connID string
	// kill ends connection id from another connection and returns once
	// the server has closed it.
	kill func(t *testing.T, admin *sql.DB, id int64)
}

var backends = []backend{
	{
		name:    "postgres",
		driver:  "pgx",
		dsn:     pgDSN,
		hint:    pgHint,
		dialect: sqlsource.Postgres,
		connID:  "SELECT pg_backend_pid()",
		kill: func(t *testing.T, admin *sql.DB, id int64) {
			t.Helper()
			// With a timeout, pg_terminate_backend waits for the backend
			// to exit, and says whether it did.
			var done bool
			if err := admin.QueryRowContext(t.Context(), "SELECT pg_terminate_backend($1, $2)", id, guard.Milliseconds()).Scan(&done); err != nil || !done {
				t.Fatalf("pg_terminate_backend(%d) = %v, %v", id, done, err)
			}
		},
	},
	{
		name:    "mariadb",
		driver:  "mysql",
		dsn:     mysqlDSN,
		hint:    mysqlHint,
		dialect: sqlsource.MySQL,
		connID:  "SELECT CONNECTION_ID()",
		kill: func(t *testing.T, admin *sql.DB, id int64) {
			t.Helper()
			if _, err := admin.ExecContext(t.Context(), "KILL CONNECTION "+strconv.FormatInt(id, 10)); err != nil {
				t.Fatalf("KILL CONNECTION %d: %v", id, err)
			}
			// KILL returns before the killed thread has closed its socket;
			// it leaves the process list after it has. Each poll is a
			// round trip to the server, not a sleep.
			ctx, cancel := context.WithTimeout(t.Context(), guard)
			defer cancel()
			for {
				var n int
				err := admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", id).Scan(&n)
				if err != nil {
					t.Fatalf("waiting for connection %d to end: %v", id, err)
				}
				if n == 0 {
					return
				}
			}
		},
	},
}

// each runs f as a subtest for every backend.
func each(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// open returns a new pool on b, closed at cleanup, failing the test with
// how to start the server if it does not answer.
func (b backend) open(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open(b.driver, b.dsn)
	if err != nil {
		t.Fatalf("sql.Open(%q): %v", b.driver, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("%s did not answer: %v\n%s", b.name, err, b.hint)
	}
	return db
}

// pool returns a new pool on b, closed at cleanup, that has opened no
// connection yet.
func (b backend) pool(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open(b.driver, b.dsn)
	if err != nil {
		t.Fatalf("sql.Open(%q): %v", b.driver, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// p returns b's i-th parameter placeholder, for the tests' own statements.
func (b backend) p(i int) string {
	if b.dialect == sqlsource.Postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}

// table creates a table of a name no other test or run uses, with the
// given column definitions, and drops it at cleanup. The name needs no
// quoting.
func (b backend) table(t testing.TB, db *sql.DB, columns string) string {
	t.Helper()
	var sb strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if sb.Len() == 40 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('_')
		}
	}
	name := "t_" + sb.String() + "_" + randomHex()
	b.exec(t, db, "CREATE TABLE "+name+" ("+columns+")")
	t.Cleanup(func() {
		// The test's context is done by now.
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP TABLE "+name); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	return name
}

// exec runs a statement of the test's own.
func (b backend) exec(t testing.TB, db *sql.DB, query string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// insert inserts rows (each a list of column values) into table's columns,
// a thousand rows to a statement.
func (b backend) insert(t testing.TB, db *sql.DB, table, columns string, rows ...[]any) {
	t.Helper()
	for len(rows) > 0 {
		chunk := rows[:min(len(rows), 1000)]
		rows = rows[len(chunk):]
		var (
			sb   strings.Builder
			args []any
		)
		fmt.Fprintf(&sb, "INSERT INTO %s (%s) VALUES ", table, columns)
		for i, r := range chunk {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteByte('(')
			for j, v := range r {
				if j > 0 {
					sb.WriteString(", ")
				}
				args = append(args, v)
				sb.WriteString(b.p(len(args)))
			}
			sb.WriteByte(')')
		}
		b.exec(t, db, sb.String(), args...)
	}
}

// user is the tests' object: a row of (id, name).
type user struct {
	ID   int64
	Name string
}

// scanUser is a Config.Scan for the columns id, name.
func scanUser(r sqlsource.Row) (int64, user, error) {
	var u user
	err := r.Scan(&u.ID, &u.Name)
	return u.ID, u, err
}

// users creates a table of users (id, name) holding rows, and a Table of
// it with cfg's optional fields, reading through a counter of db; it
// returns the table's name too.
func (b backend) users(t testing.TB, db *sql.DB, cfg sqlsource.Config[int64, user], rows ...user) (*sqlsource.Table[int64, user], *counter, string) {
	t.Helper()
	name := b.table(t, db, "id BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL")
	vals := make([][]any, len(rows))
	for i, u := range rows {
		vals[i] = []any{u.ID, u.Name}
	}
	if len(vals) > 0 {
		b.insert(t, db, name, "id, name", vals...)
	}
	c := &counter{q: db}
	cfg.DB = c
	cfg.Dialect = b.dialect
	cfg.Table = name
	cfg.Key = "id"
	cfg.Columns = []string{"id", "name"}
	if cfg.Scan == nil {
		cfg.Scan = scanUser
	}
	tbl, err := sqlsource.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tbl, c, name
}

// counter is a Querier that counts the queries it runs and keeps the last.
type counter struct {
	q sqlsource.Querier

	mu   sync.Mutex
	n    int
	last string
}

func (c *counter) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	c.mu.Lock()
	c.n++
	c.last = query
	c.mu.Unlock()
	return c.q.QueryContext(ctx, query, args...)
}

// queries returns how many queries ran since the last call.
func (c *counter) queries() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = 0
	return n
}

// mustErr fails the test unless err wraps every one of targets, and says
// what it was.
func mustErr(t testing.TB, what string, err error, targets ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error; want one wrapping %v", what, targets)
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Fatalf("%s = %v; want an error wrapping %v", what, err, target)
		}
	}
}

// mustContain fails the test unless err's message contains every one of
// parts.
func mustContain(t testing.TB, what string, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("%s = %q; want it to mention %q", what, err, p)
		}
	}
}
