package tier_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// tally is a Recorder that counts every event by its name and attributes,
// for tests that assert exact counts.
type tally struct {
	tier.NopRecorder
	mu     sync.Mutex
	counts map[string]int
	delays []time.Duration
}

func newTally() *tally { return &tally{counts: map[string]int{}} }

func (r *tally) add(n int, parts ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts[fmt.Sprint(parts...)] += n
}

// count returns the count of one event.
func (r *tally) count(parts ...any) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[fmt.Sprint(parts...)]
}

// matching returns the counts of the events whose names start with prefix.
func (r *tally) matching(prefix string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.counts {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

func (r *tally) Get(ns string, a tier.Answer, d time.Duration) {
	r.add(1, "get ", ns, " ", a)
}

func (r *tally) Fetch(ns string, o tier.FetchOutcome, keys int, d time.Duration) {
	r.add(1, "fetch ", ns, " ", o)
	r.add(keys, "fetched keys ", ns)
}

func (r *tally) Fill(ns string, res tier.FillResult) { r.add(1, "fill ", ns, " ", res) }

func (r *tally) Wait(ns string, w tier.WakeSource, d time.Duration) { r.add(1, "wait ", ns, " ", w) }

func (r *tally) Published(ns string, s tier.Scope, n int) { r.add(n, "published ", ns, " ", s) }

func (r *tally) Applied(ns string, s tier.Scope, n int, delay time.Duration) {
	r.add(n, "applied ", ns, " ", s)
	r.mu.Lock()
	r.delays = append(r.delays, delay)
	r.mu.Unlock()
}

func (r *tally) Lease(e tier.LeaseEvent) { r.add(1, "lease ", e) }

func (r *tally) Dropped(reason tier.DropReason) { r.add(1, "dropped ", reason) }

func (r *tally) Breaker(open bool) { r.add(1, "breaker open=", open) }

func (r *tally) Replayed(n int) { r.add(n, "replayed") }

func (r *tally) RedisError(ns, op string, kind tier.RedisErrorKind) {
	r.add(1, "redis error ", kind)
}

func (r *tally) Resource(name string, e tier.ResourceEvent, d time.Duration) {
	r.add(1, "resource ", name, " ", e)
}

// await waits until the count of an event reaches want.
func (r *tally) await(t *testing.T, want int, parts ...any) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for r.count(parts...) < want {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d of %q; have %v", want, fmt.Sprint(parts...), r.matching(""))
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by the guard
	}
}

// TestRecorderCountsAKnownWorkload proves the Recorder hears every event of
// a known workload exactly: 100 Gets of one key on a fresh node are 1 fetch,
// 1 fill and 99 L1 hits; another node's Get is an L2 hit; invalidations of
// each scope are published by one node and applied, with their delay, by
// the other; and Cache.Stats agrees.
func TestRecorderCountsAKnownWorkload(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v")
	ra, rb := newTally(), newTally()
	na, nb := f.node(tier.NodeConfig{Recorder: ra}, nil), f.node(tier.NodeConfig{Recorder: rb}, nil)
	ca, cb := cache(t, na, src), cache(t, nb, src)

	mustGet(t, ca, "k")
	tier.WaitL1(na)
	for range 99 {
		mustGet(t, ca, "k")
	}
	want := map[string]int{"get obj fetch": 1, "get obj l1": 99}
	if d := cmp.Diff(want, ra.matching("get ")); d != "" {
		t.Fatalf("node A's answers (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]int{"fetch obj success": 1}, ra.matching("fetch ")); d != "" {
		t.Fatalf("node A's fetches (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]int{"fill obj landed": 1}, ra.matching("fill ")); d != "" {
		t.Fatalf("node A's fills (-want +got):\n%s", d)
	}
	st := ca.Stats()
	wantStats := tier.Counts{Gets: 100, Misses: 1, L1Hits: 99, Fetches: 1, FillsLanded: 1}
	if d := cmp.Diff(wantStats, st); d != "" {
		t.Fatalf("node A's Cache.Stats (-want +got):\n%s", d)
	}
	if r := st.HitRatio(); r != 0.99 {
		t.Fatalf("HitRatio = %v, want 0.99", r)
	}

	mustGet(t, cb, "k")
	if d := cmp.Diff(map[string]int{"get obj l2": 1}, rb.matching("get ")); d != "" {
		t.Fatalf("node B's answers (-want +got):\n%s", d)
	}

	if err := ca.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if err := na.InvalidateGroup(context.Background(), "g1", "g2"); err != nil {
		t.Fatal(err)
	}
	if err := ca.InvalidateAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantPub := map[string]int{"published obj keys": 1, "published  groups": 2, "published obj namespace": 1}
	if d := cmp.Diff(wantPub, ra.matching("published ")); d != "" {
		t.Fatalf("node A published (-want +got):\n%s", d)
	}
	rb.await(t, 1, "applied obj namespace") // the last one A sent
	wantApplied := map[string]int{"applied obj keys": 1, "applied  groups": 2, "applied obj namespace": 1}
	if d := cmp.Diff(wantApplied, rb.matching("applied ")); d != "" {
		t.Fatalf("node B applied (-want +got):\n%s", d)
	}
	rb.mu.Lock()
	delays := append([]time.Duration(nil), rb.delays...)
	rb.mu.Unlock()
	if len(delays) != 3 {
		t.Fatalf("%d delays for 3 messages: %v", len(delays), delays)
	}
	for _, d := range delays {
		// Both nodes sampled Redis's clock at their first lease, before
		// NewNode returned; every message carries Redis's clock.
		if d < 0 || d > guard {
			t.Fatalf("publish-to-apply delays %v: want each measured, in [0, %v]", delays, guard)
		}
	}
	if ra.count("applied obj keys") != 0 {
		t.Fatalf("node A applied its own message: %v", ra.matching("applied "))
	}
	if ra.count("lease renewed") == 0 {
		t.Fatalf("no lease renewal recorded: %v", ra.matching(""))
	}
	if got := ca.Stats().Invalidations; got != 1 {
		t.Fatalf("Cache.Stats().Invalidations = %d, want 1", got)
	}
	if err := na.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ra.count("published  fleet"); got != 1 {
		t.Fatalf("a Flush published %d fleet invalidations, want 1", got)
	}
	rb.await(t, 1, "applied  fleet")
	if got := rb.count("dropped flush"); got != 1 {
		t.Fatalf("node B recorded %d flush drops, want 1", got)
	}
}

// TestRecorderFetchOutcomes proves each way a Fetch ends is recorded as its
// outcome, and that a Get's answer follows.
func TestRecorderFetchOutcomes(t *testing.T) {
	f := newFleet(t)
	rec := newTally()
	n := f.node(tier.NodeConfig{Recorder: rec}, nil)
	boom := errors.New("source down")
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: func(ctx context.Context, key string) (string, error) {
		switch key {
		case "missing":
			return "", fmt.Errorf("no row: %w", tier.ErrNotFound)
		case "failing":
			return "", boom
		case "panicking":
			panic("boom")
		case "slow":
			<-ctx.Done()
			return "", ctx.Err()
		}
		return "v", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"found", "missing", "failing", "panicking"} {
		_, _ = c.Get(context.Background(), key)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow Get: %v, want the deadline", err)
	}
	// The caller gave up; the load ends when the flight sees it has no
	// caller left and cancels the fetch.
	rec.await(t, 1, "fetch obj canceled")
	want := map[string]int{
		"fetch obj success": 1, "fetch obj not_found": 1, "fetch obj load_error": 1,
		"fetch obj panic": 1, "fetch obj canceled": 1,
	}
	if d := cmp.Diff(want, rec.matching("fetch ")); d != "" {
		t.Fatalf("fetch outcomes (-want +got):\n%s", d)
	}
	wantGets := map[string]int{"get obj fetch": 2, "get obj error": 3}
	if d := cmp.Diff(wantGets, rec.matching("get ")); d != "" {
		t.Fatalf("answers (-want +got):\n%s", d)
	}
	if st := c.Stats(); st.Fetches != 5 || st.FetchErrors != 3 || st.Errors != 3 || st.Misses != 2 {
		t.Fatalf("Cache.Stats = %+v; want 5 fetches, 3 failed, 3 errors, 2 misses", st)
	}
}

// TestRecorderSeesTheBreakerAndRedisErrors proves the breaker's opening
// and closing and the failed operations that open it reach the Recorder.
func TestRecorderSeesTheBreakerAndRedisErrors(t *testing.T) {
	f := newFleet(t)
	rec := newTally()
	cfg := faultCfg
	cfg.Recorder = rec
	n := f.node(cfg, nil)
	c := cache(t, n, newSource())
	f.srv.Kill()
	_, _ = c.Get(context.Background(), "k") // refused: the breaker opens at once
	rec.await(t, 1, "breaker open=true")
	if err := c.Invalidate(context.Background(), "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with Redis down = %v; want ErrPending", err)
	}
	if got := rec.count("redis error unavailable") + rec.count("redis error other") + rec.count("redis error timeout"); got == 0 {
		t.Fatalf("no Redis error recorded: %v", rec.matching(""))
	}
	f.srv.Restart()
	// The breaker closes when an operation probes Redis and succeeds.
	deadline := time.Now().Add(guard)
	for rec.count("breaker open=false") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the breaker did not close: %v", rec.matching(""))
		}
		_, _ = c.Get(context.Background(), "k")
		time.Sleep(5 * time.Millisecond) // polling a condition, bounded by the guard
	}
	if n.Stats().BreakerOpen {
		t.Fatalf("Stats.BreakerOpen after the breaker closed")
	}
	rec.await(t, 1, "replayed") // the queued invalidation
}

