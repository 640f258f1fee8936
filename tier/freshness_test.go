package tier_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// Freshness tests move time on two clocks, never by sleeping: Redis's, by
// setting a value's remaining lifetime with PEXPIRE (every freshness
// decision about L2 is made from it), and the node's, through the Now hook
// (for entries already in L1).

// clock is a node clock a test moves by hand.
type clock struct{ now atomic.Int64 }

func (c *clock) read() time.Duration     { return time.Duration(c.now.Load()) }
func (c *clock) advance(d time.Duration) { c.now.Add(int64(d)) }

// draws is a Rand hook that returns the value the test last set, kept as
// a multiple of 2^-53.
type draws struct{ v atomic.Uint64 }

func (d *draws) set(f float64) { d.v.Store(uint64(int64(f * (1 << 53)))) }
func (d *draws) read() float64 { return float64(d.v.Load()) / (1 << 53) }

// pexpire sets the remaining Redis lifetime of key's value.
func (f *fleet) pexpire(key string, d time.Duration) {
	f.t.Helper()
	k := l2.KeysFor(tier.DefaultPrefix, ns, key)
	if err := f.rdb.PExpire(context.Background(), k.Value, d).Err(); err != nil {
		f.t.Fatal(err)
	}
}

// pttl returns the remaining Redis lifetime of a key of key's entry.
func (f *fleet) pttl(name string) time.Duration {
	f.t.Helper()
	d, err := f.rdb.PTTL(context.Background(), name).Result()
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// awaitStored waits until Redis holds want for key.
func (f *fleet) awaitStored(key, want string) {
	f.t.Helper()
	deadline := time.Now().Add(guard)
	for f.stored(key) != want {
		if time.Now().After(deadline) {
			f.t.Fatalf("Redis never held %q for %q (holds %q)", want, key, f.stored(key))
		}
		time.Sleep(time.Millisecond)
	}
}

// awaitGet waits until a Get of key on c returns want.
func awaitGet(t *testing.T, c *tier.Cache[string, string], key, want string) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		v, err := c.Get(context.Background(), key)
		if err == nil && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get(%q) never returned %q (last %q, %v)", key, want, v, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func newCache(t *testing.T, n *tier.Node, cfg tier.Config[string, string]) *tier.Cache[string, string] {
	t.Helper()
	if cfg.Namespace == "" {
		cfg.Namespace = ns
	}
	c, err := tier.New(n, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func getInfo(t *testing.T, c *tier.Cache[string, string], key string, opts ...tier.GetOption) (string, tier.ReadInfo, error) {
	t.Helper()
	var ri tier.ReadInfo
	v, err := c.Get(context.Background(), key, append(opts, tier.Info(&ri))...)
	return v, ri, err
}

// R34 from L2: a value in its stale window is served at once, as stale, to
// every reader in the fleet, while exactly one fetch refreshes it in the
// background under a claim; then everyone reads the new value fresh.
func TestRace_R34_StaleWhileRevalidateFromL2(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, FreshFor: 30 * time.Minute, L1TTL: -1}
	na, nb, nc := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b, c := newCache(t, na, cfg), newCache(t, nb, cfg), newCache(t, nc, cfg)
	mustGet(t, a, "k")
	src.set("k", "v2") // the source moved on without telling the cache
	f.pexpire("k", 20*time.Minute)
	src.gated.Store(true)

	v, ri, err := getInfo(t, b, "k")
	if err != nil || v != "v1" || !ri.Stale || ri.Source != tier.SourceL2 {
		t.Fatalf("B's Get in the stale window = %q, %+v, %v; want v1, stale, from L2, at once", v, ri, err)
	}
	held := src.next(t) // B's background refresh
	if held.val != "v2" {
		t.Fatalf("refresh read %q", held.val)
	}
	for range 20 {
		if v, ri, err := getInfo(t, c, "k"); err != nil || v != "v1" || !ri.Stale {
			t.Fatalf("C's Get during the refresh = %q, %+v, %v; want v1, stale", v, ri, err)
		}
	}
	if n := src.reads.Load(); n != 2 {
		t.Fatalf("source reads = %d; want 2 (the fill and one refresh)", n)
	}
	close(held.release)
	f.awaitStored("k", "v2")
	src.gated.Store(false)
	if v, ri, err := getInfo(t, c, "k"); err != nil || v != "v2" || ri.Stale {
		t.Fatalf("after the refresh = %q, %+v, %v; want v2, fresh", v, ri, err)
	}
	if st := nc.Stats(); st.Caches.StaleServed != 20 || st.Caches.Fetches != 0 {
		t.Fatalf("C's stats: %d stale served, %d fetches; want 20, 0", st.Caches.StaleServed, st.Caches.Fetches)
	}
	awaitStats(t, nb, "B's refresh to land", func(st tier.Stats) bool { return st.Caches.FillsLanded == 1 })
	if st := nb.Stats(); st.Caches.Refreshes != 1 || st.Caches.FillsLanded != 1 || st.Caches.StaleServed != 1 {
		t.Fatalf("B's stats: %+v", st)
	}
}

// staleInL1 makes k stale in c's L1 on n (FreshFor 10 minutes, TTL an
// hour): it fills v1 there and checks that it is served fresh, then sets
// the source to v2, moves n's clock past FreshFor and Redis's lifetime of
// k into the stale window.
func staleInL1(t *testing.T, f *fleet, n *tier.Node, c *tier.Cache[string, string], src *source, clk *clock) {
	t.Helper()
	mustGet(t, c, "k")
	tier.WaitL1(n)
	if _, ri, _ := getInfo(t, c, "k"); ri.Source != tier.SourceL1 || ri.Stale {
		t.Fatalf("second Get: %+v; want a fresh L1 hit", ri)
	}
	src.set("k", "v2")
	clk.advance(11 * time.Minute)  // n's clock: past FreshFor
	f.pexpire("k", 45*time.Minute) // Redis's: in the stale window
}

// clockedNode starts a fleet with one node whose clock the test moves, and
// a source that holds k = v1: the set-up of the stale L1 tests.
func clockedNode(t *testing.T) (*fleet, *source, *clock, *tier.Node) {
	t.Helper()
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	clk := &clock{}
	return f, src, clk, f.node(tier.NodeConfig{}, &hooks.Points{Now: clk.read})
}

// R34 from L1: an L1 entry past its freshness is served as stale from L1,
// and one background refresh (however many hits) replaces it.
func TestRace_R34_StaleWhileRevalidateFromL1(t *testing.T) {
	f, src, clk, n := clockedNode(t)
	c := newCache(t, n, tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, FreshFor: 10 * time.Minute, L1TTL: time.Hour})
	staleInL1(t, f, n, c, src, clk)
	src.gated.Store(true)
	for range 100 {
		v, ri, err := getInfo(t, c, "k")
		if err != nil || v != "v1" || ri.Source != tier.SourceL1 || !ri.Stale {
			t.Fatalf("stale L1 hit = %q, %+v, %v; want v1, stale, from L1", v, ri, err)
		}
	}
	held := src.next(t)
	close(held.release)
	src.gated.Store(false)
	awaitGet(t, c, "k", "v2")
	if reads := src.reads.Load(); reads != 2 {
		t.Fatalf("source reads = %d; want 2: one refresh for 100 stale hits", reads)
	}
	if st := n.Stats(); st.Caches.Refreshes != 1 || st.Caches.StaleServed < 100 {
		t.Fatalf("stats: %d refreshes, %d stale served", st.Caches.Refreshes, st.Caches.StaleServed)
	}
}

