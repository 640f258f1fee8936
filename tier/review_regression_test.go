package tier_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/tier"
)

// R17: a group invalidation that overflows the pending queue, on a node with
// no Cache of the group's namespace, is not dropped: the replay escalates to
// the fleet group, and every node and Redis read the new state.
func TestOverflowedGroupIsNotLost(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k0", "v1")
	src.set("k1", "v1")
	cfg := faultCfg
	cfg.MaxPending = 1
	writer, wproxy := f.proxiedNode(cfg, nil) // a node with no Cache at all
	eb, hb := newBusEvents()
	nb := f.node(faultCfg, &hooks.Points{Bus: hb})
	mk := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch,
			Groups: func(k, _ string) []string { return []string{"g" + k[1:]} }})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	b := mk(nb)
	mustGet(t, b, "k0")
	mustGet(t, b, "k1")
	ctx := context.Background()
	wproxy.Refuse()
	src.set("k0", "v2")
	src.set("k1", "v2")
	for _, g := range []string{"g0", "g1"} {
		if err := writer.InvalidateGroup(ctx, g); !errors.Is(err, tier.ErrPending) {
			t.Fatalf("InvalidateGroup(%s) during the outage = %v, want ErrPending", g, err)
		}
	}
	awaitStats(t, writer, "an overflow", func(s tier.Stats) bool { return s.PendingOverflow >= 1 })
	wproxy.Pass()
	awaitStats(t, writer, "the replay", func(s tier.Stats) bool { return s.Pending == 0 && s.Replayed >= 1 })
	waitGroupApplied(t, eb, "\x00all")
	fresh := mk(f.node(faultCfg, nil))
	for _, k := range []string{"k0", "k1"} {
		if v := mustGet(t, b, k); v != "v2" {
			t.Errorf("node B: %s = %q after the escalated replay", k, v)
		}
		if v := mustGet(t, fresh, k); v != "v2" {
			t.Errorf("a fresh node: %s = %q: the overflowed group invalidation was lost", k, v)
		}
	}
}

// R20, R22: a flight started while the node's lease was revoked (its
// subscription down, messages lost) is forgotten when the lease is renewed:
// a Get that begins after the invalidation and the renewal does not join it.
func TestFlightFromRevokedWindowIsForgotten(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	na := f.node(tier.NodeConfig{}, nil)
	a := cache(t, na, src)
	var armed atomic.Bool
	var once sync.Once
	cut, hold := make(chan struct{}), make(chan struct{})
	renewed := make(chan time.Time, 64)
	flights := make(chan bool, 64)
	hk := &hooks.Points{
		Bus: &bus.Hooks{
			AfterReceiveError: func(error) {
				if armed.Load() {
					once.Do(func() { close(cut); <-hold })
				}
			},
			Renewed: func(at time.Time) { renewed <- at },
		},
		Flight: func(_ string, started bool) { flights <- started },
	}
	nb, proxy := f.proxiedNode(tier.NodeConfig{LeaseTTL: time.Second, RedisTimeout: 500 * time.Millisecond}, hk)
	b := cache(t, nb, src)
	armed.Store(true)
	proxy.Refuse()
	wait(t, cut, "B's subscription to drop")
	proxy.Pass()
	src.gated.Store(true)
	first := goGet(context.Background(), b, "k")
	if !wait(t, flights, "B's flight") {
		t.Fatal("the first Get joined a flight")
	}
	c := src.next(t)
	src.gated.Store(false)
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	close(hold)
	for at := wait(t, renewed, "B's renewal"); !at.After(released); at = wait(t, renewed, "B's renewal") {
	}
	second := goGet(context.Background(), b, "k")
	wait(t, flights, "the second Get's flight")
	close(c.release)
	await(t, first)
	if r := await(t, second); r.err != nil || r.v != "v2" {
		t.Fatalf("a Get that began after Invalidate returned and after B renewed its lease = %q, %v; want v2", r.v, r.err)
	}
}

// Callers whose deadlines are shorter than RedisTimeout still open the
// breaker when Redis is unreachable: giving up says nothing of Redis, and
// must not keep the breaker closed.
func TestImpatientCallersOpenTheBreaker(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	reads := make(chan string, 64)
	cfg := tier.NodeConfig{LeaseTTL: 200 * time.Millisecond, RedisTimeout: 400 * time.Millisecond, BreakerPause: time.Minute}
	na, proxy := f.proxiedNode(cfg, &hooks.Points{AfterRead: func(k string) { reads <- k }})
	a := cache(t, na, src)
	proxy.Blackhole()
	// Impatient callers give up first; their reads run to RedisTimeout in
	// the flight and fail there, counted as unreachable.
	for i := range tier.DefaultBreakerFails {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := a.Get(ctx, "k")
		cancel()
		if err == nil {
			t.Fatalf("Get %d answered before any read failed", i)
		}
		wait(t, reads, "the read that could not reach Redis to end")
	}
	awaitStats(t, na, "the breaker to open", func(s tier.Stats) bool { return s.BreakerOpens > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if v, err := a.Get(ctx, "k"); err != nil || v != "v1" {
		t.Errorf("Get with Redis unreachable = %q, %v; want the source's value (breaker open)", v, err)
	}
}

// The longest namespace's InvalidateAll reaches Redis and every node: its
// group name fits in a bus message.
func TestInvalidateAllLongestNamespace(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	long := strings.Repeat("n", 1020)
	mk := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: long, Fetch: src.fetch})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return c
	}
	a, b := mk(f.node(tier.NodeConfig{}, nil)), mk(f.node(tier.NodeConfig{}, nil))
	mustGet(t, a, "k")
	src.set("k", "v2")
	if err := a.InvalidateAll(context.Background()); err != nil {
		t.Fatalf("InvalidateAll with a healthy Redis: %v", err)
	}
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("another node after InvalidateAll = %q, want v2", v)
	}
}
