package tier_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// A refused connection is an outage, not a slow server: with Redis killed,
// the first Get opens the breaker (not the fifth failure) and gives up at
// once, not after RedisTimeout (here an hour, which the test's guard would
// catch); so do the Gets, fills and Invalidates after it.
func TestRefusedConnectionFailsFast(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	cfg := tier.NodeConfig{RedisTimeout: time.Hour, BreakerPause: time.Hour, LeaseTTL: time.Hour}
	n := f.node(cfg, nil)
	c := cache(t, n, src)
	mustGet(t, c, "k")
	f.srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for i := range 10 {
		key := fmt.Sprint("cold", i)
		src.set(key, "v1")
		if v, err := c.Get(ctx, key); err != nil || v != "v1" {
			t.Fatalf("Get %s with Redis down = %q, %v; want v1 from the source", key, v, err)
		}
		if st := n.Stats(); st.BreakerOpens != 1 {
			t.Fatalf("after Get %d with Redis down the breaker opened %d times; want once, at the first refused dial", i, st.BreakerOpens)
		}
	}
	if err := c.Invalidate(ctx, "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with Redis down = %v; want ErrPending", err)
	}
}

// With Redis unreachable and writes pending, the node does not spin: its
// replay retries on the breaker's schedule. Counted in breaker periods,
// not in time: while the breaker opens three more times (each a probe
// that failed), Redis errors grow by a handful, not by thousands.
func TestOutageDoesNotSpin(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	n := f.node(faultCfg, nil)
	c := cache(t, n, src)
	f.srv.Kill()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		if err := c.Invalidate(ctx, k); !errors.Is(err, tier.ErrPending) {
			t.Fatalf("Invalidate = %v; want ErrPending", err)
		}
	}
	awaitStats(t, n, "the breaker to open", func(st tier.Stats) bool { return st.BreakerOpens >= 1 })
	before := n.Stats()
	awaitStats(t, n, "three failed probes", func(st tier.Stats) bool { return st.BreakerOpens >= before.BreakerOpens+3 })
	after := n.Stats()
	if grew := after.RedisErrors - before.RedisErrors; grew > 20 {
		t.Fatalf("Redis errors grew by %d over 3 breaker periods with 3 writes pending: the replay spins", grew)
	}
	if after.Pending != 3 {
		t.Fatalf("pending = %d; want 3", after.Pending)
	}
}

// R42: a flight is closed to new members once it is LeaseTTL old. A node
// whose bus silently stopped delivering (messages and pongs lost) misses
// an invalidation while a flight that read the old value is held; a Get
// that begins once the flight is older than the lease starts a flight of
// its own and reads the new value, though the node never learnt of the
// invalidation.
func TestRace_R42_FlightJoinBoundedByLease(t *testing.T) {
	const lease = 100 * time.Millisecond
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	var lost atomic.Bool
	eb, hb := newBusEvents()
	hb.DropMessage = func([]byte) bool { return lost.Load() }
	hb.DropPong = func() bool { return lost.Load() }
	ticks := make(chan struct{}, 1024)
	hb.Ticked = func() { ticks <- struct{}{} }
	flights := make(chan bool, 64)
	na := f.node(tier.NodeConfig{LeaseTTL: lease}, &hooks.Points{Bus: hb, Flight: func(_ string, started bool) { flights <- started }})
	nb := f.node(tier.NodeConfig{}, nil)
	a, b := cache(t, na, src), cache(t, nb, src)
	ctx := context.Background()
	src.gated.Store(true)
	began := time.Now()
	first := goGet(ctx, a, "k")
	if !wait(t, flights, "A's flight") {
		t.Fatal("the first Get joined a flight")
	}
	held := src.next(t) // it read v1
	src.gated.Store(false)
	lost.Store(true)
	src.set("k", "v2")
	if err := b.Invalidate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// A's lease lapses (no pong comes back), and the flight grows older
	// than the lease: both are the bound under test, waited for as events.
	eb.awaitDropped(t, bus.LeaseLapsed)
	for time.Since(began) < lease {
		wait(t, ticks, "a round of A's lease loop")
	}
	second := goGet(ctx, a, "k")
	if !wait(t, flights, "the second Get's flight") {
		t.Fatal("a Get that began more than LeaseTTL after the flight joined it")
	}
	if r := await(t, second); r.err != nil || r.v != "v2" {
		t.Fatalf("second Get = %q, %v; want v2", r.v, r.err)
	}
	close(held.release)
	await(t, first)
}