// TestRefreshKeyThatEndsItsGoroutine proves that a Key that ends the
// goroutine (runtime.Goexit) as a stale L1 hit starts its refresh does not
// keep the entry from being refreshed: the next stale hit starts the
// refresh, which brings the new value (R37).
func TestRefreshKeyThatEndsItsGoroutine(t *testing.T) {
	f, src, clk, n := clockedNode(t)
	var calls, exitAt atomic.Int64 // Key's calls; the one that ends its goroutine
	c := newCache(t, n, tier.Config[string, string]{
		Fetch: src.fetch, TTL: time.Hour, FreshFor: 10 * time.Minute, L1TTL: time.Hour,
		Key: func(k string) string {
			if calls.Add(1) == exitAt.Load() {
				runtime.Goexit()
			}
			return k
		},
	})
	staleInL1(t, f, n, c, src, clk)
	// A stale hit calls Key for the L1 lookup, then for the refresh.
	exitAt.Store(calls.Load() + 2)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		_, _ = c.Get(context.Background(), "k")
	}()
	wait(t, ended, "the Get whose Key ended its goroutine")
	if calls.Load() != exitAt.Load() {
		t.Fatalf("Key was called %d times, want the refresh's call to end the goroutine (call %d)", calls.Load(), exitAt.Load())
	}
	src.gated.Store(true)
	if v, ri, err := getInfo(t, c, "k"); err != nil || v != "v1" || !ri.Stale {
		t.Fatalf("stale hit = %q, %+v, %v; want v1, stale", v, ri, err)
	}
	held := src.next(t) // the refresh that the first stale hit could not start
	close(held.release)
	src.gated.Store(false)
	awaitGet(t, c, "k", "v2")
}

