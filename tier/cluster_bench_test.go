package tier_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache/bus"
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
	// clusterGroupMembers is the size of the big group of
	// BenchmarkClusterInvalidateGroup.
	clusterGroupMembers = 100_000
	// clusterFillWorkers bounds the Sets in flight while that group is
	// populated.
	clusterFillWorkers = 64
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
// clusterParallelism goroutines per CPU. The pair is not interleaved in one
// loop, as BenchmarkClusterPropagation's is: so alternated, the GETs took
// 81-91 µs against 43-48 µs on their own in the same session, presumably
// paying for what a Get leaves behind (the end of its load's goroutine, its
// garbage), and the ratio measured neither. The serial "breakdown" says
// where a hit's time goes beyond a GET: an EVALSHA of a script that only
// GETs (the cost of running a script at all), and l2.Store.ReadOrClaim on
// the same client (tiercache's read script, without the tier above it).
//
// Besides ns/op, each reports redis-cpu-µs/op, the CPU time of the
// cluster's processes per operation (INFO cpu of every master and replica),
// and client-cpu-µs/op, this process's (getrusage): on this machine they
// all share two cores, so anyone's CPU is latency.
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

	loop := func(b *testing.B, parallel bool, scripts int, read func(i int) error) {
		hitLoop(b, rdb, parallel, clusterParallelism, scripts, read)
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
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				before := n.Stats()
				// No script: a hit is an MGET and a PTTL.
				loop(b, mode.parallel, 0, get)
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
	envelopes := make([]string, len(stored))
	for i, v := range stored {
		st, err := l2.ParseStored(v)
		if err != nil {
			b.Fatalf("ParseStored(%q): %v", v, err)
		}
		envelopes[i] = st.Envelope
	}
	known := []string{"\x00all", "\x00ns\x00" + namespace}
	b.Run("breakdown", func(b *testing.B) {
		b.Run("l2-Peek", func(b *testing.B) {
			loop(b, false, 0, func(i int) error {
				r, ok, err := store.Peek(ctx, l2Keys[i], known, l2.Claim{})
				if err == nil && (!ok || string(r.Value) != envelopes[i]) {
					err = fmt.Errorf("Peek %q: %v, %d bytes; want a hit of the %d-byte envelope", keys[i], ok, len(r.Value), len(envelopes[i]))
				}
				return err
			})
		})
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
				if err == nil && (r.State != l2.Hit || string(r.Value) != envelopes[i]) {
					err = fmt.Errorf("ReadOrClaim %q: state %v, %d bytes; want a hit of the %d-byte envelope", keys[i], r.State, len(r.Value), len(envelopes[i]))
				}
				return err
			})
		})
	})
}

