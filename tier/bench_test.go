package tier_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/interleave"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// Every benchmark here runs its subject and a baseline side by side in one
// run, so that a claim about tiercache's speed is a ratio measured on the
// same machine at the same time, never an absolute number.

const (
	// benchKeyCount is the number of distinct keys of the hit benchmarks.
	benchKeyCount = 1024
	// benchTTL outlives any benchmark run, so that no entry of either tier
	// expires during a timed loop and turns hits into misses.
	benchTTL = 24 * time.Hour
)

// benchValue is the value of every key: a small object of 64 bytes.
var benchValue = strings.Repeat("v", 64)

// benchModes are the two ways the hit benchmarks run: one goroutine, and
// b.RunParallel's.
var benchModes = []struct {
	name     string
	parallel bool
}{{"serial", false}, {"parallel", true}}

// benchKeys returns n key strings "prefix:i", formatted before any timing.
func benchKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s:%d", prefix, i)
	}
	return keys
}

// benchFlagKeys returns the Redis key of each of keys' flags in namespace.
func benchFlagKeys(namespace string, keys []string) []string {
	fk := make([]string, len(keys))
	for i, k := range keys {
		fk[i] = l2.KeysFor(tier.DefaultPrefix, namespace, k).Flag
	}
	return fk
}

// benchValueKeys returns the Redis key of each of keys' values in
// namespace.
func benchValueKeys(namespace string, keys []string) []string {
	vk := make([]string, len(keys))
	for i, k := range keys {
		vk[i] = l2.KeysFor(tier.DefaultPrefix, namespace, k).Value
	}
	return vk
}

// benchEnvelope returns an envelope of about the size of the one
// tiercache stores in stored bytes (header and envelope).
func benchEnvelope(stored string) []byte { return make([]byte, len(stored)-200) }

// benchNode starts a Node over its own client of srv, closed at cleanup
// (before srv and the client, which registered their cleanups first).
func benchNode(tb testing.TB, srv *redistest.Server) *tier.Node {
	tb.Helper()
	// A long lease: a stall of this busy machine must not lapse it in the
	// middle of a timed loop that counts L1 hits.
	n, err := tier.NewNode(context.Background(), srv.Client(tb), tier.NodeConfig{LeaseTTL: time.Minute})
	if err != nil {
		tb.Fatalf("NewNode: %v", err)
	}
	tb.Cleanup(func() { _ = n.Close() })
	return n
}

