package tier_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// Each test below drives one interleaving of docs/RACES.md through held fetches
// and hooks; none sleeps. Nodes share one private Redis and have no bus, so
// a node learns only of its own invalidations.

// R01: A claims and reads v1; W writes v2 and invalidates; A's fill is
// refused, and the next read gets v2.
func TestRace_R01_InvalidateDuringFetch(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	na, nw := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, w := cache(t, na, src), cache(t, nw, src)

	got := goGet(context.Background(), a, "k")
	held := src.next(t) // A claimed and read v1
	src.set("k", "v2")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	if r := await(t, got); r.err != nil || r.v != "v1" {
		t.Fatalf("A's Get = %q, %v; want v1 (its read overlapped the write)", r.v, r.err)
	}
	if st := na.Stats(); st.Caches.FillsRefused != 1 || st.Caches.FillsLanded != 0 {
		t.Fatalf("A's fill was not refused: %+v", st)
	}
	if s := f.stored("k"); s != "" {
		t.Fatalf("L2 holds %q after the refused fill", s)
	}
	src.gated.Store(false)
	for _, c := range []*tier.Cache[string, string]{a, w} {
		if v := mustGet(t, c, "k"); v != "v2" {
			t.Fatalf("read after the invalidation = %q, want v2", v)
		}
	}
}

// r03 runs the flag-ABA interleaving with the given claim tokens and returns
// what a fresh reader gets afterwards. A claims and reads v1; W invalidates;
// B claims and reads v2; A fills; B fills.
func r03(t *testing.T, token func() string) (final string, st tier.Stats) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	hk := &hooks.Points{Token: token}
	na, nb, nw := f.node(tier.NodeConfig{}, hk), f.node(tier.NodeConfig{}, hk), f.node(tier.NodeConfig{}, hk)
	a, b, w := cache(t, na, src), cache(t, nb, src), cache(t, nw, src)

	gotA := goGet(context.Background(), a, "k")
	heldA := src.next(t)
	src.set("k", "v2")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	gotB := goGet(context.Background(), b, "k")
	heldB := src.next(t)
	if heldA.val != "v1" || heldB.val != "v2" {
		t.Fatalf("fetches read %q and %q", heldA.val, heldB.val)
	}
	close(heldA.release)
	await(t, gotA)
	close(heldB.release)
	await(t, gotB)

	src.gated.Store(false)
	fresh := cache(t, f.node(tier.NodeConfig{}, nil), src)
	sa, sb := na.Stats(), nb.Stats()
	return mustGet(t, fresh, "k"), tier.Stats{Caches: tier.Counts{FillsLanded: sa.Caches.FillsLanded + sb.Caches.FillsLanded, FillsRefused: sa.Caches.FillsRefused + sb.Caches.FillsRefused}}
}

// R03: with a fresh token per claim, A's late fill is refused and B's v2
// lands.
func TestRace_R03_FlagABA(t *testing.T) {
	final, st := r03(t, nil)
	if final != "v2" {
		t.Fatalf("after the ABA interleaving readers get %q, want v2", final)
	}
	if st.Caches.FillsLanded != 1 || st.Caches.FillsRefused != 1 {
		t.Fatalf("fills landed/refused = %d/%d, want 1/1", st.Caches.FillsLanded, st.Caches.FillsRefused)
	}
}

// R03 negative control: with cachecow's constant flag, the same interleaving
// lets A's old v1 land and stay. The test above can see the bug.
func TestRace_R03_NegativeControl_ConstantFlag(t *testing.T) {
	final, _ := r03(t, func() string { return "1" })
	if final != "v1" {
		t.Fatalf("with a constant flag readers get %q; the stale v1 should have landed", final)
	}
}

// R04: a fetch slower than the flag TTL cannot fill; the refusal is counted.
func TestRace_R04_FetchSlowerThanFlagTTL(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	n := f.node(tier.NodeConfig{FlagTTL: 20 * time.Millisecond}, nil)
	c := cache(t, n, src)

	got := goGet(context.Background(), c, "k")
	held := src.next(t)
	f.awaitFlagGone("k") // the flag expires while the fetch runs
	close(held.release)
	if r := await(t, got); r.err != nil || r.v != "v1" {
		t.Fatalf("Get = %q, %v", r.v, r.err)
	}
	if st := n.Stats(); st.Caches.FillsRefused != 1 || st.Caches.FillsLanded != 0 {
		t.Fatalf("stats = %+v, want one refused fill", st)
	}
	if s := f.stored("k"); s != "" {
		t.Fatalf("L2 holds %q", s)
	}
}

