package tier_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// The cluster benchmarks run each subject beside its baseline on one
// private Redis Cluster (3 masters, 1 replica each) in the same run, as the
// benchmarks of one server do: a claim about tiercache on a cluster is a
// ratio measured there, never an absolute number.

const (
	// clusterParallelism is the goroutines per GOMAXPROCS of the parallel
	// L2-hit sub-benchmarks: enough to keep three masters busy.
	clusterParallelism = 8
)

// clusterBenchNode starts a Node over client, closed at cleanup (before the
// client, which registered its cleanup first).
func clusterBenchNode(tb testing.TB, client *redis.ClusterClient, cfg tier.NodeConfig, hk *hooks.Points) *tier.Node {
	tb.Helper()
	n, err := tier.NewNodeWithHooks(context.Background(), client, cfg, hk)
	if err != nil {
		tb.Fatalf("NewNode: %v", err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	return n
}

// BenchmarkClusterGetL2Hit compares a tiercache Get answered by Redis (L1
// disabled for the cache) on a cluster with a bare GET of the very same
// stored bytes through the very same ClusterClient, serially and from
// clusterParallelism goroutines per CPU. The serial "breakdown" says where a
// hit's time goes beyond a GET: an EVALSHA of a script that only GETs (the
// cost of running a script at all), and l2.Store.ReadOrClaim on the same
// client (tiercache's read script, without the tier above it).
//
// Besides ns/op, each reports redis-cpu-µs/op, the CPU time of the
// masters' processes per operation (INFO cpu), and client-cpu-µs/op, this
// process's (getrusage): on this machine the two share two cores, so
// either one's CPU is latency.
func BenchmarkClusterGetL2Hit(b *testing.B) {
	const namespace = "bench-cluster-l2"
	cl := redistest.StartCluster(b, redistest.ClusterOptions{})
	rdb := cl.Client(b)
	// A long lease: a stall of this busy machine must not lapse it.
	n := clusterBenchNode(b, rdb, tier.NodeConfig{LeaseTTL: time.Minute}, nil)
	keys := benchKeys("user", benchKeyCount)
	c := benchCache[string](b, n, namespace, -1)
	ctx := context.Background()
	for _, k := range keys {
		if _, err := c.Get(ctx, k); err != nil {
			b.Fatalf("prefill Get(%q): %v", k, err)
		}
	}
	if st := n.Stats(); st.Caches.FillsLanded != benchKeyCount {
		b.Fatalf("prefill landed %d fills, want %d; stats %+v", st.Caches.FillsLanded, benchKeyCount, st)
	}
	// The bare reads read what the Gets read, and check it.
	l2Keys := make([]l2.Keys, len(keys))
	stored := make([]string, len(keys))
	masters := make(map[string]bool)
	for i, k := range keys {
		l2Keys[i] = l2.KeysFor(tier.DefaultPrefix, namespace, k)
		v, err := rdb.Get(ctx, l2Keys[i].Value).Result()
		if err != nil {
			b.Fatalf("GET %q: %v", l2Keys[i].Value, err)
		}
		stored[i] = v
		m, err := rdb.MasterForKey(ctx, l2Keys[i].Value)
		if err != nil {
			b.Fatal(err)
		}
		masters[m.Options().Addr] = true
	}
	if len(masters) != 3 {
		b.Fatalf("the keys lie on %d masters, want all 3", len(masters))
	}

	// loop runs read(i) b.N times, serially or in parallel, over the keys
	// in turn, and checks that the masters ran scripts EVALSHAs per read.
	// A shared counter gives every read a key of its own: no two
	// goroutines read one key at once, so no Get joins another's read (a
	// flight).
	loop := func(b *testing.B, parallel bool, scripts int, read func(i int) error) {
		var next atomic.Int64
		b.ReportAllocs()
		before := clusterCostNow(b, rdb)
		b.ResetTimer()
		if parallel {
			b.SetParallelism(clusterParallelism)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := read(int(next.Add(1) % benchKeyCount)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		} else {
			for i := 0; b.Loop(); i++ {
				if err := read(i % benchKeyCount); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StopTimer()
		if b.Failed() {
			b.FailNow()
		}
		after := clusterCostNow(b, rdb)
		if d := after.evalsha - before.evalsha; d != int64(scripts*b.N) {
			b.Fatalf("%d reads ran %d EVALSHAs on the masters, want %d each", b.N, d, scripts)
		}
		after.report(b, before)
	}
	get := func(i int) error {
		v, err := c.Get(ctx, keys[i])
		if err == nil && v != benchValue {
			err = fmt.Errorf("Get(%q) = %q, want %q", keys[i], v, benchValue)
		}
		return err
	}
	rawGet := func(i int) error {
		v, err := rdb.Get(ctx, l2Keys[i].Value).Bytes()
		if err == nil && string(v) != stored[i] {
			err = fmt.Errorf("GET %q read %d bytes, not the %d stored", l2Keys[i].Value, len(v), len(stored[i]))
		}
		return err
	}
	for _, mode := range []struct {
		name     string
		parallel bool
	}{{"serial", false}, {"parallel", true}} {
		b.Run(mode.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				before := n.Stats()
				// One script a Get: one round trip each.
				loop(b, mode.parallel, 1, get)
				checkHits(b, before, n.Stats(), 0, uint64(b.N))
			})
			b.Run("redis-raw-GET", func(b *testing.B) { loop(b, mode.parallel, 0, rawGet) })
		})
	}

	getScript := redis.NewScript(`return redis.call('GET', KEYS[1])`)
	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return getScript.Load(ctx, m).Err()
	}); err != nil {
		b.Fatalf("SCRIPT LOAD: %v", err)
	}
	store := l2.NewStore(rdb, tier.DefaultPrefix)
	b.Run("breakdown", func(b *testing.B) {
		b.Run("redis-raw-EVALSHA-GET", func(b *testing.B) {
			loop(b, false, 1, func(i int) error {
				v, err := getScript.EvalSha(ctx, rdb, []string{l2Keys[i].Value}).Text()
				if err == nil && v != stored[i] {
					err = fmt.Errorf("EVALSHA GET %q read %d bytes, not the %d stored", l2Keys[i].Value, len(v), len(stored[i]))
				}
				return err
			})
		})
		b.Run("l2-ReadOrClaim", func(b *testing.B) {
			loop(b, false, 1, func(i int) error {
				r, err := store.ReadOrClaim(ctx, l2Keys[i], "bench-token", time.Second)
				if err == nil && (r.State != l2.Hit || string(r.Value) != stored[i]) {
					err = fmt.Errorf("ReadOrClaim %q: state %v, %d bytes; want a hit of the %d stored", keys[i], r.State, len(r.Value), len(stored[i]))
				}
				return err
			})
		})
	})
}