// benchCache returns a Cache of namespace on n whose Fetch answers benchValue
// for every key.
func benchCache[K comparable](tb testing.TB, n *tier.Node, namespace string, l1TTL time.Duration) *tier.Cache[K, string] {
	tb.Helper()
	c, err := tier.New(n, tier.Config[K, string]{
		Namespace: namespace,
		Fetch:     func(context.Context, K) (string, error) { return benchValue, nil },
		TTL:       benchTTL,
		L1TTL:     l1TTL,
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return c
}

// warmL1 gets every key until each of them is an L1 hit of c: the first
// pass fetches and fills both tiers; ristretto applies fills asynchronously
// and may drop a buffered Set, so a key that still misses is got again.
func warmL1[K comparable](tb testing.TB, n *tier.Node, c *tier.Cache[K, string], keys []K) {
	tb.Helper()
	ctx := context.Background()
	for _, k := range keys {
		if _, err := c.Get(ctx, k); err != nil {
			tb.Fatalf("prefill Get(%v): %v", k, err)
		}
	}
	for range 5 {
		tier.WaitL1(n)
		before := n.Stats()
		for _, k := range keys {
			if _, err := c.Get(ctx, k); err != nil {
				tb.Fatalf("warm Get(%v): %v", k, err)
			}
		}
		if hits := n.Stats().Caches.L1Hits - before.Caches.L1Hits; hits == uint64(len(keys)) {
			return
		}
	}
	tb.Fatalf("after 5 rounds, not every one of %d keys is an L1 hit; stats %+v", len(keys), n.Stats())
}

// checkHits fails tb unless the node's counters moved between before and
// after exactly as l1 L1 hits and l2 L2 hits, with no fetch: the timed loop
// measured the path it claims to measure.
func checkHits(tb testing.TB, before, after tier.Stats, l1, l2 uint64) {
	tb.Helper()
	if d := after.Caches.Fetches - before.Caches.Fetches; d != 0 {
		tb.Fatalf("timed loop made %d fetches; the hit path was not measured", d)
	}
	if d := after.Caches.L2Hits - before.Caches.L2Hits; d != l2 {
		tb.Fatalf("timed loop had %d L2 hits, want %d", d, l2)
	}
	if d := after.Caches.L1Hits - before.Caches.L1Hits; d != l1 {
		tb.Fatalf("timed loop had %d L1 hits, want %d", d, l1)
	}
}

// l1Bench starts what the L1 benchmarks compare: a server and a node, the
// benchmark's keys, a Cache on the node that holds every key in L1, and a
// raw ristretto cache that holds them too.
func l1Bench(b *testing.B) (*redistest.Server, *tier.Node, []string, *tier.Cache[string, string], *ristretto.Cache[string, string]) {
	b.Helper()
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	keys := benchKeys("user", benchKeyCount)
	c := benchCache[string](b, n, "bench-l1", benchTTL)
	warmL1(b, n, c, keys)
	return srv, n, keys, c, newRawRistretto(b, keys)
}

// newRawRistretto returns a ristretto cache configured like a Node's L1
// (counters, budget, buffers) holding benchValue under every key.
func newRawRistretto(tb testing.TB, keys []string) *ristretto.Cache[string, string] {
	tb.Helper()
	rc, err := ristretto.NewCache(&ristretto.Config[string, string]{
		NumCounters: 1e5,
		MaxCost:     64 << 20,
		BufferItems: 64,
	})
	if err != nil {
		tb.Fatalf("ristretto.NewCache: %v", err)
	}
	tb.Cleanup(rc.Close)
	// A Set may be dropped by ristretto's buffer; set until all are there.
	for range 5 {
		missing := 0
		for _, k := range keys {
			if _, ok := rc.Get(k); !ok {
				missing++
				rc.Set(k, benchValue, int64(len(k)+len(benchValue)))
			}
		}
		if missing == 0 {
			return rc
		}
		rc.Wait()
	}
	tb.Fatal("ristretto did not admit every key")
	return nil
}

// BenchmarkGetL1Hit compares a tiercache L1 hit with a Get on a bare
// ristretto cache of the same keys and values, serially and in parallel.
//
// "coarse-lease" is the hit as it was before the lease was checked against
// the monotonic clock at every hit (R40), with a hook that restores the
// coarse clock: the cost of surviving a process pause, in the same run.
// "recorder" is the hit with a Recorder that counts Gets (it reads the
// clock twice for the latency): the cost of metrics; "tiercache" has none.
// "ristretto-raw-clock" is the raw Get plus the one reading of the
// monotonic clock that R40 requires of every hit: the floor of a hit that
// cannot be served stale after a process pause.
func BenchmarkGetL1Hit(b *testing.B) {
	srv, n, keys, c, rc := l1Bench(b)
	coarseNode, err := tier.NewNodeWithHooks(context.Background(), srv.Client(b), tier.NodeConfig{LeaseTTL: time.Minute},
		&hooks.Points{L1: &l1.Hooks{CoarseLease: true}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = coarseNode.Close() })
	coarse := benchCache[string](b, coarseNode, "bench-l1", benchTTL)
	warmL1(b, coarseNode, coarse, keys)
	recNode, err := tier.NewNode(context.Background(), srv.Client(b), tier.NodeConfig{LeaseTTL: time.Minute, Recorder: &countingRecorder{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = recNode.Close() })
	recorded := benchCache[string](b, recNode, "bench-l1", benchTTL)
	warmL1(b, recNode, recorded, keys)

	tiercache := func(b *testing.B, n *tier.Node, c *tier.Cache[string, string], parallel bool) {
		ctx := context.Background()
		b.ReportAllocs()
		before := n.Stats()
		b.ResetTimer()
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := c.Get(ctx, keys[i%benchKeyCount]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		} else {
			for i := 0; b.Loop(); i++ {
				if _, err := c.Get(ctx, keys[i%benchKeyCount]); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.StopTimer()
		checkHits(b, before, n.Stats(), uint64(b.N), 0)
	}
	raw := func(b *testing.B, parallel bool) {
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, ok := rc.Get(keys[i%benchKeyCount]); !ok {
						b.Error("ristretto miss")
						return
					}
					i++
				}
			})
		} else {
			for i := 0; b.Loop(); i++ {
				if _, ok := rc.Get(keys[i%benchKeyCount]); !ok {
					b.Fatal("ristretto miss")
				}
			}
		}
	}
	// The floor of a hit that survives a process pause (R40): a raw Get,
	// then one reading of the monotonic clock checked against a deadline.
	epoch := time.Now()
	clocked := func(b *testing.B, parallel bool) {
		b.ReportAllocs()
		b.ResetTimer()
		get := func(i int) bool {
			_, ok := rc.Get(keys[i%benchKeyCount])
			return ok && time.Since(epoch) < time.Hour
		}
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if !get(i) {
						b.Error("ristretto miss")
						return
					}
					i++
				}
			})
		} else {
			for i := 0; b.Loop(); i++ {
				if !get(i) {
					b.Fatal("ristretto miss")
				}
			}
		}
	}
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) { tiercache(b, n, c, mode.parallel) })
			b.Run("tiercache-coarse-lease", func(b *testing.B) { tiercache(b, coarseNode, coarse, mode.parallel) })
			b.Run("tiercache-recorder", func(b *testing.B) { tiercache(b, recNode, recorded, mode.parallel) })
			b.Run("ristretto-raw", func(b *testing.B) { raw(b, mode.parallel) })
			b.Run("ristretto-raw-clock", func(b *testing.B) { clocked(b, mode.parallel) })
		})
	}
}

// countingRecorder is the cheapest useful Recorder: it counts Gets by
// answer, on one atomic counter each.
type countingRecorder struct {
	tier.NopRecorder
	gets [8]atomic.Uint64
}

func (r *countingRecorder) Get(_ string, a tier.Answer, _ time.Duration) { r.gets[a&7].Add(1) }