// R34: a refresh is fenced like any fill: an invalidation while it fetches
// refuses it, and readers after the invalidation get the new value, never
// the stale one.
func TestRace_R34_InvalidateDuringRefresh(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, FreshFor: 30 * time.Minute, L1TTL: -1}
	na, nw := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, w := newCache(t, na, cfg), newCache(t, nw, cfg)
	mustGet(t, a, "k")
	f.pexpire("k", 20*time.Minute)
	src.gated.Store(true)
	if v, _, _ := getInfo(t, a, "k"); v != "v1" {
		t.Fatalf("stale read = %q", v)
	}
	held := src.next(t) // the refresh read v1
	src.set("k", "v2")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	src.gated.Store(false)
	if v, ri, err := getInfo(t, w, "k"); err != nil || v != "v2" || ri.Stale {
		t.Fatalf("read after the invalidation = %q, %+v, %v; want v2", v, ri, err)
	}
}

// failing is a source whose fetches fail while its switch is on.
type failing struct {
	*source
	fail  atomic.Bool
	calls atomic.Int64
}

var errSourceDown = errors.New("source down")

func (s *failing) fetch(ctx context.Context, key string) (string, error) {
	s.calls.Add(1)
	if s.fail.Load() {
		return "", errSourceDown
	}
	return s.source.fetch(ctx, key)
}

// R34 fail-safe: past its TTL but within MaxStale, a value whose refresh
// fails is served with ErrStale (wrapping the cause), and the key is marked
// failing so that the rest of the fleet serves it too, without calling the
// source, until the mark goes (here: an invalidation).
func TestRace_R34_FailSafe(t *testing.T) {
	f := newFleet(t)
	src := &failing{source: newSource()}
	src.set("k", "v1")
	cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, MaxStale: time.Hour, FailSafeThrottle: time.Hour, L1TTL: -1}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := newCache(t, na, cfg), newCache(t, nb, cfg)
	mustGet(t, a, "k")
	if left := f.pttl(l2.KeysFor(tier.DefaultPrefix, ns, "k").Value); left <= time.Hour {
		t.Fatalf("value kept %v in Redis; want TTL+MaxStale", left)
	}
	f.pexpire("k", 30*time.Minute) // past its TTL, within MaxStale
	src.fail.Store(true)

	v, ri, err := getInfo(t, a, "k")
	if v != "v1" || !errors.Is(err, tier.ErrStale) || !errors.Is(err, errSourceDown) || !ri.Stale {
		t.Fatalf("Get with the source down = %q, %+v, %v; want v1 with ErrStale wrapping the cause", v, ri, err)
	}
	calls := src.calls.Load()
	for range 10 {
		v, ri, err := getInfo(t, b, "k")
		if v != "v1" || !errors.Is(err, tier.ErrStale) || !ri.Stale {
			t.Fatalf("B's Get while throttled = %q, %+v, %v; want v1 with ErrStale", v, ri, err)
		}
	}
	if got := src.calls.Load(); got != calls {
		t.Fatalf("the source was called %d more times while the key was marked failing", got-calls)
	}
	if st := na.Stats(); st.Caches.FailSafe != 1 {
		t.Fatalf("A's FailSafe = %d; want 1", st.Caches.FailSafe)
	}
	// A write clears the mark: the next read goes to the source.
	src.fail.Store(false)
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if v, ri, err := getInfo(t, b, "k"); err != nil || v != "v2" || ri.Stale {
		t.Fatalf("after the write = %q, %+v, %v; want v2, fresh", v, ri, err)
	}
}

