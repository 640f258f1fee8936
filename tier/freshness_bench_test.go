package tier_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkHerd counts source reads per herd: 1,000 concurrent Gets of one
// cold key, 100 on each of 10 nodes, with a source that takes 5ms. The
// baseline is plain cache-aside on the same Redis (GET; on a miss, read the
// source and SET), which every herd member does alone.
func BenchmarkHerd(b *testing.B) {
	const nodes, per = 10, 100
	srv := redistest.Start(b)
	var reads atomic.Int64
	fetch := func(context.Context, string) (string, error) {
		reads.Add(1)
		time.Sleep(5 * time.Millisecond) // the source's latency
		return benchValue, nil
	}
	caches := make([]*tier.Cache[string, string], nodes)
	for i := range caches {
		n := benchNode(b, srv)
		c, err := tier.New(n, tier.Config[string, string]{Namespace: "herd", Fetch: fetch, TTL: benchTTL})
		if err != nil {
			b.Fatal(err)
		}
		caches[i] = c
	}
	rdb := srv.Client(b)
	var herds atomic.Int64 // every herd, of every run, gets a key never read before
	herd := func(b *testing.B, get func(node int, key string) error) {
		reads.Store(0)
		for b.Loop() {
			key := fmt.Sprintf("herd:%d", herds.Add(1))
			var wg sync.WaitGroup
			errs := make(chan error, nodes*per)
			for node := range nodes {
				for range per {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := get(node, key); err != nil {
							errs <- err
						}
					}()
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(reads.Load())/float64(b.N), "source-reads/herd")
	}
	b.Run("tiercache", func(b *testing.B) {
		herd(b, func(node int, key string) error {
			_, err := caches[node].Get(context.Background(), key)
			return err
		})
	})
	b.Run("cache-aside-raw", func(b *testing.B) {
		herd(b, func(_ int, key string) error {
			ctx := context.Background()
			if err := rdb.Get(ctx, "raw:"+key).Err(); !errors.Is(err, redis.Nil) {
				return err
			}
			v, _ := fetch(ctx, key)
			return rdb.Set(ctx, "raw:"+key, v, benchTTL).Err()
		})
	})
}

// BenchmarkGetMany reads 100 keys held in Redis (L1 off, so that every
// read goes to Redis): one GetMany against 100 sequential Gets, and against
// a raw pipelined MGET of the same keys; it reports round trips per op.
func BenchmarkGetMany(b *testing.B) {
	const namespace = "bench-many"
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	warmPools(b, rdb)
	rt := &rtCounter{}
	rdb.AddHook(rt)
	n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{LeaseTTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = n.Close() })
	c := benchCache[string](b, n, namespace, -1)
	keys := benchKeys("user", 100)
	ctx := context.Background()
	if _, err := c.GetMany(ctx, keys); err != nil {
		b.Fatal(err)
	}
	valueKeys := benchValueKeys(namespace, keys)
	measure := func(b *testing.B, op func() error) {
		b.ReportAllocs()
		before, st := rt.n.Load(), n.Stats()
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(rt.n.Load()-before)/float64(b.N), "round-trips/op")
		if d := n.Stats().Caches.Fetches - st.Caches.Fetches; d != 0 {
			b.Fatalf("%d fetches: not every key was in Redis", d)
		}
	}
	b.Run("GetMany-100", func(b *testing.B) {
		measure(b, func() error { return getAll(ctx, c, keys) })
	})
	b.Run("Get-x100", func(b *testing.B) {
		measure(b, func() error {
			for _, k := range keys {
				if _, err := c.Get(ctx, k); err != nil {
					return err
				}
			}
			return nil
		})
	})
	b.Run("redis-raw-MGET-100", func(b *testing.B) {
		measure(b, func() error { return rdb.MGet(ctx, valueKeys...).Err() })
	})
}

// getAll reads keys with c.GetMany and fails unless each has a value.
func getAll(ctx context.Context, c *tier.Cache[string, string], keys []string) error {
	m, err := c.GetMany(ctx, keys)
	if err == nil && len(m) != len(keys) {
		err = fmt.Errorf("GetMany: %d values of %d", len(m), len(keys))
	}
	return err
}

// BenchmarkStaleHit compares a stale-while-revalidate hit in L1 (the value
// is past FreshFor; a refresh is already running, held for the whole run)
// with a fresh L1 hit on the same node.
func BenchmarkStaleHit(b *testing.B) {
	srv := redistest.Start(b)
	var clk clock
	n, err := tier.NewNodeWithHooks(context.Background(), srv.Client(b), tier.NodeConfig{LeaseTTL: time.Minute}, &hooks.Points{Now: clk.read})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = n.Close() })
	hold := make(chan struct{})
	var holding atomic.Bool
	newC := func(namespace string, freshFor time.Duration) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{
			Namespace: namespace,
			Fetch: func(ctx context.Context, _ string) (string, error) {
				if holding.Load() {
					select { // the refresh runs until the benchmark ends
					case <-hold:
					case <-ctx.Done():
					}
				}
				return benchValue, nil
			},
			TTL: benchTTL, FreshFor: freshFor, L1TTL: benchTTL,
		})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	fresh, stale := newC("fresh", 0), newC("stale", time.Hour)
	keys := benchKeys("user", benchKeyCount)
	warmL1(b, n, fresh, keys)
	warmL1(b, n, stale, keys)
	holding.Store(true)
	b.Cleanup(func() { close(hold) })
	ctx := context.Background()
	rdbObs := srv.Client(b)
	for _, k := range keys {
		// Redis: in the stale window, so the refresh claims and fetches.
		if err := rdbObs.PExpire(ctx, l2.KeysFor(tier.DefaultPrefix, "stale", k).Value, benchTTL-2*time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	clk.advance(2 * time.Hour) // only "stale" has a FreshFor window to leave
	for _, k := range keys {
		var ri tier.ReadInfo
		if _, err := stale.Get(ctx, k, tier.Info(&ri)); err != nil || !ri.Stale || ri.Source != tier.SourceL1 {
			b.Fatalf("setup: %+v, %v; want a stale L1 hit", ri, err)
		}
	}
	// Every stale key's refresh has reached the source, where it is held.
	deadline := time.Now().Add(time.Minute)
	for n.Stats().Caches.Fetches < 3*benchKeyCount {
		if time.Now().After(deadline) {
			b.Fatalf("refreshes did not start: %+v", n.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	run := func(b *testing.B, c *tier.Cache[string, string], wantStale bool) {
		b.ReportAllocs()
		before := n.Stats()
		for i := 0; b.Loop(); i++ {
			if _, err := c.Get(ctx, keys[i%benchKeyCount]); err != nil {
				b.Fatal(err)
			}
		}
		st := n.Stats()
		if got := st.Caches.StaleServed - before.Caches.StaleServed; wantStale != (got == uint64(b.N)) || !wantStale && got != 0 {
			b.Fatalf("%d stale hits in %d Gets", got, b.N)
		}
		checkHits(b, before, st, uint64(b.N), 0)
	}
	b.Run("fresh-L1-hit", func(b *testing.B) { run(b, fresh, false) })
	b.Run("stale-L1-hit", func(b *testing.B) { run(b, stale, true) })
}