// BenchmarkGetL2Hit compares a tiercache Get answered by Redis (L1
// disabled for the cache) with a bare GET of the very same stored bytes,
// serially and from l2HitParallelism goroutines per CPU, each reading keys
// of its own (no Get joins another's flight). A hit of a key the node has
// seen in Redis runs no script (l2.Store.Peek: an MGET of the value and
// two group stamps, and a PTTL); the benchmark checks that none ran.
// Concurrent hits share a round trip (joined peeks, R57).
//
// "redis-raw-PTTL+MGET" is the floor of a peek alone: the same two
// commands in one go-redis pipeline, bare, each Get on its own; its
// allocations are go-redis's, for the commands a hit cannot do without.
// "l2-Peek" is the peek without the tier above it (the same commands,
// queued at once, under the Store's timeout and breaker).
//
// Besides ns/op, each reports redis-cpu-µs/op, the CPU time of the
// redis-server process per operation (INFO cpu), the capacity figure of a
// fleet (how many reads one Redis serves), and client-cpu-µs/op, this
// process's (getrusage): on this machine both share two cores.
func BenchmarkGetL2Hit(b *testing.B) {
	const namespace = "bench-l2"
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	rdb := srv.Client(b)
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
	valueKeys := benchValueKeys(namespace, keys)
	l2Keys := make([]l2.Keys, len(keys))
	for i, k := range keys {
		l2Keys[i] = l2.KeysFor(tier.DefaultPrefix, namespace, k)
	}
	// The peek alone, without the tier above it, on a Store of its own.
	st := l2.NewStore(rdb, tier.DefaultPrefix)
	known := tier.KnownGroups(c)
	fleetStamp, nsStamp := l2.GroupKey(tier.DefaultPrefix, known[0]), l2.GroupKey(tier.DefaultPrefix, known[1])
	// No script: a hit of a key the node has seen is an MGET and a PTTL.
	loop := func(b *testing.B, parallel bool, read func(i int) error) {
		hitLoop(b, rdb, parallel, l2HitParallelism, 0, read)
	}
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				before := n.Stats()
				loop(b, mode.parallel, func(i int) error {
					_, err := c.Get(ctx, keys[i])
					return err
				})
				checkHits(b, before, n.Stats(), 0, uint64(b.N))
			})
			b.Run("redis-raw-GET", func(b *testing.B) {
				loop(b, mode.parallel, func(i int) error {
					return rdb.Get(ctx, valueKeys[i]).Err()
				})
			})
			b.Run("l2-Peek", func(b *testing.B) {
				loop(b, mode.parallel, func(i int) error {
					_, ok, err := st.Peek(ctx, l2Keys[i], known, l2.Claim{})
					if err == nil && !ok {
						err = fmt.Errorf("Peek(%q) missed", l2Keys[i].Value)
					}
					return err
				})
			})
			b.Run("redis-raw-PTTL+MGET", func(b *testing.B) {
				loop(b, mode.parallel, func(i int) error {
					return peekPipeline(ctx, rdb, valueKeys[i], fleetStamp, nsStamp)
				})
			})
		})
	}
}

// peekPipeline sends what a hit of value needs, bare: its PTTL and one
// MGET of it and the stamps, in one go-redis pipeline.
func peekPipeline(ctx context.Context, rdb *redis.Client, value string, stamps ...string) error {
	pipe := rdb.Pipeline()
	pipe.PTTL(ctx, value)
	pipe.MGet(ctx, append([]string{value}, stamps...)...)
	_, err := pipe.Exec(ctx)
	return err
}

// l2HitParallelism is the goroutines per GOMAXPROCS of BenchmarkGetL2Hit's
// parallel runs: 16 on this 2-core machine.
const l2HitParallelism = 8

