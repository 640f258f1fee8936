package pgnotify_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/pgnotify"
	"github.com/tiercache/tiercache/tier"
)

// The machine's PostgreSQL (see the go-svc machine's notes), as sqlsource's
// tests use it.
const (
	pgDSN  = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	pgHint = "these tests need PostgreSQL on 127.0.0.1:5432 (trust authentication, database test, user postgres); start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)

// guard bounds each wait of a test, so that a broken listener fails the
// test instead of hanging it. No test sleeps.
const guard = 30 * time.Second

// fast are the Listener's timings in tests: reconnections at once, a
// backoff of milliseconds.
func fast(cfg pgnotify.Config) pgnotify.Config {
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 10 * time.Millisecond
	}
	return cfg
}

// openDB returns a pool on the machine's PostgreSQL, closed at cleanup,
// failing the test with how to start the server if it does not answer.
// The tests write through it: never the Listener's connection.
func openDB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", pgDSN)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("PostgreSQL did not answer: %v\n%s", err, pgHint)
	}
	return db
}

// exec runs a statement of the test's own.
func exec(t testing.TB, db *sql.DB, query string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// unique returns prefix and the test's name, made a plain lower-case
// identifier of at most 40 bytes, and 8 random hex digits: a name no other
// test or run uses.
func unique(t testing.TB, prefix string) string {
	var sb strings.Builder
	sb.WriteString(prefix)
	for _, r := range strings.ToLower(t.Name()) {
		if sb.Len() == 30 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('_')
		}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return sb.String() + "_" + hex.EncodeToString(b[:])
}

// productsTable creates a table of products (id, name, category_id) with
// rows, dropped at cleanup, and returns its name.
func productsTable(t testing.TB, db *sql.DB, rows ...product) string {
	t.Helper()
	name := unique(t, "t_")
	exec(t, db, "CREATE TABLE "+name+" (id bigint PRIMARY KEY, name text NOT NULL, category_id bigint)")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP TABLE "+name); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	for _, p := range rows {
		exec(t, db, "INSERT INTO "+name+" (id, name, category_id) VALUES ($1, $2, $3)", p.ID, p.Name, p.Category)
	}
	return name
}

// install runs TriggerSQL(cfg), and DropTriggerSQL(cfg) at cleanup (before
// the table is dropped, since cleanups run last first).
func install(t testing.TB, db *sql.DB, cfg pgnotify.TriggerConfig) {
	t.Helper()
	create, err := pgnotify.TriggerSQL(cfg)
	if err != nil {
		t.Fatalf("TriggerSQL: %v", err)
	}
	drop, err := pgnotify.DropTriggerSQL(cfg)
	if err != nil {
		t.Fatalf("DropTriggerSQL: %v", err)
	}
	exec(t, db, create)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if _, err := db.ExecContext(ctx, drop); err != nil {
			t.Errorf("dropping the trigger of %s: %v", cfg.Table, err)
		}
	})
}

// productTrigger is the trigger of a products table: keys id, groups
// "category:<category_id>", on channel.
func productTrigger(table, channel string) pgnotify.TriggerConfig {
	return pgnotify.TriggerConfig{
		Table:     table,
		Namespace: "products",
		KeyColumn: "id",
		Groups:    []pgnotify.GroupColumn{{Prefix: "category:", Column: "category_id"}},
		Channel:   channel,
	}
}

// product is a row of a products table.
type product struct {
	ID       int64
	Name     string
	Category int64
}

// fleet is two nodes sharing one private Redis: a is the Listener's, b
// learns of its invalidations through the bus only.
type fleet struct {
	srv  *redistest.Server
	a, b *tier.Node
	// appliedB is signalled whenever b applies another node's
	// invalidation; busB then too, and whenever b drops its L1 or its
	// lease lapses or is renewed.
	appliedB, busB <-chan struct{}
}