// exitOnClose is a Recorder whose Breaker ends its goroutine when told
// that the breaker closed (runtime.Goexit, as t.FailNow does).
type exitOnClose struct {
	tier.NopRecorder
	closed atomic.Int32
}

func (r *exitOnClose) Breaker(open bool) {
	if !open {
		r.closed.Add(1)
		runtime.Goexit()
	}
}

// TestBreakerRecorderThatEndsItsGoroutine proves that a Recorder whose
// Breaker ends its goroutine ends only that (R37): the Get whose Redis
// operation closed the breaker, and which the breaker tells of it from
// inside that operation, still returns, with the value, and the key is
// left filled, with no claim behind.
func TestBreakerRecorderThatEndsItsGoroutine(t *testing.T) {
	f := newFleet(t)
	rec := &exitOnClose{}
	cfg := faultCfg
	cfg.Recorder = rec
	n := f.node(cfg, nil)
	src := newSource()
	src.set("k", "v")
	c := cache(t, n, src)
	f.srv.Kill()
	_, _ = c.Get(context.Background(), "other") // refused: the breaker opens
	awaitStats(t, n, "the breaker to open", func(s tier.Stats) bool { return s.BreakerOpen })
	f.srv.Restart()
	deadline := time.Now().Add(guard)
	for rec.closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the breaker did not close")
		}
		returned := make(chan bool, 1)
		go func() {
			ok := false
			defer func() { returned <- ok }()
			v, err := c.Get(context.Background(), "k")
			ok = err == nil && v == "v"
		}()
		if !wait(t, returned, "a Get as Redis came back") {
			t.Fatalf("a Get as Redis came back ended other than with v (the breaker closed %d times)", rec.closed.Load())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, bounded by the guard
	}
	if got := mustGet(t, c, "k"); got != "v" {
		t.Fatalf("Get after the breaker closed = %q; want v", got)
	}
	keys := l2.KeysFor(tier.DefaultPrefix, ns, "k")
	if _, err := f.rdb.Get(context.Background(), keys.Value).Result(); err != nil {
		t.Fatalf("k's value in Redis: %v; want it filled", err)
	}
	if err := f.rdb.Get(context.Background(), keys.Flag).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("k's flag in Redis: %v; want none left", err)
	}
}