// Fail-safe covers a fetch that outlasts FetchTimeout, and a value past
// TTL+MaxStale is gone: a failing fetch then returns its error.
func TestFailSafeTimeoutAndExpiry(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, MaxStale: time.Hour, FetchTimeout: 20 * time.Millisecond, L1TTL: -1}
	c := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
	mustGet(t, c, "k")
	f.pexpire("k", 30*time.Minute)
	src.gated.Store(true) // held until its context ends
	v, ri, err := getInfo(t, c, "k")
	if v != "v1" || !errors.Is(err, tier.ErrStale) || !errors.Is(err, context.DeadlineExceeded) || !ri.Stale {
		t.Fatalf("Get with a hung source = %q, %+v, %v; want v1, ErrStale wrapping DeadlineExceeded", v, ri, err)
	}
	<-src.calls

	k := l2.KeysFor(tier.DefaultPrefix, ns, "k")
	if err := f.rdb.Del(context.Background(), k.Value, k.Meta, k.Flag).Err(); err != nil {
		t.Fatal(err) // TTL+MaxStale has passed
	}
	src.gated.Store(false)
	src.set("k", "")
	delete(src.data, "k")
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, tier.ErrNotFound) || errors.Is(err, tier.ErrStale) {
		t.Fatalf("Get with nothing kept = %v; want the source's error", err)
	}
}

// R10: every loser policy answers while the claimant fetches, and leaves L2
// with the claimant's value only.
func TestRace_R10_LoserPolicies(t *testing.T) {
	for _, p := range []tier.LoserPolicy{tier.LoserFetch, tier.LoserServeStale} {
		t.Run(p.String(), func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, MaxStale: time.Hour, L1TTL: -1, Losers: p}
			na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
			a, b := newCache(t, na, cfg), newCache(t, nb, cfg)
			mustGet(t, a, "k")
			f.pexpire("k", 30*time.Minute) // expired, kept for fail-safe
			src.set("k", "v2")
			src.gated.Store(true)
			got := goGet(context.Background(), a, "k")
			held := src.next(t) // A claimed

			var ri tier.ReadInfo
			switch p {
			case tier.LoserFetch:
				gotB := make(chan result, 1)
				go func() {
					v, err := b.Get(context.Background(), "k", tier.Info(&ri))
					gotB <- result{v, err}
				}()
				heldB := src.next(t) // B fetches too, without waiting for A
				close(heldB.release)
				if r := await(t, gotB); r.err != nil || r.v != "v2" || ri.Source != tier.SourceUncached {
					t.Fatalf("loser = %q, %v, %+v; want v2 fetched uncached", r.v, r.err, ri)
				}
			case tier.LoserServeStale:
				v, err := b.Get(context.Background(), "k", tier.Info(&ri))
				if v != "v1" || !errors.Is(err, tier.ErrStale) || !ri.Stale {
					t.Fatalf("loser = %q, %v, %+v; want v1 with ErrStale", v, err, ri)
				}
			}
			if s := f.stored("k"); s != "v1" {
				t.Fatalf("L2 = %q while A fetches; a loser filled it", s)
			}
			close(held.release)
			if r := await(t, got); r.err != nil || r.v != "v2" {
				t.Fatalf("claimant = %q, %v", r.v, r.err)
			}
			if s := f.stored("k"); s != "v2" {
				t.Fatalf("L2 = %q; want the claimant's v2", s)
			}
			if st := nb.Stats(); st.Caches.FillsLanded != 0 {
				t.Fatalf("a loser filled L2: %+v", st)
			}
		})
	}
}