// R05: A's flag expired and B claimed; A's fill is refused, B's lands.
func TestRace_R05_TokenSteal(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	na := f.node(tier.NodeConfig{FlagTTL: 20 * time.Millisecond}, nil)
	nb := f.node(tier.NodeConfig{}, nil)
	a, b := cache(t, na, src), cache(t, nb, src)

	gotA := goGet(context.Background(), a, "k")
	heldA := src.next(t)
	f.awaitFlagGone("k")
	src.set("k", "v2")
	gotB := goGet(context.Background(), b, "k")
	heldB := src.next(t) // B claimed
	close(heldA.release)
	await(t, gotA)
	if st := na.Stats(); st.Caches.FillsRefused != 1 {
		t.Fatalf("A's fill was not refused: %+v", st)
	}
	close(heldB.release)
	if r := await(t, gotB); r.v != "v2" {
		t.Fatalf("B's Get = %q", r.v)
	}
	if st := nb.Stats(); st.Caches.FillsLanded != 1 {
		t.Fatalf("B's fill did not land: %+v", st)
	}
	if s := f.stored("k"); s != "v2" {
		t.Fatalf("L2 = %q, want v2", s)
	}
}

// R06: the claim happens strictly before the source is read: every fetch
// that may fill starts with its flag already held in Redis.
func TestRace_R06_ClaimBeforeRead(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	var unclaimed atomic.Int64
	src.onFetch = func(ctx context.Context, key string) {
		if f.flag(key) == "" {
			unclaimed.Add(1)
		}
	}
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	for _, k := range []string{"a", "b", "c", "d"} {
		src.set(k, "v")
		mustGet(t, c, k)
	}
	if got := unclaimed.Load(); got != 0 {
		t.Fatalf("%d fetches started without a claim", got)
	}
	if st := n.Stats(); st.Caches.Fetches != 4 || st.Caches.FillsLanded != 4 {
		t.Fatalf("stats = %+v", st)
	}
}

// R08: the claimant dies (a foreign claim that is never filled): a waiter
// waits while the flag is held, then claims once it is gone, and fills.
func TestRace_R08_HolderDies(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	busy, onBusy := events[string]()
	n := f.node(tier.NodeConfig{}, &hooks.Points{OnBusy: onBusy})
	c := cache(t, n, src)
	f.claimAsDeadNode("k", time.Minute)

	got := goGet(context.Background(), c, "k")
	wait(t, busy, "the Get to find the flag held")
	if src.reads.Load() != 0 {
		t.Fatal("the waiter fetched while the flag was held")
	}
	f.expireFlag("k") // the dead holder's flag runs out
	if r := await(t, got); r.err != nil || r.v != "v1" {
		t.Fatalf("Get = %q, %v", r.v, r.err)
	}
	if st := n.Stats(); st.Caches.Fetches != 1 || st.Caches.FillsLanded != 1 || st.Caches.Waits != 1 {
		t.Fatalf("stats = %+v; want the waiter to claim and fill once", st)
	}
	if s := f.stored("k"); s != "v1" {
		t.Fatalf("L2 = %q", s)
	}
}

// R08, real expiry: a dead holder's flag expires on the server; nobody
// hangs, and the source is read once.
func TestRace_R08_HolderDies_FlagExpires(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n := f.node(tier.NodeConfig{FlagTTL: time.Second}, nil)
	c := cache(t, n, src)
	f.claimAsDeadNode("k", 50*time.Millisecond)
	if v := mustGet(t, c, "k"); v != "v1" {
		t.Fatalf("Get = %q", v)
	}
	if st := n.Stats(); st.Caches.Fetches != 1 || st.Caches.FillsLanded != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// R08: a claimant whose only caller gives up (ctx cancelled) stops its fetch
// and releases its flag, so a waiter on another node claims at once rather
// than after the flag TTL.
func TestRace_R08_ClaimantCancelled(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	busy, onBusy := events[string]()
	na := f.node(tier.NodeConfig{FlagTTL: time.Hour}, nil)
	nb := f.node(tier.NodeConfig{FlagTTL: time.Hour}, &hooks.Points{OnBusy: onBusy})
	a, b := cache(t, na, src), cache(t, nb, src)

	ctxA, cancelA := context.WithCancel(context.Background())
	gotA := goGet(ctxA, a, "k")
	heldA := src.next(t)
	gotB := goGet(context.Background(), b, "k")
	wait(t, busy, "B to wait for A's claim")
	cancelA()
	if r := await(t, gotA); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("A's Get = %q, %v; want context.Canceled", r.v, r.err)
	}
	<-heldA.ctx.Done() // the shared fetch saw that nobody waits for it any more
	heldB := src.next(t)
	close(heldB.release)
	if r := await(t, gotB); r.err != nil || r.v != "v1" {
		t.Fatalf("B's Get = %q, %v", r.v, r.err)
	}
	if st := nb.Stats(); st.Caches.FillsLanded != 1 {
		t.Fatalf("B did not claim and fill: %+v", st)
	}
}