// panickingRecorder is a Recorder whose every Get panics.
type panickingRecorder struct{ tier.NopRecorder }

func (panickingRecorder) Get(string, tier.Answer, time.Duration) { panic("recorder bug") }

// TestRecorderPanicIsRecovered proves a Recorder that panics costs its
// events, never a Get: the panics are counted.
func TestRecorderPanicIsRecovered(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{Recorder: panickingRecorder{}}, nil)
	src := newSource()
	src.set("k", "v")
	c := cache(t, n, src)
	for range 3 {
		if got := mustGet(t, c, "k"); got != "v" {
			t.Fatalf("Get = %q", got)
		}
	}
	if p := n.Stats().RecorderPanics; p != 3 {
		t.Fatalf("RecorderPanics = %d, want 3", p)
	}
}

// panickingHandler is a slog.Handler that panics on every record.
type panickingHandler struct{ slog.Handler }

func (panickingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (panickingHandler) Handle(context.Context, slog.Record) error { panic("handler bug") }

// TestLoggerPanicIsRecovered proves that a Logger whose handler panics
// costs its records, never the goroutine that logs: here a Get whose Fetch
// panics, which logs the panic as it recovers it, and a load that its
// caller runs, where a panic that got past would reach the caller (and in
// the background, crash the process). The panics are counted.
func TestLoggerPanicIsRecovered(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{Logger: slog.New(panickingHandler{})}, nil)
	c := newCache(t, n, tier.Config[string, string]{Fetch: func(context.Context, string) (string, error) { panic("fetch bug") }})
	for range 2 {
		var err error
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("Get panicked: %v", r)
				}
			}()
			_, err = c.Get(context.Background(), "k")
		}()
		if !errors.Is(err, tier.ErrFetchPanic) {
			t.Fatalf("Get = %v; want ErrFetchPanic", err)
		}
	}
	if p := n.Stats().RecorderPanics; p < 2 {
		t.Fatalf("RecorderPanics = %d, want the logger's 2 or more", p)
	}
}