// An outage does not multiply the source's load: concurrent Gets of one key
// on a node keep sharing one fetch after the node's bus dropped (Redis
// killed), where they used to start a flight each after every drop.
func TestOutageKeepsSharingFetches(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	flights := make(chan bool, 256)
	n := f.node(tier.NodeConfig{LeaseTTL: time.Minute}, &hooks.Points{Bus: hb, Flight: func(_ string, started bool) { flights <- started }})
	c := cache(t, n, src)
	ctx := context.Background()
	f.srv.Kill()
	eb.awaitDropped(t, bus.Disconnected)
	src.gated.Store(true)
	first := goGet(ctx, c, "k")
	if !wait(t, flights, "the first flight") {
		t.Fatal("the first Get joined a flight")
	}
	held := src.next(t)
	eb.awaitDropped(t, bus.Disconnected) // a failed reconnect, during the fetch
	var rest []<-chan result
	for range 50 {
		rest = append(rest, goGet(ctx, c, "k"))
		if wait(t, flights, "a Get's flight") {
			t.Fatal("a Get during the outage started a second fetch")
		}
	}
	close(held.release)
	for _, ch := range append(rest, first) {
		if r := await(t, ch); r.err != nil || r.v != "v1" {
			t.Fatalf("Get = %q, %v", r.v, r.err)
		}
	}
	if reads := src.reads.Load(); reads != 1 {
		t.Fatalf("source reads = %d; want 1", reads)
	}
}

// The degraded mode of NodeConfig.OutageMaxAge: with Redis unreachable, a
// Get answers from what L1 holds, as stale, with ErrStale and
// ErrUnreachable, without calling the source; a local write still evicts
// it; an entry older than OutageMaxAge is not served; with the mode off,
// the source answers.
func TestDegradedModeServesHeldL1(t *testing.T) {
	for _, maxAge := range []time.Duration{time.Hour, 0, time.Nanosecond} {
		on := maxAge == time.Hour
		t.Run(fmt.Sprint("OutageMaxAge=", maxAge), func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			for _, k := range []string{"k", "w"} {
				src.set(k, "v1")
			}
			cfg := faultCfg
			cfg.OutageMaxAge = maxAge
			eb, hb := newBusEvents()
			n := f.node(cfg, &hooks.Points{Bus: hb})
			c := cache(t, n, src)
			warm(t, n, c, "k")
			warm(t, n, c, "w")
			f.srv.Kill()
			eb.awaitDropped(t, bus.Disconnected)
			src.set("k", "v2")
			reads := src.reads.Load()
			v, ri, err := getInfo(t, c, "k")
			if !on {
				if err != nil || v != "v2" || ri.Stale {
					t.Fatalf("mode off, or the entry too old: Get = %q, %+v, %v; want v2 from the source", v, ri, err)
				}
				return
			}
			if v != "v1" || !ri.Stale || ri.Source != tier.SourceL1 || !errors.Is(err, tier.ErrStale) || !errors.Is(err, tier.ErrUnreachable) {
				t.Fatalf("mode on: Get = %q, %+v, %v; want v1 from L1, stale, ErrStale and ErrUnreachable", v, ri, err)
			}
			if src.reads.Load() != reads {
				t.Fatal("the degraded mode called the source")
			}
			if err := c.Invalidate(context.Background(), "w"); !errors.Is(err, tier.ErrPending) {
				t.Fatalf("Invalidate = %v; want ErrPending", err)
			}
			src.set("w", "v2")
			if v, ri, err := getInfo(t, c, "w"); err != nil || v != "v2" || ri.Stale {
				t.Fatalf("after a local write: Get = %q, %+v, %v; want v2 from the source", v, ri, err)
			}
			if st := n.Stats(); st.Caches.OutageServed != 1 || st.Caches.StaleServed != 1 {
				t.Fatalf("stats: %d outage served, %d stale served; want 1, 1", st.Caches.OutageServed, st.Caches.StaleServed)
			}
		})
	}
}