// R08, R10: a waiter whose claimant outlives the waiter's own flag TTL
// fetches without caching: it neither hangs nor fills a second time.
func TestRace_R08_WaitBoundedByFlagTTL(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n := f.node(tier.NodeConfig{FlagTTL: 30 * time.Millisecond}, nil)
	c := cache(t, n, src)
	f.claimAsDeadNode("k", time.Hour) // a claimant with a far longer flag
	if v := mustGet(t, c, "k"); v != "v1" {
		t.Fatalf("Get = %q", v)
	}
	if st := n.Stats(); st.Caches.UncachedFetches != 1 || st.Caches.FillsLanded != 0 {
		t.Fatalf("stats = %+v; want one uncached fetch and no fill", st)
	}
	if s := f.stored("k"); s != "" {
		t.Fatalf("L2 = %q; the loser filled", s)
	}
}

// R09: two writers' invalidations, in either order, around a fill that read
// the older version: the end state is empty or the newest version.
func TestRace_R09_TwoWriters(t *testing.T) {
	for _, order := range [][2]string{{"v2", "v3"}, {"v3", "v2"}} {
		t.Run(order[0]+"-first", func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			src.gated.Store(true)
			nr := f.node(tier.NodeConfig{}, nil)
			r := cache(t, nr, src)
			writers := map[string]*tier.Cache[string, string]{
				"v2": cache(t, f.node(tier.NodeConfig{}, nil), src),
				"v3": cache(t, f.node(tier.NodeConfig{}, nil), src),
			}
			got := goGet(context.Background(), r, "k")
			held := src.next(t)
			src.set("k", "v2")
			src.set("k", "v3")
			for _, v := range order {
				if err := writers[v].Invalidate(context.Background(), "k"); err != nil {
					t.Fatal(err)
				}
			}
			close(held.release)
			await(t, got)
			if s := f.stored("k"); s != "" && s != "v3" {
				t.Fatalf("L2 = %q, want empty or v3", s)
			}
			src.gated.Store(false)
			if v := mustGet(t, r, "k"); v != "v3" {
				t.Fatalf("read after both writes = %q", v)
			}
		})
	}
}

// r13 fills node n's L1 from an L2 hit and, at hook point at, invalidates
// the key on the same node; it returns what the next Get returns.
func r13(t *testing.T, at string, noFence bool) string {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	var c *tier.Cache[string, string]
	var fired atomic.Bool
	invalidate := func(uint64) {
		if !fired.CompareAndSwap(false, true) {
			return
		}
		src.set("k", "v2")
		if err := c.Invalidate(context.Background(), "k"); err != nil {
			t.Error(err)
		}
	}
	l1h := &l1.Hooks{NoFence: noFence}
	switch at {
	case "before-set":
		l1h.BeforeSet = invalidate
	case "after-set":
		l1h.AfterSet = invalidate
	}
	// Another node puts v1 in L2, so that n's read is an L2 hit.
	mustGet(t, cache(t, f.node(tier.NodeConfig{}, nil), src), "k")
	n := f.node(tier.NodeConfig{}, &hooks.Points{L1: l1h})
	c = cache(t, n, src)
	if v := mustGet(t, c, "k"); v != "v1" { // overlapped the write: v1 is allowed
		t.Fatalf("first Get = %q", v)
	}
	if !fired.Load() {
		t.Fatal("the hook never ran")
	}
	tier.WaitL1(n) // let ristretto apply the buffered Set, whenever it would
	return mustGet(t, c, "k")
}

// R13: an invalidation that lands between the fill's ticket check and
// ristretto's buffered Set, or right after the Set, leaves nothing
// servable in L1.
func TestRace_R13_BufferedSet(t *testing.T) {
	for _, at := range []string{"before-set", "after-set"} {
		t.Run(at, func(t *testing.T) {
			if v := r13(t, at, false); v != "v2" {
				t.Fatalf("Get after the invalidation = %q, want v2", v)
			}
		})
	}
}

