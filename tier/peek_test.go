package tier_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/tier"
)

// R54: a key the node has seen in Redis is read with plain commands, in
// the caller's goroutine, without a flight; an invalidation of the key
// that the node learns of between that read and the L1 fill refuses the
// fill, as for a read through the script (R12, R13). The negative control
// turns the fence off: the value read before the invalidation then stays
// in L1.
func TestRace_R54_PeekedReadThenInvalidated(t *testing.T) {
	for _, tc := range []struct {
		name    string
		noFence bool
		want    string
	}{{"fenced", false, "v2"}, {"NegativeControl_NoFence", true, "v1"}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			eb, hb := newBusEvents()
			var (
				armed   atomic.Bool
				flights atomic.Int64
			)
			read, release := make(chan struct{}), make(chan struct{})
			nb := f.node(tier.NodeConfig{}, &hooks.Points{
				Bus:    hb,
				L1:     &l1.Hooks{NoFence: tc.noFence},
				Flight: func(string, bool) { flights.Add(1) },
				AfterRead: func(string) {
					if armed.CompareAndSwap(true, false) {
						close(read)
						<-release
					}
				},
			})
			na := f.node(tier.NodeConfig{}, nil)
			a, b := cache(t, na, src), cache(t, nb, src)
			mustGet(t, b, "k") // through the script: B has now seen k in Redis
			tier.WaitL1(nb)
			tier.EvictL1(b, "k") // as memory pressure: Redis still holds k
			before := flights.Load()

			armed.Store(true)
			got := goGet(context.Background(), b, "k")
			wait(t, read, "B to read k from Redis")
			if d := flights.Load() - before; d != 0 {
				t.Fatalf("B's read of a key it has seen in Redis started %d flights, want a peek (none)", d)
			}
			src.set("k", "v2")
			if err := a.Invalidate(context.Background(), "k"); err != nil {
				t.Fatal(err)
			}
			eb.awaitApplied(t, "k")
			close(release)
			if r := await(t, got); r.err != nil || r.v != "v1" {
				t.Fatalf("the overlapping read = %q, %v; want v1", r.v, r.err)
			}
			tier.WaitL1(nb)
			if v := mustGet(t, b, "k"); v != tc.want {
				t.Fatalf("B after the invalidation = %q, want %q", v, tc.want)
			}
		})
	}
}

// R54: a peeked value whose namespace was invalidated (InvalidateAll) after
// it was filled is not served: its stamp no longer matches, and the read
// goes on through the script, which finds it stale and fetches.
func TestRace_R54_PeekedValueOfInvalidatedNamespace(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	var flights atomic.Int64
	nb := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(string, bool) { flights.Add(1) }})
	na := f.node(tier.NodeConfig{}, nil)
	a := cache(t, na, src)
	b := newCache(t, nb, tier.Config[string, string]{Fetch: src.fetch, L1TTL: -1})
	mustGet(t, b, "k")
	before := flights.Load()
	if v := mustGet(t, b, "k"); v != "v1" || flights.Load() != before {
		t.Fatalf("second read = %q with %d flights; want v1 from a peek (no flight)", v, flights.Load()-before)
	}
	src.set("k", "v2")
	if err := a.InvalidateAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	stale := nb.Stats().Caches.GroupStale
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("read after InvalidateAll = %q, want v2", v)
	}
	if d := nb.Stats().Caches.GroupStale - stale; d != 1 {
		t.Fatalf("GroupStale rose by %d, want 1: the script found the peeked value stale", d)
	}
}