// clusterCost is what a cluster's masters and this process have done so
// far: the EVALSHAs the masters ran (INFO commandstats; a command a script
// runs is not one) and the CPU time the masters' processes (INFO cpu) and
// this process (getrusage) used.
type clusterCost struct {
	evalsha   int64
	redisCPU  time.Duration
	clientCPU time.Duration
}

// clusterCostNow reads the masters' INFO commandstats and cpu sections,
// one command each, and this process's rusage.
func clusterCostNow(tb testing.TB, rdb *redis.ClusterClient) clusterCost {
	tb.Helper()
	var (
		mu  sync.Mutex
		out clusterCost
	)
	err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		info, err := m.Info(ctx, "commandstats", "cpu").Result()
		if err != nil {
			return err
		}
		var (
			calls int64
			cpu   time.Duration
		)
		for line := range strings.Lines(info) {
			line = strings.TrimSpace(line)
			// used_cpu_user:0.123456
			if name, v, ok := strings.Cut(line, ":"); ok && (name == "used_cpu_user" || name == "used_cpu_sys") {
				secs, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return fmt.Errorf("INFO cpu on %s: %q: %w", m.Options().Addr, line, err)
				}
				cpu += time.Duration(secs * float64(time.Second))
				continue
			}
			// cmdstat_evalsha:calls=3,usec=5,usec_per_call=1.67,...
			if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
				v, _, _ := strings.Cut(rest, ",")
				if calls, err = strconv.ParseInt(v, 10, 64); err != nil {
					return fmt.Errorf("INFO commandstats on %s: %q: %w", m.Options().Addr, line, err)
				}
			}
		}
		mu.Lock()
		out.evalsha += calls
		out.redisCPU += cpu
		mu.Unlock()
		return nil
	})
	if err != nil {
		tb.Fatalf("reading the masters' INFO: %v", err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	out.clientCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return out
}

// report reports the CPU time of the masters and of this process per
// operation of b since before.
func (now clusterCost) report(b *testing.B, before clusterCost) {
	perOp := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(b.N) }
	b.ReportMetric(perOp(now.redisCPU-before.redisCPU), "redis-cpu-µs/op")
	b.ReportMetric(perOp(now.clientCPU-before.clientCPU), "client-cpu-µs/op")
}