// R13 negative control: without the L1 fence the stale v1 is served after
// the invalidation returned. The test above can see the bug.
func TestRace_R13_NegativeControl_NoFence(t *testing.T) {
	if v := r13(t, "before-set", true); v != "v1" {
		t.Fatalf("Get = %q; without a fence the stale v1 should be served", v)
	}
}

// r20 starts a flight that reads v1, invalidates on the same node, and
// starts a second Get; it returns whether the second Get started its own
// flight, and what it returned.
func r20(t *testing.T, noForget bool) (started bool, v string) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	flights, onFlight := events[bool]()
	n := f.node(tier.NodeConfig{}, &hooks.Points{
		NoForget: noForget,
		Flight:   func(_ string, started bool) { onFlight(started) },
	})
	c := cache(t, n, src)

	gotA := goGet(context.Background(), c, "k")
	wait(t, flights, "A's flight")
	heldA := src.next(t)
	src.set("k", "v2")
	if err := c.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	gotB := goGet(context.Background(), c, "k")
	started = wait(t, flights, "B to register")
	if started {
		heldB := src.next(t)
		close(heldB.release)
	}
	close(heldA.release)
	await(t, gotA)
	return started, await(t, gotB).v
}

// R20: a read that began after an invalidation never joins a flight that
// began before it.
func TestRace_R20_SingleflightAcrossInvalidation(t *testing.T) {
	started, v := r20(t, false)
	if !started || v != "v2" {
		t.Fatalf("B started its own flight: %v, got %q; want true, v2", started, v)
	}
}

// R20 negative control: without forgetting the flight, the later read joins
// the old flight and returns the old value.
func TestRace_R20_NegativeControl_NoForget(t *testing.T) {
	started, v := r20(t, true)
	if started || v != "v1" {
		t.Fatalf("B started its own flight: %v, got %q; want false, v1", started, v)
	}
}

// R21: after Invalidate or Set returns, the same node never serves the old
// value, from L1 or from a fill in progress.
func TestRace_R21_ReadYourWrites(t *testing.T) {
	for _, op := range []string{"invalidate", "set"} {
		t.Run(op, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			n := f.node(tier.NodeConfig{}, nil)
			c := cache(t, n, src)
			mustGet(t, c, "k")
			tier.WaitL1(n)
			if mustGet(t, c, "k"); n.Stats().Caches.L1Hits != 1 {
				t.Fatal("v1 is not in L1")
			}
			// A second key's fill is in progress while the write happens.
			src.set("j", "v1")
			src.gated.Store(true)
			gotJ := goGet(context.Background(), c, "j")
			heldJ := src.next(t)

			src.set("k", "v2")
			src.set("j", "v2")
			write := func(key string) error {
				if op == "set" {
					return c.Set(context.Background(), key, "v2")
				}
				return c.Invalidate(context.Background(), key)
			}
			for _, k := range []string{"k", "j"} {
				if err := write(k); err != nil {
					t.Fatal(err)
				}
			}
			close(heldJ.release)
			await(t, gotJ)
			tier.WaitL1(n)
			src.gated.Store(false)
			for _, k := range []string{"k", "j"} {
				if v := mustGet(t, c, k); v != "v2" {
					t.Fatalf("Get(%s) after the write = %q", k, v)
				}
			}
		})
	}
}

// claimAsDeadNode claims key's flag for ttl with a token no node will ever
// fill: a claimant that crashed after claiming.
func (f *fleet) claimAsDeadNode(key string, ttl time.Duration) {
	f.t.Helper()
	r, err := l2.NewStore(f.rdb, "tc").ReadOrClaim(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, key), "dead-node", ttl)
	if err != nil || r.State != l2.Claimed {
		f.t.Fatalf("claim: %v, %v", r.State, err)
	}
}

// expireFlag deletes key's flag, as its expiry would.
func (f *fleet) expireFlag(key string) {
	f.t.Helper()
	if err := f.rdb.Del(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, key).Flag).Err(); err != nil {
		f.t.Fatal(err)
	}
}

// awaitFlagGone waits until key's flag has expired on the server: an event
// that Redis, not the test, decides.
func (f *fleet) awaitFlagGone(key string) {
	f.t.Helper()
	deadline := time.Now().Add(guard)
	for f.flag(key) != "" {
		if time.Now().After(deadline) {
			f.t.Fatal("flag never expired")
		}
		runtime.Gosched()
	}
}
