package pgnotify_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/pgnotify"
	"github.com/tiercache/tiercache/tier"
)

// The rows every test starts with.
var (
	ada = product{ID: 1, Name: "Ada", Category: 1}
	bob = product{ID: 2, Name: "Bob", Category: 1}
	cyd = product{ID: 3, Name: "Cyd", Category: 2}
)

// setup is the fixture of the tests of writes: a products table (with the
// trigger, if asked) notifying a channel of its own; two nodes sharing one
// Redis, each with a products cache and a category pages cache; and a
// ready Listener on node a. Node b learns of every invalidation through
// the bus only.
type setup struct {
	db             *sql.DB
	table, channel string
	f              *fleet
	pa, pb         *tier.Cache[int64, product]
	pagesA, pagesB *tier.Cache[int64, string]
	readsA         atomic.Int64
	l              *watched
}

func newSetup(t *testing.T, trigger bool, nodeCfg tier.NodeConfig, cfg pgnotify.Config) *setup {
	t.Helper()
	s := &setup{db: openDB(t)}
	s.table = productsTable(t, s.db, ada, bob, cyd)
	s.channel = unique(t, "c_")
	if trigger {
		install(t, s.db, productTrigger(s.table, s.channel))
	}
	s.f = newFleet(t, nodeCfg)
	s.pa = products(t, s.f.a, s.db, s.table, &s.readsA)
	s.pb = products(t, s.f.b, s.db, s.table, nil)
	s.pagesA = pages(t, s.f.a, s.db, s.table)
	s.pagesB = pages(t, s.f.b, s.db, s.table)
	cfg.Node = s.f.a
	cfg.Channel = s.channel
	if cfg.Namespaces == nil {
		cfg.Namespaces = []string{"products", "category-pages"}
	}
	s.l = listen(t, cfg)
	if !cfg.SkipInitialInvalidation {
		// The first connection's invalidation reaches b through the bus:
		// wait for it, so that it cannot evict what the test caches next.
		select {
		case <-s.f.appliedB:
		case <-time.After(guard):
			t.Fatal("node b never applied the Listener's first invalidation")
		}
	}
	return s
}

// notify sends payload on the setup's channel from the test's connection.
func (s *setup) notify(t *testing.T, payload string) {
	t.Helper()
	exec(t, s.db, "SELECT pg_notify($1, $2)", s.channel, payload)
}

