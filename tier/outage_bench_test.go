package tier_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	ctxwait "github.com/tiercache/tiercache/internal/wait"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkOutageSourceLoad measures what a Redis outage does to the
// source: the source reads per second during a 5 s outage divided by those
// of the steady state before it (2 s), with the degraded mode of
// NodeConfig.OutageMaxAge off (the default) and on, in the same run. The
// fleet: 3 nodes, 4 workers each, reading 1,000 keys of Zipf popularity
// (s = 1.1) and writing 1% of the time (update the source, then
// Invalidate), against a source that takes 200 µs. Each iteration is one
// steady phase and one outage; metrics: "outage/steady", the ratio of
// source reads per second, and "outage/steady-per-op", the ratio of source
// reads per operation (the same traffic; an outage also changes how many
// operations the fleet completes).
func BenchmarkOutageSourceLoad(b *testing.B) {
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
	}{{"degraded-off", 0}, {"degraded-on", time.Minute}} {
		b.Run(tc.name, func(b *testing.B) {
			var ratio float64
			for b.Loop() {
				ratio = outageLoad(b, tc.maxAge)
			}
			b.ReportMetric(ratio, "outage/steady")
		})
	}
}

// outageLoad runs one steady phase and one outage and returns the ratio of
// their source read rates.
func outageLoad(b *testing.B, maxAge time.Duration) float64 {
	const (
		nodes, workers, keys = 3, 4, 1000
		steady, outage       = 2 * time.Second, 5 * time.Second
		fetchCost            = 200 * time.Microsecond
	)
	srv := redistest.Start(b)
	var reads atomic.Int64
	fetch := slowSource(fetchCost, &reads)
	cfg := tier.NodeConfig{LeaseTTL: 500 * time.Millisecond, RedisTimeout: 100 * time.Millisecond, OutageMaxAge: maxAge}
	var caches []*tier.Cache[string, string]
	for range nodes {
		n, err := tier.NewNode(context.Background(), srv.Client(b), cfg)
		if err != nil {
			b.Fatal(err)
		}
		c, err := tier.New(n, tier.Config[string, string]{Namespace: "outage", Fetch: fetch})
		if err != nil {
			b.Fatal(err)
		}
		caches = append(caches, c)
		defer func() { _ = n.Close() }()
	}
	var ops atomic.Int64 // reads and writes begun
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var failed atomic.Value
	for i, c := range caches {
		for w := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				zipf := rand.NewZipf(r, 1.1, 1, keys-1)
				for ctx.Err() == nil {
					ops.Add(1)
					key := fmt.Sprint("k", zipf.Uint64())
					if r.IntN(100) == 0 {
						if err := c.Invalidate(ctx, key); err != nil && !errors.Is(err, tier.ErrPending) && ctx.Err() == nil {
							failed.Store(err)
						}
						continue
					}
					if _, err := c.Get(ctx, key); err != nil && !errors.Is(err, tier.ErrStale) && ctx.Err() == nil {
						failed.Store(err)
					}
				}
			})
		}
	}
	// phase returns the source reads per second and per operation over d.
	phase := func(d time.Duration) (perSec, perOp float64) {
		r0, o0 := reads.Load(), ops.Load()
		start := time.Now()
		time.Sleep(d) // the phase's length: the workers run meanwhile
		r, o := float64(reads.Load()-r0), float64(ops.Load()-o0)
		return r / time.Since(start).Seconds(), r / o
	}
	phase(time.Second) // warm up: fill both tiers
	steadyRate, steadyPerOp := phase(steady)
	srv.Kill()
	outageRate, outagePerOp := phase(outage)
	stop()
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("a read or write failed: %v", err)
	}
	b.ReportMetric(steadyRate, "steady-reads/s")
	b.ReportMetric(outageRate, "outage-reads/s")
	b.ReportMetric(outagePerOp/steadyPerOp, "outage/steady-per-op")
	return outageRate / steadyRate
}

// BenchmarkIdleOutageCPU measures the CPU a node uses while Redis is down,
// with 100 invalidations pending and no traffic, over 2 s of each
// iteration, as a fraction of one core (getrusage of the whole test
// process, which does nothing else meanwhile). Baseline in the same run:
// the same node with Redis up and nothing pending.
func BenchmarkIdleOutageCPU(b *testing.B) {
	for _, down := range []bool{false, true} {
		name := "redis-up-idle"
		if down {
			name = "redis-down-100-pending"
		}
		b.Run(name, func(b *testing.B) {
			var frac float64
			for b.Loop() {
				frac = idleCPU(b, down)
			}
			b.ReportMetric(frac, "cores")
		})
	}
}

func idleCPU(b *testing.B, down bool) float64 {
	srv := redistest.Start(b)
	n, err := tier.NewNode(context.Background(), srv.Client(b), tier.NodeConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = n.Close() }()
	c, err := tier.New(n, tier.Config[string, string]{Namespace: "idle", Fetch: func(context.Context, string) (string, error) { return "v", nil }})
	if err != nil {
		b.Fatal(err)
	}
	if down {
		srv.Kill()
		for i := range 100 {
			if err := c.Invalidate(context.Background(), fmt.Sprint("k", i)); !errors.Is(err, tier.ErrPending) {
				b.Fatalf("Invalidate = %v; want ErrPending", err)
			}
		}
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	const idle = 2 * time.Second
	before, start := cpu(), time.Now()
	time.Sleep(idle) // the node is left alone; its own goroutines run
	return float64(cpu()-before) / float64(time.Since(start))
}

// BenchmarkOutageThroughput compares, in one run, a node's Gets while
// Redis is down (breaker open, degraded mode off) with the same Gets made
// straight to the source, no cache at all: 16 goroutines over 1,000 keys of
// Zipf popularity (s = 1.1), against a source that takes 200 µs. ns/op is
// the time per Get across the goroutines: the outage must cost no more
// than having no cache (concurrent Gets of a key share one fetch).
func BenchmarkOutageThroughput(b *testing.B) {
	fetch := slowSource(200*time.Microsecond, nil)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	run := func(b *testing.B, get func(ctx context.Context, key string) (string, error)) {
		var seed atomic.Uint64
		b.SetParallelism(8) // 16 goroutines on 2 cores
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 0))
			zipf := rand.NewZipf(r, 1.1, 1, uint64(len(keys)-1))
			ctx := context.Background()
			for pb.Next() {
				if _, err := get(ctx, keys[zipf.Uint64()]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("no-cache", func(b *testing.B) { run(b, fetch) })
	b.Run("redis-down", func(b *testing.B) {
		srv := redistest.Start(b)
		n, err := tier.NewNode(context.Background(), srv.Client(b), tier.NodeConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = n.Close() }()
		c, err := tier.New(n, tier.Config[string, string]{Namespace: "down", Fetch: fetch})
		if err != nil {
			b.Fatal(err)
		}
		srv.Kill()
		for n.Stats().BreakerOpens == 0 { // the first refused dial opens it
			if _, err := c.Get(context.Background(), "k0"); err != nil {
				b.Fatal(err)
			}
		}
		run(b, func(ctx context.Context, key string) (string, error) { return c.Get(ctx, key) })
	})
}

// slowSource is a source whose every read takes cost (or until ctx ends)
// and answers the key itself, counting its reads in reads if not nil.
func slowSource(cost time.Duration, reads *atomic.Int64) func(context.Context, string) (string, error) {
	return func(ctx context.Context, key string) (string, error) {
		if reads != nil {
			reads.Add(1)
		}
		if err := ctxwait.Sleep(ctx, cost); err != nil {
			return "", err
		}
		return key, nil
	}
}