// R43: a subscription that silently stops delivering (its connection sunk:
// blackholed for good, while new connections pass) is replaced once its
// lease has lapsed, so the node serves L1 again soon after, not when TCP
// gives up. Meanwhile it misses an invalidation, and reads the new value
// from Redis.
func TestRace_R43_SilentSubscriptionReplaced(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	ea, ha := newBusEvents()
	na, proxy := f.proxiedNode(faultCfg, &hooks.Points{Bus: ha})
	nb := f.node(faultCfg, nil)
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, na, a, "k")
	proxy.Sink()
	src.set("k", "v2")
	if err := b.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	ea.awaitDropped(t, bus.LeaseLapsed)
	ea.forgetRenewals()
	ea.awaitRenewed(t) // on a new connection
	if v := mustGet(t, a, "k"); v != "v2" {
		t.Fatalf("A after its subscription was replaced = %q; want v2", v)
	}
	// L1 serves again: on a loaded machine a renewed lease may lapse again
	// before the check, so check at each renewal until it does.
	for deadline := time.Now().Add(guard); !inL1(t, na, a, "k"); ea.awaitRenewed(t) {
		if time.Now().After(deadline) {
			t.Fatal("A does not serve L1 again")
		}
	}
	if st := na.Stats(); st.BusReplacements == 0 {
		t.Fatalf("stats: %+v; want a replaced subscription", st)
	}
}

// R44: a Set whose call timed out may still land later, after a newer
// write. Such a late write lives at most LeaseTTL in Redis, so the old value
// cannot outlive the newer write by more. Driven by a failpoint that holds
// the Set's script and runs it after its caller gave up.
func TestRace_R44_LateSetIsShortLived(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	var (
		armed atomic.Bool
		late  = make(chan func(), 1)
		sent  time.Time
	)
	armed.Store(true)
	hk := &hooks.Points{LateApply: func(apply func()) bool {
		if !armed.CompareAndSwap(true, false) {
			return false
		}
		sent = time.Now()
		late <- apply
		return true
	}}
	na, nb := f.node(faultCfg, hk), f.node(faultCfg, nil)
	a, b := cache(t, na, src), cache(t, nb, src)
	ctx := context.Background()
	if err := a.Set(ctx, "k", "v2"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("the timed-out Set = %v; want ErrPending", err)
	}
	apply := wait(t, late, "the held Set")
	if err := b.Set(ctx, "k", "v3"); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(ctx, "j", "x"); err != nil {
		t.Fatal(err)
	}
	if ttl, err := f.rdb.PTTL(ctx, l2.KeysFor(tier.DefaultPrefix, ns, "j").Value).Result(); err != nil || ttl <= faultCfg.LeaseTTL {
		t.Fatalf("a timely Set lives %v, %v; want its full TTL", ttl, err)
	}
	valueKey := l2.KeysFor(tier.DefaultPrefix, ns, "k").Value
	awaitStats(t, na, "A's replay", func(st tier.Stats) bool { return st.Pending == 0 })
	// The late landing: after the Set's deadline (RedisTimeout from when it
	// was sent), which is the fault itself, not a settling delay.
	time.Sleep(time.Until(sent.Add(faultCfg.RedisTimeout)))
	apply()
	if got := f.stored("k"); got != "v2" {
		t.Fatalf("Redis holds %q; want the late v2 (landed, short-lived)", got)
	}
	ttl, err := f.rdb.PTTL(ctx, valueKey).Result()
	if err != nil || ttl <= 0 || ttl > faultCfg.LeaseTTL {
		t.Fatalf("the late write lives %v, %v; want at most LeaseTTL (%v)", ttl, err, faultCfg.LeaseTTL)
	}
}