// An UPDATE through another connection evicts the row's entries on both
// nodes, and nothing else.
func TestUpdate(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	for _, id := range []int64{1, 2} {
		cached(t, s.pa, id)
		cached(t, s.pb, id)
	}
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.l.wait(t, "the UPDATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	want := product{ID: 1, Name: "Ada L.", Category: 1}
	mustGet(t, s.pa, 1, want)
	eventually(t, s.f.busB, s.pb, 1, "the new name", is(want))
	// Row 2 was not written: still in L1 on both nodes.
	for _, c := range []*tier.Cache[int64, product]{s.pa, s.pb} {
		var ri tier.ReadInfo
		if _, err := c.Get(t.Context(), 2, tier.Info(&ri)); err != nil || ri.Source != tier.SourceL1 {
			t.Fatalf("Get(2) came from %v (%v); want L1: only the written row is invalidated", ri.Source, err)
		}
	}
	if st := s.l.Stats(); st.Received != 1 || st.Malformed != 0 || st.UnknownNamespaces != 0 || st.GapInvalidations != 1 || st.Disconnects != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

// An UPDATE of the key itself sends both keys: the old is gone, and the
// new, cached as "not found", is found.
func TestUpdateOfKey(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	for _, c := range []*tier.Cache[int64, product]{s.pa, s.pb} {
		cached(t, c, 1)
		cached(t, c, 10)
	}
	exec(t, s.db, "UPDATE "+s.table+" SET id = 10 WHERE id = 1")
	s.l.wait(t, "the UPDATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	want := product{ID: 10, Name: "Ada", Category: 1}
	mustNotFound(t, s.pa, 1)
	mustGet(t, s.pa, 10, want)
	eventually(t, s.f.busB, s.pb, 1, "not found", notFound)
	eventually(t, s.f.busB, s.pb, 10, "the moved row", is(want))
}

// An INSERT evicts a cached "not found" on both nodes.
func TestInsertAfterNotFound(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	cached(t, s.pa, 4)
	cached(t, s.pb, 4)
	mustNotFound(t, s.pa, 4)
	mustNotFound(t, s.pb, 4)
	exec(t, s.db, "INSERT INTO "+s.table+" (id, name, category_id) VALUES (4, 'Dee', 2)")
	s.l.wait(t, "the INSERT applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	want := product{ID: 4, Name: "Dee", Category: 2}
	mustGet(t, s.pa, 4, want)
	eventually(t, s.f.busB, s.pb, 4, "the new row", is(want))
}

// A DELETE evicts the row on both nodes.
func TestDelete(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	cached(t, s.pa, 2)
	cached(t, s.pb, 2)
	exec(t, s.db, "DELETE FROM "+s.table+" WHERE id = 2")
	s.l.wait(t, "the DELETE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	mustNotFound(t, s.pa, 2)
	eventually(t, s.f.busB, s.pb, 2, "not found", notFound)
}

// A product moved from category 1 to 2 invalidates both categories'
// pages, a namespace no trigger names, through their groups, and the
// product itself, on both nodes: one notification, one Invalidate.
func TestGroupsMoveBetweenCategories(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	for _, c := range []*tier.Cache[int64, string]{s.pagesA, s.pagesB} {
		mustGet(t, c, 1, "Ada,Bob")
		mustGet(t, c, 2, "Cyd")
		cached(t, c, 1)
		cached(t, c, 2)
	}
	cached(t, s.pa, 1)
	cached(t, s.pb, 1)
	exec(t, s.db, "UPDATE "+s.table+" SET category_id = 2 WHERE id = 1")
	s.l.wait(t, "the UPDATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	moved := product{ID: 1, Name: "Ada", Category: 2}
	mustGet(t, s.pagesA, 1, "Bob")
	mustGet(t, s.pagesA, 2, "Ada,Cyd")
	mustGet(t, s.pa, 1, moved)
	eventually(t, s.f.busB, s.pagesB, 1, "the old category without Ada", is("Bob"))
	eventually(t, s.f.busB, s.pagesB, 2, "the new category with Ada", is("Ada,Cyd"))
	eventually(t, s.f.busB, s.pb, 1, "the moved product", is(moved))
}

// A TRUNCATE invalidates the whole namespace on both nodes.
func TestTruncate(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	for _, id := range []int64{1, 2, 3} {
		cached(t, s.pa, id)
		cached(t, s.pb, id)
	}
	exec(t, s.db, "TRUNCATE "+s.table)
	s.l.wait(t, "the TRUNCATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })

	for _, id := range []int64{1, 2, 3} {
		mustNotFound(t, s.pa, id)
		eventually(t, s.f.busB, s.pb, id, "not found", notFound)
	}
}

// The Listener's connection is terminated by the server, and a write
// commits while it is away: its notification is lost, and the nodes serve
// the old row, until the Listener is back; then its invalidation of the
// namespaces evicts the row on both nodes.
func TestReconnectClosesTheGap(t *testing.T) {
	var (
		attempts atomic.Int32
		pid      atomic.Uint32
		waiting  = make(chan struct{})
		release  = make(chan struct{})
	)
	connect := func(ctx context.Context) (*pgx.Conn, error) {
		switch attempts.Add(1) {
		case 2: // the first attempt after the loss fails: backoff
			return nil, errors.New("refused by the test")
		case 3: // the next waits until the test has written
			close(waiting)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c, err := pgx.Connect(ctx, pgDSN)
		if err == nil {
			pid.Store(c.PgConn().PID())
		}
		return c, err
	}
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{Connect: connect})
	cached(t, s.pa, 1)
	cached(t, s.pb, 1)

	// With a timeout, pg_terminate_backend waits for the backend to exit.
	var done bool
	if err := s.db.QueryRowContext(t.Context(), "SELECT pg_terminate_backend($1, $2)", int64(pid.Load()), guard.Milliseconds()).Scan(&done); err != nil || !done {
		t.Fatalf("pg_terminate_backend = %v, %v", done, err)
	}
	select {
	case <-waiting:
	case <-time.After(guard):
		t.Fatalf("the Listener did not try to reconnect: %+v", s.l.Stats())
	}
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	// Nobody listens: both nodes still serve the old row from L1.
	mustGet(t, s.pa, 1, ada)
	mustGet(t, s.pb, 1, ada)

	close(release)
	st := s.l.wait(t, "the reconnection's invalidation", func(st pgnotify.Stats) bool { return st.GapInvalidations == 2 })
	if st.Reconnects != 1 || st.Disconnects != 1 || st.ConnectErrors != 1 || st.Received != 0 {
		t.Fatalf("Stats = %+v; want one reconnection, one disconnection, one failed attempt, nothing received", st)
	}
	want := product{ID: 1, Name: "Ada L.", Category: 1}
	mustGet(t, s.pa, 1, want)
	eventually(t, s.f.busB, s.pb, 1, "the row written during the gap", is(want))

	// Listening again: the next write is notified.
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada K.' WHERE id = 1")
	s.l.wait(t, "the next UPDATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada K.", Category: 1})
}

// A connection lost without a word (a network partition) is found by the
// ping that follows PingInterval of silence, and replaced; the write
// whose notification the partition swallowed is covered by the
// reconnection's invalidation.
func TestSilentConnectionReplaced(t *testing.T) {
	p := faultproxy.Start(t, "127.0.0.1:5432")
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{
		ConnString:     "postgres://postgres@" + p.Addr() + "/test?sslmode=disable",
		PingInterval:   50 * time.Millisecond,
		PingTimeout:    100 * time.Millisecond,
		ConnectTimeout: 200 * time.Millisecond,
	})
	cached(t, s.pa, 1)
	cached(t, s.pb, 1)

	p.Blackhole()
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.l.wait(t, "the silent connection found", func(st pgnotify.Stats) bool { return st.Disconnects == 1 })
	mustGet(t, s.pa, 1, ada) // the notification was lost

	p.Pass()
	st := s.l.wait(t, "the reconnection's invalidation", func(st pgnotify.Stats) bool { return st.GapInvalidations == 2 })
	if st.Reconnects != 1 || st.Received != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	want := product{ID: 1, Name: "Ada L.", Category: 1}
	mustGet(t, s.pa, 1, want)
	eventually(t, s.f.busB, s.pb, 1, "the row written during the partition", is(want))
}

// A silence of PingInterval is broken by a ping that succeeds: the
// connection is kept, and the next notification applies.
func TestIdleConnectionKept(t *testing.T) {
	s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{PingInterval: 10 * time.Millisecond})
	for range 3 {
		select {
		case <-s.l.idle:
		case <-time.After(guard):
			t.Fatal("no ping after PingInterval of silence")
		}
	}
	cached(t, s.pa, 1)
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.notify(t, `{"ns":"products","keys":["1"]}`)
	s.l.wait(t, "the notification applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada L.", Category: 1})
	if st := s.l.Stats(); st.Disconnects != 0 || st.Reconnects != 0 {
		t.Fatalf("Stats = %+v; want the connection kept", st)
	}
}

// A payload that does not parse is counted and logged, and answered by
// invalidating every configured namespace; the Listener goes on, and the
// next valid notification applies.
func TestMalformedPayload(t *testing.T) {
	var log logs
	s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{Logger: log.logger()})
	cached(t, s.pa, 1)
	cached(t, s.pb, 1)
	cached(t, s.pa, 2)
	// No trigger: these writes send nothing.
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Bob L.' WHERE id = 2")

	s.notify(t, "garbage")
	s.l.wait(t, "the garbage counted", func(st pgnotify.Stats) bool { return st.Malformed == 1 })
	want := product{ID: 1, Name: "Ada L.", Category: 1}
	mustGet(t, s.pa, 1, want)
	eventually(t, s.f.busB, s.pb, 1, "the row written silently", is(want))
	if out := log.String(); !strings.Contains(out, "malformed notification") || !strings.Contains(out, "payload=garbage") {
		t.Fatalf("the log does not report the garbage:\n%s", out)
	}

	cached(t, s.pa, 2) // refilled, now the old row is gone
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Bob K.' WHERE id = 2")
	s.notify(t, `{"ns":"products","keys":["2"]}`)
	st := s.l.wait(t, "the valid notification applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	if st.Received != 2 || st.Malformed != 1 || st.Disconnects != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	mustGet(t, s.pa, 2, product{ID: 2, Name: "Bob K.", Category: 1})
}

// A Logger whose handler panics loses its records and nothing else: the
// Listener listens (its record of that, at Debug, panics), answers a
// malformed payload by invalidating (its warning panics), keeps its
// connection, and counts each record lost.
func TestLoggerPanics(t *testing.T) {
	s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{Logger: slog.New(panicking{})})
	cached(t, s.pa, 1)
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.notify(t, "garbage")
	st := s.l.wait(t, "the garbage counted", func(st pgnotify.Stats) bool { return st.Malformed == 1 })
	mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada L.", Category: 1})
	if st.LoggerPanics < 2 || st.Disconnects != 0 || st.Reconnects != 0 {
		t.Fatalf("Stats = %+v; want the records of listening and of the garbage lost, the connection kept", st)
	}
}

// panicking is a slog.Handler that takes every level and panics on every
// record.
type panicking struct{}

func (panicking) Enabled(context.Context, slog.Level) bool  { return true }
func (panicking) Handle(context.Context, slog.Record) error { panic("handler bug") }
func (p panicking) WithAttrs([]slog.Attr) slog.Handler      { return p }
func (p panicking) WithGroup(string) slog.Handler           { return p }

// A notification naming a namespace the Listener was not told of is
// applied all the same, counted and warned about.
func TestUnknownNamespace(t *testing.T) {
	var log logs
	s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{Logger: log.logger(), Namespaces: []string{"category-pages"}})
	cached(t, s.pa, 1)
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.notify(t, `{"ns":"products","keys":["1"]}`)
	st := s.l.wait(t, "the notification applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	if st.UnknownNamespaces != 1 {
		t.Fatalf("Stats = %+v; want one unknown namespace", st)
	}
	mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada L.", Category: 1})
	if out := log.String(); !strings.Contains(out, "not in Config.Namespaces") || !strings.Contains(out, "namespace=products") {
		t.Fatalf("the log does not warn of the namespace:\n%s", out)
	}
}

// A notification the node refuses (a key longer than its MaxKeyBytes) is
// counted, and answered by invalidating its namespace.
func TestRefusedNotification(t *testing.T) {
	s := newSetup(t, false, tier.NodeConfig{MaxKeyBytes: 4}, pgnotify.Config{})
	cached(t, s.pa, 1)
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	s.notify(t, `{"ns":"products","keys":["123456789"]}`)
	st := s.l.wait(t, "the notification applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	if st.Rejected != 1 || st.InvalidateErrors != 0 {
		t.Fatalf("Stats = %+v; want the notification applied as its namespace", st)
	}
	mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada L.", Category: 1})
}

// SkipInitialInvalidation leaves what was cached before the first LISTEN;
// by default, the first LISTEN invalidates it.
func TestInitialInvalidation(t *testing.T) {
	db := openDB(t)
	table := productsTable(t, db, ada)
	f := newFleet(t, tier.NodeConfig{})
	c := products(t, f.a, db, table, nil)
	cached(t, c, 1)

	skip := listen(t, pgnotify.Config{Node: f.a, Channel: unique(t, "c_"), Namespaces: []string{"products"}, SkipInitialInvalidation: true})
	if st := skip.Stats(); st.GapInvalidations != 0 {
		t.Fatalf("Stats = %+v; want no invalidation", st)
	}
	var ri tier.ReadInfo
	if _, err := c.Get(t.Context(), 1, tier.Info(&ri)); err != nil || ri.Source != tier.SourceL1 {
		t.Fatalf("Get(1) came from %v (%v); want L1", ri.Source, err)
	}

	def := listen(t, pgnotify.Config{Node: f.a, Channel: unique(t, "c_"), Namespaces: []string{"products"}})
	if st := def.Stats(); st.GapInvalidations != 1 {
		t.Fatalf("Stats = %+v; want one invalidation", st)
	}
	if _, err := c.Get(t.Context(), 1, tier.Info(&ri)); err != nil || ri.Source != tier.SourceFetch {
		t.Fatalf("Get(1) came from %v (%v); want the source", ri.Source, err)
	}
}

// While Redis is down, a notification applies on the Listener's node and
// is queued for the fleet (tier.ErrPending), counted as Pending, not as an
// error; once Redis is back, the other node (which dropped its L1 when its
// bus went down) serves the new row.
func TestRedisDown(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	cached(t, s.pa, 1)
	cached(t, s.pb, 1)
	s.f.srv.Kill()
	exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
	st := s.l.wait(t, "the UPDATE applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
	if st.Pending != 1 || st.InvalidateErrors != 0 {
		t.Fatalf("Stats = %+v; want the invalidation queued", st)
	}
	want := product{ID: 1, Name: "Ada L.", Category: 1}
	mustGet(t, s.pa, 1, want)
	s.f.srv.Restart()
	eventually(t, s.f.busB, s.pb, 1, "the new name, once Redis is back", is(want))
}

// A notification that arrives after the node closed is counted as an
// error, and the Listener goes on.
func TestNodeClosed(t *testing.T) {
	var log logs
	s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{Logger: log.logger()})
	if err := s.f.a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.notify(t, `{"ns":"products","keys":["1"]}`)
	s.notify(t, `{"ns":"products","keys":["2"]}`)
	st := s.l.wait(t, "the errors counted", func(st pgnotify.Stats) bool { return st.Received == 2 && st.InvalidateErrors >= 1 })
	if st.Applied != 0 {
		t.Fatalf("Stats = %+v; want nothing applied", st)
	}
	if !strings.Contains(log.String(), "invalidation failed") {
		t.Fatalf("the log does not report the failure:\n%s", log.String())
	}
}

// A database that does not answer is retried with backoff, each failure
// counted; Ready stays open, and Close returns at once, even in the middle
// of a long backoff.
func TestDatabaseDown(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	for _, backoff := range []time.Duration{time.Millisecond, time.Hour} {
		l := start(t, pgnotify.Config{
			ConnString: "postgres://postgres@127.0.0.1:1/test?sslmode=disable",
			Node:       f.a, Namespaces: []string{"products"},
			MinBackoff: backoff, MaxBackoff: backoff,
		})
		want := uint64(3)
		if backoff == time.Hour {
			want = 1
		}
		l.wait(t, "failed attempts", func(st pgnotify.Stats) bool { return st.ConnectErrors >= want })
		select {
		case <-l.Ready():
			t.Fatal("Ready without a database")
		default:
		}
		closed(t, l.Listener)
	}
}

// Close while Connect waits cancels it and returns; Close again returns
// too.
func TestCloseWhileConnecting(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	entered := make(chan struct{})
	var cause atomic.Value
	l := start(t, pgnotify.Config{
		Node: f.a, Namespaces: []string{"products"},
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			close(entered)
			<-ctx.Done()
			cause.Store(ctx.Err())
			return nil, ctx.Err()
		},
	})
	select {
	case <-entered:
	case <-time.After(guard):
		t.Fatal("Connect not called")
	}
	closed(t, l.Listener)
	if err, _ := cause.Load().(error); !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect's ctx ended with %v; want Canceled", err)
	}
	closed(t, l.Listener)
	if st := l.Stats(); st.ConnectErrors != 0 {
		t.Fatalf("Stats = %+v; a Close is no failed attempt", st)
	}
}