// exitOnFlush is a Recorder whose Dropped, told of a fleet flush, calls
// check and then ends its goroutine (runtime.Goexit), once; renewed
// receives each renewal of the lease after the drop that follows (the
// subscription's, taken over by a new goroutine).
type exitOnFlush struct {
	tier.NopRecorder
	once    sync.Once
	check   func()
	exited  atomic.Bool
	dropped atomic.Bool // a disconnect since exited
	renewed chan struct{}
}

func (r *exitOnFlush) Dropped(reason tier.DropReason) {
	switch {
	case reason == tier.DropFlush:
		r.once.Do(func() {
			r.check()
			r.exited.Store(true)
			runtime.Goexit()
		})
	case reason == tier.DropDisconnect && r.exited.Load():
		r.dropped.Store(true)
	}
}

func (r *exitOnFlush) Lease(e tier.LeaseEvent) {
	if e == tier.LeaseRenewed && r.dropped.Load() {
		select {
		case r.renewed <- struct{}{}:
		default:
		}
	}
}

// TestDroppedThatEndsItsGoroutine proves that the Recorder hears of a
// drop once it has taken effect, so that one that ends the bus's goroutine
// there (runtime.Goexit) cannot leave L1 serving what the drop was for:
// node a hears node b's fleet flush, and when a's Recorder hears of it, a
// Get of the key a held no longer answers from L1. A new goroutine then
// takes a's subscription over: its lease is renewed, and L1 serves again
// (R37).
func TestDroppedThatEndsItsGoroutine(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	var c atomic.Pointer[tier.Cache[string, string]]
	seen := make(chan tier.Source, 1)
	rec := &exitOnFlush{renewed: make(chan struct{}, 1), check: func() {
		var ri tier.ReadInfo
		if _, err := c.Load().Get(context.Background(), "k", tier.Info(&ri)); err != nil {
			t.Errorf("Get in Dropped: %v", err)
		}
		seen <- ri.Source
	}}
	a := f.node(tier.NodeConfig{Recorder: rec}, nil)
	b := f.node(tier.NodeConfig{}, nil)
	c.Store(cache(t, a, src))
	warm(t, a, c.Load(), "k")
	if err := b.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	select {
	case s := <-seen:
		if s == tier.SourceL1 {
			t.Fatalf("when the Recorder heard of the flush, k still came from L1")
		}
	case <-time.After(guard):
		t.Fatal("a's Recorder did not hear of the flush")
	}
	select {
	case <-rec.renewed:
	case <-time.After(guard):
		t.Fatal("a's lease was not renewed after its bus goroutine ended")
	}
	warm(t, a, c.Load(), "k")
}

// panickingTracer is a Tracer all of whose methods panic.
type panickingTracer struct{}

func (panickingTracer) StartGet(context.Context, string, int) (context.Context, func(tier.Answer, error)) {
	panic("tracer bug")
}

func (panickingTracer) StartFetch(context.Context, string, int) (context.Context, tier.FetchSpan) {
	panic("tracer bug")
}