// BenchmarkGetMissFill measures a Get of a key no tier holds (miss, claim,
// fetch, fill of both tiers), against the bare Redis work of a cache-aside
// miss: a GET that misses and a SET PX of a value of the same size.
// "tiercache" is a caller whose ctx cannot be cancelled,
// "tiercache-cancellable" one whose can. Three more say where the
// difference goes: "tiercache-no-L1", the first with L1 off, what the L1
// fill costs (it wakes ristretto's worker goroutine, on another thread);
// "l2-ReadOrClaim+FillInGroups", the same claim and fill through
// l2.Store without the tier above it, and "redis-raw-claim+fill-scripts",
// the floor of a fenced miss. Each reports redis-cpu-µs/op and
// client-cpu-µs/op as BenchmarkGetL2Hit does.
func BenchmarkGetMissFill(b *testing.B) {
	const namespace = "bench-miss"
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	rdb := srv.Client(b)
	c := benchCache[string](b, n, namespace, benchTTL)
	ctx := context.Background()

	// The raw SET writes as many bytes as tiercache stores for one key.
	rawValue := storedBytes(b, rdb, c, namespace)

	// Every run of a sub-benchmark takes fresh keys: none was ever cached.
	next := 0
	coldKeys := func(b *testing.B, prefix string) []string {
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = fmt.Sprintf("%s:%d", prefix, next)
			next++
		}
		return keys
	}

	// "tiercache" is a caller whose ctx cannot be cancelled, whose flight
	// runs the load in its goroutine; "tiercache-cancellable" one whose ctx
	// can, whose flight runs it in another; "tiercache-no-L1" the first, of
	// a Cache with L1 off.
	cancellable, cancel := context.WithCancel(ctx)
	defer cancel()
	noL1 := benchCache[string](b, n, namespace+"-no-l1", -1)
	for _, caller := range []struct {
		name string
		c    *tier.Cache[string, string]
		ctx  context.Context
	}{{"tiercache", c, ctx}, {"tiercache-cancellable", c, cancellable}, {"tiercache-no-L1", noL1, ctx}} {
		b.Run(caller.name, func(b *testing.B) {
			keys := coldKeys(b, caller.name+":cold")
			before := n.Stats()
			withCost(b, rdb, func() {
				for i := range b.N {
					if _, err := caller.c.Get(caller.ctx, keys[i]); err != nil {
						b.Fatal(err)
					}
				}
			})
			after := n.Stats()
			if f, l := after.Caches.Fetches-before.Caches.Fetches, after.Caches.FillsLanded-before.Caches.FillsLanded; f != uint64(b.N) || l != uint64(b.N) {
				b.Fatalf("timed loop made %d fetches and %d fills, want %d each", f, l, b.N)
			}
		})
	}
	b.Run("redis-raw-GET+SET", func(b *testing.B) {
		keys := coldKeys(b, "raw:cold")
		withCost(b, rdb, func() {
			for i := range b.N {
				if err := rdb.Get(ctx, keys[i]).Err(); !errors.Is(err, redis.Nil) {
					b.Fatalf("GET of a cold key: %v, want redis.Nil", err)
				}
				if err := rdb.Set(ctx, keys[i], rawValue, benchTTL).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// The same miss in l2 alone, without the tier above it: the read
	// script's claim, then the fill script, in the Cache's two groups.
	st := l2.NewStore(rdb, tier.DefaultPrefix)
	known := tier.KnownGroups(c)
	env := benchEnvelope(rawValue)
	b.Run("l2-ReadOrClaim+FillInGroups", func(b *testing.B) {
		keys := coldKeys(b, "l2:cold")
		withCost(b, rdb, func() {
			for i := range b.N {
				if err := l2Miss(ctx, st, l2.KeysFor(tier.DefaultPrefix, namespace, keys[i]), env, known); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// The floor of a fenced miss (floorClaim, floorFill).
	b.Run("redis-raw-claim+fill-scripts", func(b *testing.B) {
		keys := coldKeys(b, "raw:claimed")
		ttl := benchTTL.Milliseconds()
		withCost(b, rdb, func() {
			for i := range b.N {
				kv := []string{keys[i], keys[i] + ":flag"}
				if err := fencedMiss(ctx, rdb, kv, rawValue, ttl); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// The same floor, keeping the group check (floorClaimInGroups,
	// floorFillInGroups).
	grouped := newGroupedFloor(b, rdb, rawValue)
	b.Run("redis-raw-claim+fill-scripts-in-groups", func(b *testing.B) {
		keys := coldKeys(b, "raw:grouped")
		withCost(b, rdb, func() {
			for i := range b.N {
				if err := grouped.miss(ctx, keys[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// The floors of the benchmarks' baselines: bare scripts that do only what a
// guarantee requires, no more.
var (
	// floorClaim and floorFill are the floor of any miss that a fetch begun
	// before an invalidation cannot fill (R01): a claim taken in the read
	// that finds the key absent, and a fill that writes only while the
	// claim holds. KEYS: value, flag. ARGV: token; then value, TTL in ms.
	floorClaim = redis.NewScript(`
if redis.call('GET', KEYS[1]) then return 0 end
return redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', 5000) and 1 or 0`)
	floorFill = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1`)
	// floorClaimInGroups and floorFillInGroups are the same floor keeping
	// the group check (R31, R36) of an entry in two groups, as a Cache's
	// are: the claim reads the group clock; the fill writes only while the
	// claim holds and the clock has not moved since (no group was
	// invalidated anywhere), and stores the groups' stamps with the value,
	// for a later hit to check. Nothing else: no refresh, no check of a
	// present value, no keep-alive of the stamps. KEYS: value, flag, clock,
	// two stamps. ARGV: token; then the clock the claim read, value, TTL.
	floorClaimInGroups = redis.NewScript(`
if redis.call('GET', KEYS[1]) then return false end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', 5000) then return false end
return redis.call('GET', KEYS[3]) or ''`)
	floorFillInGroups = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[3]) or '') ~= ARGV[2] then return 0 end
local s1, s2 = redis.call('GET', KEYS[4]), redis.call('GET', KEYS[5])
if not s1 or not s2 then return 0 end
redis.call('SET', KEYS[1], s1 .. s2 .. ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
return 1`)
	// floorDelete and floorSet are the floor of a write that announces
	// itself in the same atomic step as its change (R14): change the key,
	// draw a sequence number, publish. KEYS: value, sequence. ARGV:
	// channel, message; then, for floorSet, value and TTL in ms.
	floorDelete = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])`)
	floorSet = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('INCR', KEYS[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])`)
	// floorDeleteFenced and floorSetGuarded add what a write keeps besides
	// its announcement. Both delete the key's flag, so that a fill in
	// progress is refused (R01). floorSetGuarded also reads the stamps of
	// the value's two groups and stores them with it (the group check,
	// R31), and reads Redis's clock, which the bound on a late write needs
	// (R44): no header, no keep-alive of the stamps. KEYS: value,
	// sequence, flag; then, for floorSetGuarded, the two stamps. ARGV: as
	// floorDelete's and floorSet's.
	floorDeleteFenced = redis.NewScript(`
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('INCR', KEYS[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])`)
	floorSetGuarded = redis.NewScript(`
local s = redis.call('MGET', KEYS[4], KEYS[5])
if not s[1] or not s[2] then return redis.error_reply('a stamp is missing') end
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1] .. s[1] .. s[2] .. ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])`)
)

// l2Miss runs a miss of k through st alone: the read script's claim, then
// the fill script, of env in the groups known.
func l2Miss(ctx context.Context, st *l2.Store, k l2.Keys, env []byte, known []string) error {
	tok := consistency.NewToken()
	r, err := st.ReadOrClaim(ctx, k, tok, time.Second)
	if err != nil || r.State != l2.Claimed {
		return fmt.Errorf("ReadOrClaim of a cold key = %+v, %v; want Claimed", r, err)
	}
	if ok, err := st.FillInGroups(ctx, k, tok, env, benchTTL, known, r.Clock); err != nil || !ok {
		return fmt.Errorf("FillInGroups = %v, %v", ok, err)
	}
	return nil
}

// fencedMiss runs the floor of a fenced miss of kv (value, flag): claim,
// then fill value for ttl ms.
func fencedMiss(ctx context.Context, rdb redis.Scripter, kv []string, value string, ttl int64) error {
	if n, err := floorClaim.Run(ctx, rdb, kv, "tok").Int(); err != nil || n != 1 {
		return fmt.Errorf("floor claim: %d, %v", n, err)
	}
	if n, err := floorFill.Run(ctx, rdb, kv, "tok", value, ttl).Int(); err != nil || n != 1 {
		return fmt.Errorf("floor fill: %d, %v", n, err)
	}
	return nil
}

// groupedFloor runs the floor of a fenced miss that keeps the group check,
// against a clock and two stamps it seeds.
type groupedFloor struct {
	rdb    redis.Scripter
	stamps []string // the clock and the two stamps
	value  string   // stored after the two stamps: as many bytes as tiercache's
}

func newGroupedFloor(tb testing.TB, rdb *redis.Client, stored string) *groupedFloor {
	tb.Helper()
	f := &groupedFloor{rdb: rdb, stamps: []string{"raw:clock", "raw:stamp:all", "raw:stamp:ns"}}
	stamp := "0/" + consistency.NewToken() + ":" + consistency.NewToken()
	for _, k := range f.stamps {
		if err := rdb.Set(context.Background(), k, stamp, 0).Err(); err != nil {
			tb.Fatal(err)
		}
	}
	f.value = stored[2*len(stamp):]
	return f
}

func (f *groupedFloor) miss(ctx context.Context, key string) error {
	kv := append([]string{key, key + ":flag"}, f.stamps...)
	clock, err := floorClaimInGroups.Run(ctx, f.rdb, kv, "tok").Text()
	if err != nil {
		return fmt.Errorf("floor claim in groups: %v", err)
	}
	if n, err := floorFillInGroups.Run(ctx, f.rdb, kv, "tok", clock, f.value, benchTTL.Milliseconds()).Int(); err != nil || n != 1 {
		return fmt.Errorf("floor fill in groups: %d, %v", n, err)
	}
	return nil
}

// userID is a named string key type: its default key form is the string.
type userID string

// TestL1HitAllocs requires that an L1 hit allocates nothing, for string,
// integer and named string keys. The count is of allocations, not time, so
// it is a deterministic assertion.
func TestL1HitAllocs(t *testing.T) {
	srv := redistest.Start(t)
	n := benchNode(t, srv)
	t.Run("string", func(t *testing.T) {
		testL1HitAllocs(t, n, benchCache[string](t, n, "allocs-string", benchTTL), "user:42")
	})
	t.Run("int64", func(t *testing.T) {
		testL1HitAllocs(t, n, benchCache[int64](t, n, "allocs-int64", benchTTL), int64(42))
	})
	t.Run("named-string", func(t *testing.T) {
		testL1HitAllocs(t, n, benchCache[userID](t, n, "allocs-userid", benchTTL), userID("user:42"))
	})
}

func testL1HitAllocs[K comparable](t *testing.T, n *tier.Node, c *tier.Cache[K, string], key K) {
	warmL1(t, n, c, []K{key})
	ctx := context.Background()
	const runs = 1000
	var failed error
	before := n.Stats()
	allocs := testing.AllocsPerRun(runs, func() {
		if _, err := c.Get(ctx, key); err != nil && failed == nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatalf("Get: %v", failed)
	}
	// AllocsPerRun calls the function once more to warm up.
	checkHits(t, before, n.Stats(), runs+1, 0)
	// The race runtime drops sync.Pool items at random, and ristretto's read
	// buffer is pooled: under -race, ristretto's own Get allocates now and
	// then. Measure it on the same key beside ours: an L1 hit must allocate
	// nothing that ristretto does not, and nothing at all without -race.
	raw := newRawRistretto(t, []string{"user:42"})
	rawAllocs := testing.AllocsPerRun(runs, func() { raw.Get("user:42") })
	if allocs > rawAllocs || (!benchRaceDetector() && allocs != 0) {
		t.Fatalf("L1 hit: %v allocs/op (raw ristretto Get: %v), want 0", allocs, rawAllocs)
	}
}

// benchRaceDetector reports whether the test binary was built with -race,
// as recorded in its build settings.
func benchRaceDetector() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// BenchmarkWrite measures the writes of one key, serially, against the bare
// Redis command each replaces in the same run: Invalidate against a DEL of
// the value's key, Set against a SET PX of as many bytes as tiercache
// stores. Each write of tiercache is one round trip (a script that changes
// the key and publishes the invalidation, R14); the bare commands announce
// nothing, so the ratio is the price of the bus.
func BenchmarkWrite(b *testing.B) {
	const namespace = "bench-write"
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	rdb := srv.Client(b)
	c := benchCache[string](b, n, namespace, -1)
	ctx := context.Background()
	keys := benchKeys("user", benchKeyCount)
	valueKeys := benchValueKeys(namespace, keys)
	if err := c.Set(ctx, keys[0], benchValue); err != nil {
		b.Fatal(err)
	}
	stored, err := rdb.Get(ctx, valueKeys[0]).Result()
	if err != nil {
		b.Fatalf("GET of a Set value: %v", err)
	}
	rawValue := strings.Repeat("v", len(stored))
	run := func(b *testing.B, op func(i int) error) {
		withCost(b, rdb, func() {
			for i := 0; b.Loop(); i++ {
				if err := op(i % benchKeyCount); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("tiercache-Invalidate", func(b *testing.B) {
		run(b, func(i int) error { return c.Invalidate(ctx, keys[i]) })
	})
	b.Run("redis-raw-DEL", func(b *testing.B) {
		run(b, func(i int) error { return rdb.Del(ctx, valueKeys[i]).Err() })
	})
	b.Run("tiercache-Set", func(b *testing.B) {
		run(b, func(i int) error { return c.Set(ctx, keys[i], benchValue) })
	})
	b.Run("redis-raw-SET", func(b *testing.B) {
		run(b, func(i int) error { return rdb.Set(ctx, valueKeys[i], rawValue, benchTTL).Err() })
	})
	// The floor of a write that announces itself atomically (R14): one
	// script that deletes the key and publishes a message of the same size
	// as tiercache's, to one subscriber (the node's own, as here).
	msg := floorSubscriber(b, rdb, "bench-write-floor")
	b.Run("redis-raw-DEL+PUBLISH-script", func(b *testing.B) {
		run(b, func(i int) error {
			return floorDelete.Run(ctx, rdb, []string{valueKeys[i], "bench-write-floor:seq"}, "bench-write-floor", msg).Err()
		})
	})
	// The same floor for a Set, of as many bytes as tiercache stores.
	b.Run("redis-raw-SET+PUBLISH-script", func(b *testing.B) {
		run(b, func(i int) error {
			return floorSet.Run(ctx, rdb, []string{valueKeys[i], "bench-write-floor:seq"}, "bench-write-floor", msg, rawValue, benchTTL.Milliseconds()).Err()
		})
	})
}

// BenchmarkInterleaved compares the L2 hit, GetMany, the miss and the
// writes with their baselines and floors in turn, within every iteration:
// each op of each row runs once per iteration, so the rows share every
// moment of the run. On a machine whose speed drifts by the minute, their
// ratios hold where those of separate sub-benchmarks do not. Each row
// reports its mean time as "<row>-µs" and its ratio to the first row as
// "<row>-x"; ns/op is the sum of the rows. The other benchmarks give each
// row's allocations and CPU.
func BenchmarkInterleaved(b *testing.B) {
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	rdb := srv.Client(b)
	ctx := context.Background()

	const missNamespace = "bench-interleaved-miss"
	mc := benchCache[string](b, n, missNamespace, benchTTL)
	stored := storedBytes(b, rdb, mc, missNamespace)
	st := l2.NewStore(rdb, tier.DefaultPrefix)
	known := tier.KnownGroups(mc)
	env := benchEnvelope(stored)
	grouped := newGroupedFloor(b, rdb, stored)
	local := newRawRistretto(b, nil)
	cancellable, cancel := context.WithCancel(ctx)
	defer cancel()
	runs := 0
	b.Run("miss", func(b *testing.B) {
		// Every run takes fresh keys: none was ever cached.
		runs++
		prefix := strconv.Itoa(runs) + ":"
		ttl := benchTTL.Milliseconds()
		key := func(row string, i int) string { return prefix + row + ":" + strconv.Itoa(i) }
		interleaved(b,
			interleavedRow{"GET+SET", func(i int) error {
				k := key("raw", i)
				if err := rdb.Get(ctx, k).Err(); !errors.Is(err, redis.Nil) {
					return fmt.Errorf("GET of a cold key: %v, want redis.Nil", err)
				}
				return rdb.Set(ctx, k, stored, benchTTL).Err()
			}},
			interleavedRow{"fenced-floor", func(i int) error {
				k := key("fenced", i)
				return fencedMiss(ctx, rdb, []string{k, k + ":flag"}, stored, ttl)
			}},
			interleavedRow{"fenced-floor-in-groups", func(i int) error {
				return grouped.miss(ctx, key("grouped", i))
			}},
			// The floor of a miss in a tier with a local cache: the same,
			// then the value handed to a raw ristretto cache configured as
			// a Node's L1, whose Set wakes ristretto's worker goroutine as
			// the tier's L1 fill does. "GET+SET+ristretto" is the
			// cache-aside baseline with the same local cache.
			interleavedRow{"fenced-floor-in-groups+ristretto", func(i int) error {
				k := key("grouped-l1", i)
				if err := grouped.miss(ctx, k); err != nil {
					return err
				}
				local.Set(k, benchValue, int64(len(k)+len(benchValue)))
				return nil
			}},
			interleavedRow{"GET+SET+ristretto", func(i int) error {
				k := key("raw-l1", i)
				if err := rdb.Get(ctx, k).Err(); !errors.Is(err, redis.Nil) {
					return fmt.Errorf("GET of a cold key: %v, want redis.Nil", err)
				}
				if err := rdb.Set(ctx, k, stored, benchTTL).Err(); err != nil {
					return err
				}
				local.Set(k, benchValue, int64(len(k)+len(benchValue)))
				return nil
			}},
			// The same floor, run as a flight runs a load for a caller whose
			// ctx can be cancelled: in a goroutine of its own that the
			// caller waits for, so that the caller's cancellation can
			// return it alone while the load goes on for the others.
			interleavedRow{"fenced-floor-in-groups-shared", func(i int) error {
				done := make(chan error, 1)
				go func() { done <- grouped.miss(ctx, key("shared", i)) }()
				return <-done
			}},
			interleavedRow{"l2", func(i int) error {
				return l2Miss(ctx, st, l2.KeysFor(tier.DefaultPrefix, missNamespace, key("l2", i)), env, known)
			}},
			interleavedRow{"tiercache", func(i int) error {
				_, err := mc.Get(ctx, key("cold", i))
				return err
			}},
			// A caller whose ctx can be cancelled: its flight runs the load
			// in a goroutine of its own, as the shared floor does.
			interleavedRow{"tiercache-cancellable", func(i int) error {
				_, err := mc.Get(cancellable, key("cancellable", i))
				return err
			}},
		)
	})

	// A serial L2 hit (L1 off) of keys filled beforehand, beside a GET of
	// the same value and the bare pipeline of the hit's two commands.
	const hitNamespace = "bench-interleaved-hit"
	hc := benchCache[string](b, n, hitNamespace, -1)
	hitKeys := benchKeys("user", benchKeyCount)
	hitValues := benchValueKeys(hitNamespace, hitKeys)
	for _, k := range hitKeys {
		if _, err := hc.Get(ctx, k); err != nil {
			b.Fatalf("prefill Get(%q): %v", k, err)
		}
	}
	hitKnown := tier.KnownGroups(hc)
	fleetStamp, nsStamp := l2.GroupKey(tier.DefaultPrefix, hitKnown[0]), l2.GroupKey(tier.DefaultPrefix, hitKnown[1])
	b.Run("L2-hit", func(b *testing.B) {
		before := n.Stats()
		hits := interleaved(b,
			interleavedRow{"GET", func(i int) error { return rdb.Get(ctx, hitValues[i%benchKeyCount]).Err() }},
			interleavedRow{"PTTL+MGET-pipeline", func(i int) error {
				return peekPipeline(ctx, rdb, hitValues[i%benchKeyCount], fleetStamp, nsStamp)
			}},
			interleavedRow{"tiercache", func(i int) error {
				_, err := hc.Get(ctx, hitKeys[i%benchKeyCount])
				return err
			}},
		)
		checkHits(b, before, n.Stats(), 0, uint64(hits))
	})

	// GetMany of 100 keys held in Redis (L1 off), as BenchmarkGetMany's.
	b.Run("GetMany-100", func(b *testing.B) {
		manyKeys, manyValues := hitKeys[:100], hitValues[:100]
		interleaved(b,
			interleavedRow{"MGET", func(int) error { return rdb.MGet(ctx, manyValues...).Err() }},
			interleavedRow{"tiercache", func(int) error { return getAll(ctx, hc, manyKeys) }},
		)
	})

	// The writes cycle over benchKeyCount keys, as BenchmarkWrite's do.
	const namespace = "bench-interleaved-write"
	c := benchCache[string](b, n, namespace, -1)
	written := storedBytes(b, rdb, c, namespace)
	keys := benchKeys("user", benchKeyCount)
	valueKeys := benchValueKeys(namespace, keys)
	floorKeys := func(i int) []string { return []string{valueKeys[i%benchKeyCount], "bench-floor:seq"} }
	flagKeys := benchFlagKeys(namespace, keys)
	writeKnown := tier.KnownGroups(c)
	writeStamps := []string{l2.GroupKey(tier.DefaultPrefix, writeKnown[0]), l2.GroupKey(tier.DefaultPrefix, writeKnown[1])}
	fencedKeys := func(i int) []string {
		return []string{valueKeys[i%benchKeyCount], "bench-floor:seq", flagKeys[i%benchKeyCount]}
	}
	guardedKeys := func(i int) []string { return append(fencedKeys(i), writeStamps...) }
	msg := floorSubscriber(b, rdb, "bench-floor")
	// "l2-Apply" is the same change and announcement through l2.Store
	// alone, on the node's bus channel: the script without the tier.
	// Its message is a valid one from another origin, as tiercache's is.
	bk := l2.BusKeysFor(tier.DefaultPrefix, false)
	apply := func(i int, c l2.Change) error {
		key := keys[i%benchKeyCount]
		m := bus.Message{Kind: bus.KindKeys, Origin: bus.NodeID{1}, Groups: []bus.Group{{Namespace: namespace, Keys: []string{key}}}}
		head, body, err := m.Split()
		if err != nil {
			return err
		}
		c.Keys = l2.KeysFor(tier.DefaultPrefix, namespace, key)
		_, err = st.Apply(ctx, []l2.Change{c}, &l2.Announcement{SeqKey: bk.Seq, Channel: bk.Channel, Head: head, Body: body})
		return err
	}
	b.Run("Invalidate", func(b *testing.B) {
		interleaved(b,
			interleavedRow{"DEL", func(i int) error { return rdb.Del(ctx, valueKeys[i%benchKeyCount]).Err() }},
			interleavedRow{"DEL+PUBLISH-floor", func(i int) error {
				return floorDelete.Run(ctx, rdb, floorKeys(i), "bench-floor", msg).Err()
			}},
			interleavedRow{"DEL+PUBLISH-fenced-floor", func(i int) error {
				return floorDeleteFenced.Run(ctx, rdb, fencedKeys(i), "bench-floor", msg).Err()
			}},
			interleavedRow{"l2-Apply", func(i int) error { return apply(i, l2.Change{}) }},
			interleavedRow{"tiercache", func(i int) error { return c.Invalidate(ctx, keys[i%benchKeyCount]) }},
		)
	})
	b.Run("Set", func(b *testing.B) {
		envelope := benchEnvelope(written)
		interleaved(b,
			interleavedRow{"SET", func(i int) error {
				return rdb.Set(ctx, valueKeys[i%benchKeyCount], written, benchTTL).Err()
			}},
			interleavedRow{"SET+PUBLISH-floor", func(i int) error {
				return floorSet.Run(ctx, rdb, floorKeys(i), "bench-floor", msg, written, benchTTL.Milliseconds()).Err()
			}},
			interleavedRow{"SET+PUBLISH-guarded-floor", func(i int) error {
				return floorSetGuarded.Run(ctx, rdb, guardedKeys(i), "bench-floor", msg, written, benchTTL.Milliseconds()).Err()
			}},
			interleavedRow{"l2-Apply", func(i int) error {
				return apply(i, l2.Change{Write: true, Envelope: envelope, TTL: benchTTL, Groups: writeKnown})
			}},
			interleavedRow{"tiercache", func(i int) error { return c.Set(ctx, keys[i%benchKeyCount], benchValue) }},
		)
	})
}

// interleavedRow is one row of BenchmarkInterleaved: op runs its i-th
// operation.
type interleavedRow struct {
	name string
	op   func(i int) error
}

// interleaved runs every row's op once per iteration of b, in turn,
// starting with a different row each time, reports each row's mean time
// and its ratio to the first row's, and returns the number of iterations.
func interleaved(b *testing.B, rows ...interleavedRow) int {
	return interleavedPer(b, 1, time.Microsecond, "µs", rows...)
}

// interleavedPer is interleaved for ops that each do per operations: it
// reports each row's mean time per operation in unit.
func interleavedPer(b *testing.B, per int, unit time.Duration, unitName string, rows ...interleavedRow) int {
	runs := make([]interleave.Row, len(rows))
	for r, row := range rows {
		runs[r] = interleave.Row{Name: row.name, Op: row.op}
	}
	spent, iterations := interleave.Run(b, runs...)
	for r, row := range rows {
		b.ReportMetric(float64(spent[r])/float64(unit)/float64(iterations*per), row.name+"-"+unitName)
		if r > 0 {
			b.ReportMetric(float64(spent[r])/float64(spent[0]), row.name+"-x")
		}
	}
	return iterations
}

// l1Burst is the Gets per goroutine of one op of BenchmarkInterleavedL1.
const l1Burst = 20000

// BenchmarkInterleavedL1 compares an L1 hit with raw ristretto as
// BenchmarkInterleaved compares the Redis paths: each iteration runs, for
// each row in turn, a burst of l1Burst Gets from each of GOMAXPROCS
// goroutines ("parallel") or from one ("serial"). Each row reports its
// time per Get as "<row>-ns" (wall time over all goroutines' Gets, as
// b.RunParallel's ns/op) and its ratio to raw ristretto's as "<row>-x".
// "ristretto+clock" is the floor of a hit that survives a process pause
// (R40): a raw Get, then one reading of the monotonic clock.
func BenchmarkInterleavedL1(b *testing.B) {
	_, n, keys, c, rc := l1Bench(b)
	ctx := context.Background()
	epoch := time.Now()
	gets := []struct {
		name string
		get  func(i int) bool
	}{
		{"ristretto", func(i int) bool { _, ok := rc.Get(keys[i%benchKeyCount]); return ok }},
		{"ristretto+clock", func(i int) bool {
			_, ok := rc.Get(keys[i%benchKeyCount])
			return ok && time.Since(epoch) < time.Hour
		}},
		{"tiercache", func(i int) bool { _, err := c.Get(ctx, keys[i%benchKeyCount]); return err == nil }},
	}
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) {
			procs := 1
			if mode.parallel {
				procs = runtime.GOMAXPROCS(0)
			}
			rows := make([]interleavedRow, len(gets))
			for r, g := range gets {
				rows[r] = interleavedRow{g.name, func(int) error {
					var (
						wg     sync.WaitGroup
						missed atomic.Bool
					)
					for p := range procs {
						wg.Go(func() {
							for i := p * l1Burst; i < (p+1)*l1Burst; i++ {
								if !g.get(i) {
									missed.Store(true)
									return
								}
							}
						})
					}
					wg.Wait()
					if missed.Load() {
						return errors.New("a Get missed")
					}
					return nil
				}}
			}
			before := n.Stats()
			bursts := interleavedPer(b, procs*l1Burst, time.Nanosecond, "ns", rows...)
			checkHits(b, before, n.Stats(), uint64(bursts*procs*l1Burst), 0)
		})
	}
}

// storedBytes fills one key of c through a Get and returns a string of as
// many bytes as tiercache stored for it in Redis (header and envelope).
func storedBytes(tb testing.TB, rdb *redis.Client, c *tier.Cache[string, string], namespace string) string {
	tb.Helper()
	ctx := context.Background()
	if _, err := c.Get(ctx, "probe"); err != nil {
		tb.Fatalf("probe Get: %v", err)
	}
	v, err := rdb.Get(ctx, l2.KeysFor(tier.DefaultPrefix, namespace, "probe").Value).Result()
	if err != nil {
		tb.Fatalf("probe GET: %v", err)
	}
	return strings.Repeat("v", len(v))
}

// floorSubscriber subscribes to channel, so that a floor's PUBLISH is
// delivered as tiercache's messages are (to one subscriber), drains it
// until cleanup, and returns a message of the size of tiercache's.
func floorSubscriber(tb testing.TB, rdb *redis.Client, channel string) string {
	tb.Helper()
	redistest.Drain(tb, rdb, channel)
	return strings.Repeat("m", 64)
}

// withCost runs loop, the timed part of b, and reports allocations and the
// CPU time of rdb's server and of this process per operation.
func withCost(b *testing.B, rdb redis.UniversalClient, loop func()) {
	b.ReportAllocs()
	before := costNow(b, rdb)
	b.ResetTimer()
	loop()
	b.StopTimer()
	costNow(b, rdb).report(b, before)
}