// hitLoop runs read(i) b.N times, serially or from parallelism goroutines
// per CPU, over the keys in turn, checks that the server (or cluster) rdb
// ran scripts EVALSHAs per read, and reports the CPU time of both sides
// per read. In parallel, each goroutine reads a block of the keys of its
// own: no two read one key at once, so no Get joins another's read (a
// flight) and every Get is a read of Redis.
func hitLoop(b *testing.B, rdb redis.UniversalClient, parallel bool, parallelism, scripts int, read func(i int) error) {
	b.ReportAllocs()
	before := costNow(b, rdb)
	b.ResetTimer()
	if parallel {
		b.SetParallelism(parallelism)
		goroutines := parallelism * runtime.GOMAXPROCS(0) // RunParallel's
		if goroutines > benchKeyCount {
			b.Fatalf("%d goroutines for %d keys: some would share keys", goroutines, benchKeyCount)
		}
		var ids atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			id := int(ids.Add(1) - 1)
			lo, hi := id*benchKeyCount/goroutines, (id+1)*benchKeyCount/goroutines
			for i := lo; pb.Next(); i++ {
				if i == hi {
					i = lo
				}
				if err := read(i); err != nil {
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
	after := costNow(b, rdb)
	if d := after.evalsha - before.evalsha; d != int64(scripts*b.N) {
		b.Fatalf("%d reads ran %d EVALSHAs, want %d each", b.N, d, scripts)
	}
	after.report(b, before)
}

// serverCost is what a Redis server or cluster and this process have done
// so far: the EVALSHAs its members ran (INFO commandstats; a command a
// script runs is not one, and replicas receive a script's effects, not the
// script) and the CPU time the members' processes (INFO cpu, masters and
// replicas) and this process (getrusage) used.
type serverCost struct {
	evalsha   int64
	redisCPU  time.Duration
	clientCPU time.Duration
}

// costNow reads INFO commandstats and cpu of rdb's server, or of every
// member of its cluster, one command each, and this process's rusage.
func costNow(tb testing.TB, rdb redis.UniversalClient) serverCost {
	tb.Helper()
	var (
		mu  sync.Mutex
		out serverCost
	)
	each := func(ctx context.Context, fn func(context.Context, *redis.Client) error) error {
		if cl, ok := rdb.(*redis.ClusterClient); ok {
			return cl.ForEachShard(ctx, fn)
		}
		return fn(ctx, rdb.(*redis.Client))
	}
	err := each(context.Background(), func(ctx context.Context, m *redis.Client) error {
		st, err := redistest.ReadStats(ctx, m)
		if err != nil {
			return err
		}
		calls, cpu := st.Commands["evalsha"].Calls, st.CPU
		mu.Lock()
		out.evalsha += calls
		out.redisCPU += cpu
		mu.Unlock()
		return nil
	})
	if err != nil {
		tb.Fatalf("reading the members' INFO: %v", err)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	out.clientCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return out
}

// report reports the CPU time of the server or cluster and of this process
// per operation of b since before.
func (now serverCost) report(b *testing.B, before serverCost) {
	perOp := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(b.N) }
	b.ReportMetric(perOp(now.redisCPU-before.redisCPU), "redis-cpu-µs/op")
	b.ReportMetric(perOp(now.clientCPU-before.clientCPU), "client-cpu-µs/op")
}

// shardSubscribers subscribes n bare go-redis PubSubs to the shard channel
// channel (SSUBSCRIBE), each on a cluster client of its own, and returns
// once every subscription is confirmed. Each has a goroutine that calls
// deliver for every message, with the time it was received. The goroutines
// stop at cleanup, before the clients close.
func shardSubscribers(tb testing.TB, cl *redistest.Cluster, channel string, n int, deliver func(r int, payload string, at time.Time)) {
	tb.Helper()
	opens := make([]func(context.Context) *redis.PubSub, n)
	for r := range opens {
		rdb := cl.Client(tb)
		opens[r] = func(ctx context.Context) *redis.PubSub { return rdb.SSubscribe(ctx, channel) }
	}
	subscribers(tb, "ssubscribe", channel, opens, deliver)
}

// BenchmarkClusterPropagation is BenchmarkPropagation on a cluster: how long
// after an Invalidate returns on one node each of 8 other nodes has applied
// it, against a bare SPUBLISH of a payload of the same size to 8 bare
// SSUBSCRIBE subscribers, on a shard channel in the bus's slot (so on the
// same master). Each iteration sends one message and waits for all 8
// receipts: latency, not throughput. A delay counts from the return of
// Invalidate (or SPublish) to the receiver's time of receipt, and is 0 if
// the receipt came first. p50-µs, p99-µs and max-µs are over every
// receiver's every delivery; ns/op is a whole round. "interleaved"
// alternates a round of each in one loop, for their ratio on a shared
// machine.
//
// On a cluster an Invalidate is two scripts, one after the other: the
// change in the key's slot, then the announcement (SPUBLISH) in the bus's
// slot; the delay counts from the return of the second.
func BenchmarkClusterPropagation(b *testing.B) {
	cl := redistest.StartCluster(b, redistest.ClusterOptions{})
	rig := newPropagationRig(b, clusterBenchNode(b, cl.Client(b), tier.NodeConfig{LeaseTTL: time.Minute}, nil), func(applied func(*bus.Message)) *tier.Node {
		return clusterBenchNode(b, cl.Client(b), tier.NodeConfig{LeaseTTL: time.Minute}, &hooks.Points{Bus: &bus.Hooks{Applied: applied}})
	})
	busChannel := l2.BusKeysFor(tier.DefaultPrefix, true).Channel
	// The bus's hash tag puts the bare channel in the bus's slot.
	rawChannel := "bench:raw-propagation:{" + tier.DefaultPrefix + ":bus}"
	if l2.Slot(rawChannel) != l2.Slot(busChannel) {
		b.Fatalf("%q is in slot %d, the bus %q in %d", rawChannel, l2.Slot(rawChannel), busChannel, l2.Slot(busChannel))
	}
	shardSubscribers(b, cl, rawChannel, propReceivers, rig.receive)
	rawPub := cl.Client(b)
	rig.run(b, "raw-SPUBLISH", func(payload string) error {
		n, err := rawPub.SPublish(rig.ctx, rawChannel, payload).Result()
		if err == nil && n != propReceivers {
			err = fmt.Errorf("SPUBLISH reached %d subscribers, want %d", n, propReceivers)
		}
		return err
	})
}

// BenchmarkClusterInvalidateGroup is BenchmarkInvalidateGroup on a cluster:
// invalidating a group of one member against a group of 100,000, in one
// run. On a cluster a group invalidation runs a script in every one of the
// 16384 slots whatever the group's size; a slot that holds members of the
// group also replaces the group's stamp there, and the 100,000 members lie
// in nearly every slot, the single one in one. The ratio of their ns/op is
// the figure (target under 2); "interleaved" measures it with the two
// alternating in one loop, which a shared machine's drift in load between
// two runs does not skew. redis-cpu-µs/op and client-cpu-µs/op are as in
// BenchmarkClusterGetL2Hit.
//
// After each timed loop, a sample of members of the group invalidated, and
// of the other group, are read: the first must be fetched again (stale),
// the second not, or the loop did not invalidate what it claims.
func BenchmarkClusterInvalidateGroup(b *testing.B) {
	const namespace = "bench-cluster-groups"
	cl := redistest.StartCluster(b, redistest.ClusterOptions{})
	rdb := cl.Client(b)
	// Every group invalidation pipelines 16384 scripts: give it more than
	// the default 500ms on this loaded machine (and under -race), so that a
	// slow one is measured rather than queued as pending.
	n := clusterBenchNode(b, rdb, tier.NodeConfig{LeaseTTL: time.Minute, RedisTimeout: 10 * time.Second}, nil)
	c, err := tier.New(n, tier.Config[string, string]{
		Namespace: namespace,
		Fetch:     func(context.Context, string) (string, error) { return benchValue, nil },
		TTL:       benchTTL,
		Groups: func(key, _ string) []string {
			if key == "one" {
				return []string{"group-of-1"}
			}
			return []string{"group-of-100k"}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	if err := c.Set(ctx, "one", benchValue); err != nil {
		b.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(clusterFillWorkers)
	for i := range clusterGroupMembers {
		g.Go(func() error { return c.Set(ctx, fmt.Sprint("member:", i), benchValue) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	// Every member is in Redis, on every master.
	perMaster := countPerMaster(b, rdb, l2.ValueKeyPattern(tier.DefaultPrefix, namespace))
	total := 0
	for _, v := range perMaster {
		total += v
	}
	if total != clusterGroupMembers+1 || len(perMaster) != 3 {
		b.Fatalf("Redis holds %d values over %d masters (%v), want %d over 3", total, len(perMaster), perMaster, clusterGroupMembers+1)
	}
	b.Logf("%d Sets in %v", clusterGroupMembers+1, time.Since(start).Round(time.Millisecond))

	sample := []string{"member:0", "member:1", "member:49999", "member:99999"}
	// check fails b unless every key of stale must be fetched again, and
	// no key of fresh.
	check := func(b *testing.B, what string, stale, fresh []string) {
		b.Helper()
		fetches := func(keys []string) uint64 {
			before := c.Stats().Fetches
			for _, k := range keys {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatalf("Get(%q): %v", k, err)
				}
			}
			return c.Stats().Fetches - before
		}
		if f := fetches(stale); f != uint64(len(stale)) {
			b.Fatalf("after %s, %d of %v were fetched again, want all", what, f, stale)
		}
		if f := fetches(fresh); f != 0 {
			b.Fatalf("after %s, %d of %v were fetched again, want none", what, f, fresh)
		}
	}
	cases := []struct {
		group        string
		stale, fresh []string
	}{
		{"group-of-1", []string{"one"}, sample},
		{"group-of-100k", sample, []string{"one"}},
	}
	for _, tc := range cases {
		b.Run(tc.group, func(b *testing.B) {
			b.ReportAllocs()
			before := costNow(b, rdb)
			for b.Loop() {
				if err := n.InvalidateGroup(ctx, tc.group); err != nil {
					b.Fatal(err)
				}
			}
			costNow(b, rdb).report(b, before)
			check(b, "InvalidateGroup("+tc.group+")", tc.stale, tc.fresh)
		})
	}
	// The two, one after the other in every iteration, so that the drift
	// of a shared machine's load between the runs above does not enter
	// their ratio: ns/op is the pair; group-of-1-ms and group-of-100k-ms
	// are each one's mean, ratio the second's over the first's.
	b.Run("interleaved", func(b *testing.B) {
		b.ReportAllocs()
		var took [2]time.Duration
		before := costNow(b, rdb)
		for b.Loop() {
			for j, tc := range cases {
				start := time.Now()
				if err := n.InvalidateGroup(ctx, tc.group); err != nil {
					b.Fatal(err)
				}
				took[j] += time.Since(start)
			}
		}
		costNow(b, rdb).report(b, before)
		check(b, "InvalidateGroup of both groups", append([]string{"one"}, sample...), nil)
		for j, tc := range cases {
			b.ReportMetric(float64(took[j])/float64(time.Millisecond)/float64(b.N), tc.group+"-ms")
		}
		b.ReportMetric(float64(took[1])/float64(took[0]), "ratio")
	})
}