// R11: "not found" is cached in both tiers for NotFoundTTL, so the source
// is asked once; an insert (Invalidate or Set) clears it like any write.
func TestRace_R11_NegativeCaching(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	cfg := tier.Config[string, string]{Fetch: src.fetch, NotFoundTTL: time.Minute}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := newCache(t, na, cfg), newCache(t, nb, cfg)
	for _, key := range []string{"x", "y"} {
		if _, err := a.Get(context.Background(), key); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("Get(%q) = %v; want ErrNotFound", key, err)
		}
	}
	tier.WaitL1(na)
	if _, ri, err := getInfo(t, a, "x"); !errors.Is(err, tier.ErrNotFound) || !ri.Negative || ri.Source != tier.SourceL1 {
		t.Fatalf("A again = %v, %+v; want a cached not-found from L1", err, ri)
	}
	if _, ri, err := getInfo(t, b, "x"); !errors.Is(err, tier.ErrNotFound) || !ri.Negative || ri.Source != tier.SourceL2 {
		t.Fatalf("B = %v, %+v; want a cached not-found from L2", err, ri)
	}
	if n := src.reads.Load(); n != 2 {
		t.Fatalf("source reads = %d; want 2 (one per key)", n)
	}
	if left := f.pttl(l2.KeysFor(tier.DefaultPrefix, ns, "x").Value); left <= 0 || left > time.Minute {
		t.Fatalf("negative entry lives %v; want at most NotFoundTTL", left)
	}
	// Inserts: one through Invalidate, one through Set.
	src.set("x", "vx")
	if err := a.Invalidate(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	src.set("y", "vy")
	if err := a.Set(context.Background(), "y", "vy"); err != nil {
		t.Fatal(err)
	}
	fresh := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
	for _, c := range []*tier.Cache[string, string]{a, fresh} {
		if v := mustGet(t, c, "x"); v != "vx" {
			t.Fatalf("x after insert = %q", v)
		}
		if v := mustGet(t, c, "y"); v != "vy" {
			t.Fatalf("y after insert = %q", v)
		}
	}
	if st := na.Stats(); st.Caches.NegativeHits != 1 {
		t.Fatalf("A's NegativeHits = %d; want 1", st.Caches.NegativeHits)
	}
}

// TTLJitter shortens each value's lifetime by its draw times TTLJitter
// times FreshFor.
func TestTTLJitter(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	var d draws
	n := f.node(tier.NodeConfig{}, &hooks.Points{Rand: d.read})
	c := newCache(t, n, tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, TTLJitter: 0.5})
	for i, u := range []float64{0, 0.5, 0.999} {
		key := string(rune('a' + i))
		src.set(key, "v")
		d.set(u)
		mustGet(t, c, key)
		want := time.Hour - time.Duration(u*0.5*float64(time.Hour))
		got := f.pttl(l2.KeysFor(tier.DefaultPrefix, ns, key).Value)
		if got > want || got < want-time.Minute {
			t.Errorf("draw %v: lifetime %v; want about %v", u, got, want)
		}
	}
	d.set(0.5)
	if err := c.Set(context.Background(), "s", "v"); err != nil {
		t.Fatal(err)
	}
	if got := f.pttl(l2.KeysFor(tier.DefaultPrefix, ns, "s").Value); got > 45*time.Minute || got < 44*time.Minute {
		t.Errorf("Set with draw 0.5: lifetime %v; want about 45m", got)
	}
}