// R56: a node's group invalidation that could not reach Redis is pending;
// a read of a member begins, finds the key itself not pending (its groups
// are not known before the read), and reads the old value from Redis; the
// replay lands, and leaves the queue, before the read asks whether any of
// the value's groups is pending. The read must not answer with the old
// value (read-your-writes, R21): it notes the count of landed replays
// before it reads, and a replay that landed meanwhile sends it to the
// source. The replay is held back by failing its batches (LateApply) until
// the read has read.
func TestRace_R56_ReplayLandsDuringRead(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("book:7", "v1")
	var (
		hold  atomic.Bool
		armed atomic.Bool
	)
	read, resume := make(chan struct{}), make(chan struct{})
	n := f.node(tier.NodeConfig{}, &hooks.Points{
		// While held, every batch fails as if Redis had not answered: the
		// group invalidation, then each attempt of its replay.
		LateApply: func(func()) bool { return hold.Load() },
		AfterRead: func(string) {
			if armed.CompareAndSwap(true, false) {
				close(read)
				<-resume
			}
		},
	})
	c := grouped(t, n, src, byKey)
	mustGet(t, c, "book:7")
	tier.EvictL1(c, "book:7")

	hold.Store(true)
	src.set("book:7", "v2")
	if err := n.InvalidateGroup(context.Background(), "books"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("InvalidateGroup with its batch failing = %v, want ErrPending", err)
	}
	armed.Store(true)
	got := goGet(context.Background(), c, "book:7")
	wait(t, read, "the read of book:7 from Redis")
	// Redis still holds v1 under the old stamp. Let the replay land now.
	replayed := n.Stats().Replayed
	hold.Store(false)
	awaitStats(t, n, "the replay to land", func(s tier.Stats) bool { return s.Replayed > replayed && s.Pending == 0 })
	close(resume)
	if r := await(t, got); r.err != nil || r.v != "v2" {
		t.Fatalf("a read that began after InvalidateGroup returned = %q, %v; want v2", r.v, r.err)
	}
}

// replayExitRecorder is a Recorder whose first Replayed ends its goroutine
// (runtime.Goexit, as t.FailNow in it would).
type replayExitRecorder struct {
	tier.NopRecorder
	calls atomic.Int32
}

func (r *replayExitRecorder) Replayed(int) {
	if r.calls.Add(1) == 1 {
		runtime.Goexit()
	}
}

// A Recorder that ends the goroutine replaying pending writes does not end
// the replays: a new goroutine takes over, and a write queued afterwards
// still lands. Without it, the second write would stay pending for good.
func TestReplayThatEndsItsGoroutine(t *testing.T) {
	f := newFleet(t)
	rec := &replayExitRecorder{}
	var hold atomic.Bool
	n := f.node(tier.NodeConfig{Recorder: rec}, &hooks.Points{
		// While held, every batch fails as if Redis had not answered.
		LateApply: func(func()) bool { return hold.Load() },
	})
	c := cache(t, n, newSource())
	for i, k := range []string{"a", "b"} {
		hold.Store(true)
		if err := c.Invalidate(context.Background(), k); !errors.Is(err, tier.ErrPending) {
			t.Fatalf("Invalidate(%s) with its batch failing = %v, want ErrPending", k, err)
		}
		hold.Store(false)
		awaitStats(t, n, fmt.Sprintf("the replay of %s to land", k), func(s tier.Stats) bool { return s.Pending == 0 && s.Replayed == uint64(i+1) })
	}
	if n := rec.calls.Load(); n != 2 {
		t.Fatalf("Replayed called %d times, want 2", n)
	}
}

// A replay whose batch ends the replaying goroutine while in flight (here
// the node's exec, run by the replay itself as a lone caller, since
// 4 × RedisTimeout outlasts the publisher's timeout) puts the batch back in
// the queue: the new goroutine replays it. Without that, the write would
// be neither pending nor landed, and reads of its key would go to the
// source for good.
func TestReplayThatEndsItsGoroutineMidBatch(t *testing.T) {
	f := newFleet(t)
	var hold, exit atomic.Bool
	n := f.node(tier.NodeConfig{RedisTimeout: 2 * time.Second}, &hooks.Points{
		// While held, every batch fails as if Redis had not answered; the
		// armed one ends its goroutine instead, and lets the next land.
		LateApply: func(func()) bool {
			if exit.CompareAndSwap(true, false) {
				hold.Store(false)
				runtime.Goexit()
			}
			return hold.Load()
		},
	})
	c := cache(t, n, newSource())
	hold.Store(true)
	if err := c.Invalidate(context.Background(), "a"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with its batch failing = %v, want ErrPending", err)
	}
	exit.Store(true) // the next attempt, on the replay's backoff
	awaitStats(t, n, "the replay to land", func(s tier.Stats) bool { return s.Pending == 0 && s.Replayed == 1 })
	if exit.Load() {
		t.Fatal("no replay ran the batch that ends its goroutine")
	}
}
