package tier_test

import (
	"context"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkGetRedisDown compares, in one run, a Get with Redis down (the
// node's breaker open: answered from the source, which here costs nothing)
// and a Get with Redis up hitting L2. If the breaker failed, every Get with
// Redis down would wait for RedisTimeout; it is faster than an L2 hit.
func BenchmarkGetRedisDown(b *testing.B) {
	ctx := context.Background()
	cfg := tier.NodeConfig{RedisTimeout: 100 * time.Millisecond, LeaseTTL: time.Minute}
	fetch := func(context.Context, string) (string, error) { return benchValue, nil }
	newCache := func(srv *redistest.Server) (*tier.Node, *tier.Cache[string, string]) {
		n, err := tier.NewNode(ctx, srv.Client(b), cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Close() })
		c, err := tier.New(n, tier.Config[string, string]{
			Namespace: "bench-down",
			Fetch:     fetch,
			L1TTL:     -1, // every Get goes past L1
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
		return n, c
	}
	up := redistest.Start(b)
	_, upCache := newCache(up)
	down := redistest.Start(b)
	downNode, downCache := newCache(down)
	down.Kill()
	for downNode.Stats().BreakerOpens == 0 { // fail until the breaker opens
		if _, err := downCache.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		c    *tier.Cache[string, string]
	}{{"redis-up-L2-hit", upCache}, {"redis-down-breaker-open", downCache}} {
		c := tc.c
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Get(ctx, "k"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// No cache at all: the source alone. What the breaker-open Get costs
	// above it is the whole price of the outage.
	b.Run("no-cache-source-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := fetch(ctx, "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
	if st := downNode.Stats(); st.BreakerOpens == 0 {
		b.Fatalf("the breaker never opened: %+v", st)
	}
}