// Close while listening returns, and closes the connection.
func TestCloseWhileListening(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	var conn atomic.Pointer[pgx.Conn]
	l := listen(t, pgnotify.Config{
		Node: f.a, Namespaces: []string{"products"},
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			c, err := pgx.Connect(ctx, pgDSN)
			conn.Store(c)
			return c, err
		},
	})
	closed(t, l.Listener)
	if !conn.Load().IsClosed() {
		t.Fatal("the connection is open after Close")
	}
}

// A Connect that panics, or returns neither a connection nor an error,
// is a failed attempt; the next one listens.
func TestConnectMisbehaves(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	var n atomic.Int32
	l := listen(t, pgnotify.Config{
		Node: f.a, Namespaces: []string{"products"},
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			switch n.Add(1) {
			case 1:
				panic("connect panics")
			case 2:
				return nil, nil
			}
			return pgx.Connect(ctx, pgDSN)
		},
	})
	if st := l.Stats(); st.ConnectErrors != 2 || st.GapInvalidations != 1 {
		t.Fatalf("Stats = %+v; want two failed attempts, then listening", st)
	}
}

// A Connect, or a Logger's handler, that ends the Listener's goroutine
// (runtime.Goexit, as t.FailNow in it does) costs an attempt or a
// connection, not the Listener: a new goroutine takes over and listens,
// and a connection that had listened counts as lost, so that the next one
// invalidates the gap even with SkipInitialInvalidation.
func TestCallbackEndsTheListenersGoroutine(t *testing.T) {
	t.Run("Connect", func(t *testing.T) {
		f := newFleet(t, tier.NodeConfig{})
		var n atomic.Int32
		l := listen(t, pgnotify.Config{
			Node: f.a, Namespaces: []string{"products"},
			Connect: func(ctx context.Context) (*pgx.Conn, error) {
				if n.Add(1) == 1 {
					runtime.Goexit()
				}
				return pgx.Connect(ctx, pgDSN)
			},
		})
		if st := l.Stats(); st.ConnectErrors != 1 || st.GapInvalidations != 1 || st.Reconnects != 0 {
			t.Fatalf("Stats = %+v; want one failed attempt, then listening", st)
		}
		closed(t, l.Listener)
	})
	t.Run("Logger", func(t *testing.T) {
		s := newSetup(t, false, tier.NodeConfig{}, pgnotify.Config{
			Logger:                  slog.New(&exitOnce{}),
			SkipInitialInvalidation: true,
		})
		// The first connection listened, and its record of that ended the
		// goroutine: the next one counts as a reconnection, and
		// invalidates the gap.
		st := s.l.wait(t, "the reconnection's invalidation", func(st pgnotify.Stats) bool { return st.GapInvalidations == 1 })
		if st.Disconnects != 1 || st.Reconnects != 1 {
			t.Fatalf("Stats = %+v; want the first connection lost, a reconnection", st)
		}
		cached(t, s.pa, 1)
		exec(t, s.db, "UPDATE "+s.table+" SET name = 'Ada L.' WHERE id = 1")
		s.notify(t, `{"ns":"products","keys":["1"]}`)
		s.l.wait(t, "the notification applied", func(st pgnotify.Stats) bool { return st.Applied == 1 })
		mustGet(t, s.pa, 1, product{ID: 1, Name: "Ada L.", Category: 1})
		closed(t, s.l.Listener)
	})
}