// Bypass reads the source and touches neither tier; Refresh fetches even a
// fresh value, as a fill, and readers get the new one.
func TestBypassAndRefresh(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	if v, ri, err := getInfo(t, c, "k", tier.Bypass()); err != nil || v != "v1" || ri.Source != tier.SourceUncached {
		t.Fatalf("Bypass = %q, %+v, %v", v, ri, err)
	}
	if s := f.stored("k"); s != "" {
		t.Fatalf("Bypass filled L2 with %q", s)
	}
	mustGet(t, c, "k")
	src.set("k", "v2")
	if v, ri, err := getInfo(t, c, "k", tier.Bypass()); err != nil || v != "v2" || ri.Source != tier.SourceUncached {
		t.Fatalf("Bypass = %q, %+v, %v; want the source's v2", v, ri, err)
	}
	if v := mustGet(t, c, "k"); v != "v1" {
		t.Fatalf("after Bypass the cache holds %q; want v1 untouched", v)
	}
	if v, ri, err := getInfo(t, c, "k", tier.Refresh()); err != nil || v != "v2" || ri.Source != tier.SourceFetch {
		t.Fatalf("Refresh = %q, %+v, %v; want v2 fetched", v, ri, err)
	}
	if s := f.stored("k"); s != "v2" {
		t.Fatalf("after Refresh L2 = %q", s)
	}
	tier.WaitL1(n)
	if v, ri, _ := getInfo(t, c, "k"); v != "v2" || ri.Source != tier.SourceL1 {
		t.Fatalf("after Refresh = %q from %v; want v2 from L1", v, ri.Source)
	}
	if _, err := c.Get(context.Background(), "", tier.Bypass()); !errors.Is(err, tier.ErrEmptyKey) {
		t.Fatalf("Bypass of an empty key = %v; want ErrEmptyKey", err)
	}
}

// R35: with early refresh, a fresh hit whose draw says so refreshes in the
// background as a claimed fill; a draw of 0 never does; and an invalidation
// during the refresh refuses it.
func TestRace_R35_EarlyRefresh(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	var d draws
	n := f.node(tier.NodeConfig{}, &hooks.Points{Rand: d.read})
	nw := f.node(tier.NodeConfig{}, nil)
	// A huge β makes any measured fetch time refresh on a draw near 1.
	cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, L1TTL: time.Hour, EarlyRefresh: 1e12}
	c, w := newCache(t, n, cfg), newCache(t, nw, cfg)
	mustGet(t, c, "k")
	tier.WaitL1(n)
	for range 50 {
		if _, ri, _ := getInfo(t, c, "k"); ri.Source != tier.SourceL1 {
			t.Fatalf("hit from %v", ri.Source)
		}
	}
	if reads := src.reads.Load(); reads != 1 {
		t.Fatalf("draw 0: %d source reads; want 1", reads)
	}

	src.set("k", "v2")
	src.gated.Store(true)
	d.set(1 - 1.0/(1<<40))
	if v, ri, _ := getInfo(t, c, "k"); v != "v1" || ri.Stale {
		t.Fatalf("the drawing hit = %q, %+v; want v1, fresh", v, ri)
	}
	d.set(0)
	held := src.next(t)
	src.set("k", "v3")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	src.gated.Store(false)
	awaitGet(t, c, "k", "v3")
	awaitStats(t, n, "the refused refresh", func(st tier.Stats) bool { return st.Caches.FillsRefused == 1 })
	if st := n.Stats(); st.Caches.Refreshes != 1 || st.Caches.FillsRefused != 1 {
		t.Fatalf("refreshes %d, refused fills %d; want 1, 1: %+v", st.Caches.Refreshes, st.Caches.FillsRefused, st)
	}

	// Uninterrupted, the early refresh lands and L1 serves the new value.
	src.set("k", "v4")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	awaitGet(t, c, "k", "v4")
	tier.WaitL1(n)
	src.set("k", "v5")
	d.set(1 - 1.0/(1<<40))
	mustGet(t, c, "k")
	d.set(0)
	f.awaitStored("k", "v5")
}