func newFleet(t *testing.T, cfg tier.NodeConfig) *fleet {
	t.Helper()
	srv := redistest.Start(t)
	cfg.L1MaxBytes = 1 << 20
	node := func(rec tier.Recorder) *tier.Node {
		c := cfg
		c.Recorder = rec
		n, err := tier.NewNode(context.Background(), srv.Client(t), c)
		if err != nil {
			t.Fatalf("NewNode: %v", err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	w := &busWatch{applied: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	return &fleet{srv: srv, a: node(nil), b: node(w), appliedB: w.applied, busB: w.changed}
}

// busWatch is a Recorder that signals, on applied, every invalidation
// the node applies from the bus, and, on changed, that and every other
// event that can change what the node serves from L1: a drop of its whole
// L1, its lease lapsing or renewed.
type busWatch struct {
	tier.NopRecorder
	applied, changed chan struct{}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (w *busWatch) Applied(string, tier.Scope, int, time.Duration) {
	signal(w.applied)
	signal(w.changed)
}
func (w *busWatch) Dropped(tier.DropReason) { signal(w.changed) }
func (w *busWatch) Lease(tier.LeaseEvent)   { signal(w.changed) }

// products returns a cache of namespace "products" of table on n, with
// negative caching, counting its fetches in reads.
func products(t *testing.T, n *tier.Node, db *sql.DB, table string, reads *atomic.Int64) *tier.Cache[int64, product] {
	t.Helper()
	c, err := tier.New(n, tier.Config[int64, product]{
		Namespace:   "products",
		NotFoundTTL: time.Hour,
		Fetch: func(ctx context.Context, id int64) (product, error) {
			if reads != nil {
				reads.Add(1)
			}
			p := product{ID: id}
			var cat sql.NullInt64
			err := db.QueryRowContext(ctx, "SELECT name, category_id FROM "+table+" WHERE id = $1", id).Scan(&p.Name, &cat)
			if errors.Is(err, sql.ErrNoRows) {
				return product{}, fmt.Errorf("product %d: %w", id, tier.ErrNotFound)
			}
			p.Category = cat.Int64
			return p, err
		},
	})
	if err != nil {
		t.Fatalf("tier.New(products): %v", err)
	}
	return c
}

// pages returns a cache of namespace "category-pages" on n: a category's
// product names, in group "category:<id>".
func pages(t *testing.T, n *tier.Node, db *sql.DB, table string) *tier.Cache[int64, string] {
	t.Helper()
	c, err := tier.New(n, tier.Config[int64, string]{
		Namespace: "category-pages",
		Fetch: func(ctx context.Context, cat int64) (string, error) {
			var names string
			err := db.QueryRowContext(ctx, "SELECT coalesce(string_agg(name, ',' ORDER BY id), '') FROM "+table+" WHERE category_id = $1", cat).Scan(&names)
			return names, err
		},
		Groups: func(cat int64, _ string) []string { return []string{"category:" + strconv.FormatInt(cat, 10)} },
	})
	if err != nil {
		t.Fatalf("tier.New(category-pages): %v", err)
	}
	return c
}

// watched is a Listener whose counters the test can wait on.
type watched struct {
	*pgnotify.Listener
	changed <-chan struct{}
	idle    <-chan struct{}
	// waits has the length of each wait between attempts (the first 64).
	waits <-chan time.Duration
}

// listen starts a Listener of cfg (with fast timings), closed at cleanup,
// and waits for it to be ready.
func listen(t *testing.T, cfg pgnotify.Config) *watched {
	t.Helper()
	w := start(t, cfg)
	select {
	case <-w.Ready():
	case <-time.After(guard):
		t.Fatalf("the Listener is not ready: %+v", w.Stats())
	}
	return w
}

// start starts a Listener of cfg (with fast timings), closed at cleanup,
// without waiting for it.
func start(t *testing.T, cfg pgnotify.Config) *watched {
	t.Helper()
	if cfg.ConnString == "" && cfg.Connect == nil {
		cfg.ConnString = pgDSN
	}
	changed := make(chan struct{}, 1)
	idle := make(chan struct{}, 1)
	waits := make(chan time.Duration, 64)
	l, err := pgnotify.NewWithHooks(fast(cfg), func() { signal(changed) }, func() { signal(idle) }, func(d time.Duration) {
		select {
		case waits <- d:
		default:
		}
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return &watched{Listener: l, changed: changed, idle: idle, waits: waits}
}

// wait waits until cond holds of the Listener's Stats.
func (w *watched) wait(t *testing.T, what string, cond func(pgnotify.Stats) bool) pgnotify.Stats {
	t.Helper()
	deadline := time.After(guard)
	for {
		s := w.Stats()
		if cond(s) {
			return s
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("waiting for %s: %+v", what, s)
		}
	}
}

// mustGet gets key from c, failing the test unless it is want.
func mustGet[V comparable](t *testing.T, c *tier.Cache[int64, V], key int64, want V) {
	t.Helper()
	v, err := c.Get(t.Context(), key)
	if err != nil || v != want {
		t.Fatalf("Get(%d) = %v, %v; want %v", key, v, err, want)
	}
}

// mustNotFound gets key from c, failing the test unless it is not found.
func mustNotFound[V any](t *testing.T, c *tier.Cache[int64, V], key int64) {
	t.Helper()
	if v, err := c.Get(t.Context(), key); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("Get(%d) = %v, %v; want not found", key, v, err)
	}
}

// eventually gets key from c each time sig says something changed on the
// node, until check accepts what it gets.
func eventually[V any](t *testing.T, sig <-chan struct{}, c *tier.Cache[int64, V], key int64, what string, check func(V, error) bool) {
	t.Helper()
	deadline := time.After(guard)
	for {
		v, err := c.Get(t.Context(), key)
		if check(v, err) {
			return
		}
		select {
		case <-sig:
		case <-deadline:
			t.Fatalf("Get(%d) on the other node = %v, %v; want %s", key, v, err, what)
		}
	}
}

// is returns a check for eventually: the value want.
func is[V comparable](want V) func(V, error) bool {
	return func(v V, err error) bool { return err == nil && v == want }
}

// notFound is a check for eventually: not found.
func notFound[V any](_ V, err error) bool { return errors.Is(err, tier.ErrNotFound) }

// cached gets key from c until L1 answers, failing the test if it does not
// within guard: the entry the test wants to see evicted is held in both
// tiers. (L1 takes a fill in the background: ristretto's buffered Set.
// Each round is a Get, a round trip to Redis until L1 holds the entry.)
func cached[V any](t *testing.T, c *tier.Cache[int64, V], key int64) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		var ri tier.ReadInfo
		_, err := c.Get(t.Context(), key, tier.Info(&ri))
		if err != nil && !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("Get(%d): %v", key, err)
		}
		if ri.Source == tier.SourceL1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get(%d) still comes from %v; want L1", key, ri.Source)
		}
	}
}

// logs is a Logger whose records the test reads.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.buf.Write(p)
	}), nil))
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