// exitOnce is a slog.Handler that takes every level and ends the goroutine
// of the first record it is handed (runtime.Goexit).
type exitOnce struct{ done atomic.Bool }

func (*exitOnce) Enabled(context.Context, slog.Level) bool { return true }

func (h *exitOnce) Handle(context.Context, slog.Record) error {
	if h.done.CompareAndSwap(false, true) {
		runtime.Goexit()
	}
	return nil
}

func (h *exitOnce) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *exitOnce) WithGroup(string) slog.Handler      { return h }

// closed closes l, failing the test unless Close returns within guard.
func closed(t *testing.T, l *pgnotify.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- l.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(guard):
		t.Fatal("Close did not return")
	}
}

// New refuses a Config it cannot work with, saying which field.
func TestNewErrors(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	ok := pgnotify.Config{ConnString: pgDSN, Node: f.a, Namespaces: []string{"products"}}
	for _, tc := range []struct {
		name string
		edit func(*pgnotify.Config)
		says string
	}{
		{"no node", func(c *pgnotify.Config) { c.Node = nil }, "nil Node"},
		{"no namespaces", func(c *pgnotify.Config) { c.Namespaces = nil }, "no Namespaces"},
		{"empty namespace", func(c *pgnotify.Config) { c.Namespaces = []string{"a", ""} }, "Namespaces[1]"},
		{"bad group", func(c *pgnotify.Config) { c.Groups = []string{"\x00g"} }, "Groups[0]"},
		{"no database", func(c *pgnotify.Config) { c.ConnString = "" }, "neither ConnString nor Connect"},
		{"bad conn string", func(c *pgnotify.Config) { c.ConnString = "postgres://u:secret@host:port/db" }, "ConnString"},
		{"long channel", func(c *pgnotify.Config) { c.Channel = strings.Repeat("c", 64) }, "Channel"},
		{"NUL channel", func(c *pgnotify.Config) { c.Channel = "c\x00" }, "Channel"},
		{"negative backoff", func(c *pgnotify.Config) { c.MinBackoff = -1 }, "MinBackoff"},
		{"backoffs reversed", func(c *pgnotify.Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }, "above MaxBackoff"},
		{"negative ping", func(c *pgnotify.Config) { c.PingInterval = -1 }, "PingInterval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			l, err := pgnotify.New(cfg)
			if err == nil {
				_ = l.Close()
			}
			if !errors.Is(err, pgnotify.ErrConfig) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("New = %v; want an error wrapping ErrConfig saying %q", err, tc.says)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("New's error shows the password: %v", err)
			}
		})
	}
}