// OnHit and OnMiss see every Get, with its tier.
func TestHitMissHooks(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v")
	var hits [4]atomic.Int64
	var misses atomic.Int64
	cfg := tier.Config[string, string]{
		Fetch:  src.fetch,
		OnHit:  func(_ string, s tier.Source) { hits[s].Add(1) },
		OnMiss: func(string) { misses.Add(1) },
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := newCache(t, na, cfg), newCache(t, nb, cfg)
	mustGet(t, a, "k")
	tier.WaitL1(na)
	mustGet(t, a, "k")
	mustGet(t, b, "k")
	if h1, h2, m := hits[tier.SourceL1].Load(), hits[tier.SourceL2].Load(), misses.Load(); h1 != 1 || h2 != 1 || m != 1 {
		t.Fatalf("hooks saw %d L1 hits, %d L2 hits, %d misses; want 1, 1, 1", h1, h2, m)
	}
}

// Freshness settings are checked.
func TestFreshnessConfigErrors(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	fetch := newSource().fetch
	for name, cfg := range map[string]tier.Config[string, string]{
		"FreshFor over TTL":   {TTL: time.Minute, FreshFor: time.Hour},
		"negative FreshFor":   {FreshFor: -1},
		"negative MaxStale":   {MaxStale: -1},
		"negative timeout":    {FetchTimeout: -1},
		"sub-ms throttle":     {FailSafeThrottle: time.Microsecond},
		"negative β":          {EarlyRefresh: -1},
		"negative NotFound":   {NotFoundTTL: -1},
		"jitter of 1":         {TTLJitter: 1},
		"negative jitter":     {TTLJitter: -0.1},
		"unknown loser":       {Losers: 9},
		"MaxStale overflowed": {MaxStale: 1 << 62},
	} {
		cfg.Namespace, cfg.Fetch = name, fetch
		if _, err := tier.New(n, cfg); !errors.Is(err, tier.ErrConfig) {
			t.Errorf("%s: New = %v; want ErrConfig", name, err)
		}
	}
}

// R11 with groups: a cached "not found" is in the groups Config.Groups gives
// for its key, so invalidating such a group after an insert clears it; if
// Groups panics on the zero value, "not found" is not cached at all.
func TestRace_R11_NegativeInGroups(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	cfg := tier.Config[string, string]{
		Fetch:       src.fetch,
		NotFoundTTL: time.Minute,
		Groups:      func(k, _ string) []string { return []string{"family-" + k[:1]} },
	}
	na := f.node(tier.NodeConfig{}, nil)
	a := newCache(t, na, cfg)
	if _, err := a.Get(context.Background(), "x1"); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("Get = %v; want ErrNotFound", err)
	}
	tier.WaitL1(na)
	if _, ri, err := getInfo(t, a, "x1"); !errors.Is(err, tier.ErrNotFound) || !ri.Negative {
		t.Fatalf("not cached: %v, %+v", err, ri)
	}
	src.set("x1", "v")
	if err := na.InvalidateGroup(context.Background(), "family-x"); err != nil {
		t.Fatal(err)
	}
	fresh := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
	for _, c := range []*tier.Cache[string, string]{a, fresh} {
		if v := mustGet(t, c, "x1"); v != "v" {
			t.Fatalf("after the group's invalidation = %q; want v", v)
		}
	}

	panicky := cfg
	panicky.Namespace = "panicky"
	panicky.Groups = func(_ string, v string) []string { return []string{v[:1]} } // panics on ""
	p := newCache(t, na, panicky)
	reads := src.reads.Load()
	for range 2 {
		if _, err := p.Get(context.Background(), "y1"); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("Get = %v; want ErrNotFound", err)
		}
	}
	if got := src.reads.Load() - reads; got != 2 {
		t.Fatalf("%d source reads; want 2: a \"not found\" whose groups panic is not cached", got)
	}
}