// TestTracerPanicIsRecovered proves a Tracer that panics costs its spans,
// never a Get: the panics are counted.
func TestTracerPanicIsRecovered(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{Tracer: panickingTracer{}}, nil)
	src := newSource()
	src.set("k", "v")
	c := cache(t, n, src)
	if got := mustGet(t, c, "k"); got != "v" {
		t.Fatalf("Get = %q", got)
	}
	if p := n.Stats().RecorderPanics; p != 2 {
		t.Fatalf("RecorderPanics = %d, want 2 (the Get's span and the fetch's)", p)
	}
}

// spans is a Tracer that keeps what it was told.
type spans struct {
	mu      sync.Mutex
	gets    []string // namespace and answer of each ended Get span
	fetches []*fetchSpan
}

type spanKey struct{}

type fetchSpan struct {
	parent  any // the span in the ctx the fetch began in
	mu      sync.Mutex
	waiters []any
	ended   string
}

func (s *spans) StartGet(ctx context.Context, ns string, keys int) (context.Context, func(tier.Answer, error)) {
	id := new(int)
	return context.WithValue(ctx, spanKey{}, id), func(a tier.Answer, err error) {
		s.mu.Lock()
		s.gets = append(s.gets, fmt.Sprint(ns, " ", a))
		s.mu.Unlock()
	}
}

func (s *spans) StartFetch(ctx context.Context, ns string, keys int) (context.Context, tier.FetchSpan) {
	fs := &fetchSpan{parent: ctx.Value(spanKey{})}
	s.mu.Lock()
	s.fetches = append(s.fetches, fs)
	s.mu.Unlock()
	return ctx, fs
}

func (f *fetchSpan) Waiter(ctx context.Context) {
	f.mu.Lock()
	f.waiters = append(f.waiters, ctx.Value(spanKey{}))
	f.mu.Unlock()
}

func (f *fetchSpan) End(o tier.FetchOutcome, err error) {
	f.mu.Lock()
	f.ended = o.String()
	f.mu.Unlock()
}

// TestTracerLinksEveryWaiterToTheFetch proves the span of a fetch that ten
// Gets share is a child of the first Get's span and linked to the nine
// others, whether they joined before the fetch began or while it ran; and
// that L1 hits make no span.
func TestTracerLinksEveryWaiterToTheFetch(t *testing.T) {
	f := newFleet(t)
	tr := &spans{}
	joined, join := events[string]()
	hk := &hooks.Points{Flight: func(key string, leader bool) {
		if !leader {
			join(key)
		}
	}}
	n := f.node(tier.NodeConfig{Tracer: tr}, hk)
	src := newSource()
	src.set("k", "v")
	src.gated.Store(true)
	c := cache(t, n, src)
	first := goGet(context.Background(), c, "k")
	held := src.next(t)
	var rest []<-chan result
	for range 9 {
		rest = append(rest, goGet(context.Background(), c, "k"))
		wait(t, joined, "a Get to join the flight")
	}
	close(held.release)
	for _, ch := range append(rest, first) {
		if r := await(t, ch); r.err != nil || r.v != "v" {
			t.Fatalf("Get = %q, %v", r.v, r.err)
		}
	}
	tier.WaitL1(n)
	mustGet(t, c, "k") // an L1 hit: no span

	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.fetches) != 1 {
		t.Fatalf("%d fetch spans, want 1", len(tr.fetches))
	}
	fs := tr.fetches[0]
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.parent == nil || fs.ended != "success" {
		t.Fatalf("fetch span: parent %v, ended %q; want a Get's span as parent, success", fs.parent, fs.ended)
	}
	seen := map[any]bool{fs.parent: true}
	for _, w := range fs.waiters {
		if w == nil || seen[w] {
			t.Fatalf("waiters %v (parent %v): want 9 distinct Get spans besides the parent", fs.waiters, fs.parent)
		}
		seen[w] = true
	}
	if len(fs.waiters) != 9 {
		t.Fatalf("%d waiters linked, want 9", len(fs.waiters))
	}
	sort.Strings(tr.gets)
	if len(tr.gets) != 10 || tr.gets[0] != "obj fetch" || tr.gets[9] != "obj fetch" {
		t.Fatalf("Get spans %v; want 10, each answered by the fetch", tr.gets)
	}
}