// A connection the server drops soon after its LISTEN (here, by
// idle_session_timeout, as a server with a short one would without the
// pings) is followed by a backoff, not by an immediate reconnection; one
// that listened for MaxBackoff or more is replaced at once.
func TestShortConnectionBacksOff(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	for _, tc := range []struct {
		name       string
		maxBackoff time.Duration
		min, max   time.Duration
	}{
		{"lost soon", time.Hour, 30 * time.Minute, time.Hour},
		{"lost after MaxBackoff", time.Millisecond, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t, pgnotify.Config{
				ConnString: pgDSN + "&idle_session_timeout=100",
				Node:       f.a, Namespaces: []string{"products"},
				MinBackoff: tc.maxBackoff, MaxBackoff: tc.maxBackoff,
				PingInterval: time.Hour,
			})
			select {
			case d := <-l.waits:
				if d < tc.min || d > tc.max {
					t.Fatalf("waited %v after the loss; want within [%v, %v]", d, tc.min, tc.max)
				}
			case <-time.After(guard):
				t.Fatalf("no attempt after the loss: %+v", l.Stats())
			}
			if st := l.Stats(); st.Disconnects != 1 {
				t.Fatalf("Stats = %+v; want one disconnection", st)
			}
			closed(t, l.Listener)
		})
	}
}

// The backoff doubles from MinBackoff to MaxBackoff, each wait drawn from
// the upper half of its step, and none after no failure.
func TestBackoff(t *testing.T) {
	f := newFleet(t, tier.NodeConfig{})
	l := start(t, pgnotify.Config{
		Node: f.a, Namespaces: []string{"products"},
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { <-ctx.Done(); return nil, ctx.Err() },
	})
	for _, tc := range []struct {
		failures int
		step     time.Duration
	}{
		{0, 0}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond},
		{6, 3200 * time.Millisecond}, {7, 5 * time.Second}, {64, 5 * time.Second}, {1 << 40, 5 * time.Second},
	} {
		for range 100 {
			if d := l.Backoff(tc.failures); d < tc.step/2 || d > tc.step {
				t.Fatalf("Backoff(%d) = %v; want within [%v, %v]", tc.failures, d, tc.step/2, tc.step)
			}
		}
	}
}

// A statement that writes many rows sends a notification per row; the
// Listener applies them all, in batches (one Invalidate call for the
// notifications that arrived while the previous call ran).
func TestBulkWrites(t *testing.T) {
	s := newSetup(t, true, tier.NodeConfig{}, pgnotify.Config{})
	const n = 1000
	before := s.f.a.Stats().Published
	exec(t, s.db, "INSERT INTO "+s.table+" (id, name, category_id) SELECT i, 'p' || i, i % 7 FROM generate_series(100, 99 + $1::int) AS i", n)
	s.l.wait(t, "the INSERT's notifications applied", func(st pgnotify.Stats) bool { return st.Applied == n })
	for _, id := range []int64{100, 500, 1099} {
		cached(t, s.pa, id)
		cached(t, s.pb, id)
	}
	exec(t, s.db, "UPDATE "+s.table+" SET name = name || '!' WHERE id >= 100")
	st := s.l.wait(t, "the UPDATE's notifications applied", func(st pgnotify.Stats) bool { return st.Applied == 2*n })
	if st.Received != 2*n || st.Malformed != 0 || st.InvalidateErrors != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	t.Logf("%d notifications applied with %d bus messages", 2*n, s.f.a.Stats().Published-before)
	for _, id := range []int64{100, 500, 1099} {
		want := product{ID: id, Name: "p" + strconv.FormatInt(id, 10) + "!", Category: id % 7}
		mustGet(t, s.pa, id, want)
		eventually(t, s.f.busB, s.pb, id, "the updated row", is(want))
	}
}
