package peers

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// mode is how a hit benchmark reads: serially (b.Loop), or from
// b.RunParallel's goroutines, parallelism of them per GOMAXPROCS.
type mode struct {
	name        string
	parallelism int // 0: serial
}

var (
	// l1Modes: local hits use the CPU alone, one goroutine per CPU.
	l1Modes = []mode{{"serial", 0}, {"parallel", 1}}
	// l2Modes: Redis reads in parallel have 8 goroutines per CPU, many
	// requests in flight at once as on an API server, which is where a
	// pipelining client differs from a pooled one.
	l2Modes = []mode{{"serial", 0}, {"parallel", 8}}
)

// loop runs op b.N times, timing nothing else, and hands it the index of
// the key to read, below keyCount. Serially the index goes round all the
// keys; in parallel each goroutine goes round a range of keys of its own,
// so that no two goroutines read one key at the same moment (a tiercache
// read through its script would then let the second join the first's,
// which is not the path measured here). op reports failures as errors so
// that a parallel goroutine can stop without calling FailNow.
func loop(b *testing.B, m mode, op func(k int) error) {
	b.ReportAllocs()
	if m.parallelism == 0 {
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if err := op(i % keyCount); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		return
	}
	b.SetParallelism(m.parallelism)
	stride := keyCount / (m.parallelism * runtime.GOMAXPROCS(0))
	if stride == 0 {
		b.Fatalf("%d goroutines for %d keys: each needs a key of its own", m.parallelism*runtime.GOMAXPROCS(0), keyCount)
	}
	var goroutines atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		first := int(goroutines.Add(1)-1) * stride
		for i := 0; pb.Next(); i++ {
			if err := op(first + i%stride); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if b.Failed() {
		b.FailNow()
	}
}

// checkLen is the check a timed loop makes of a value: its length, which
// costs the same whatever the library (the bytes were checked when the
// cache was warmed).
func checkLen(what string, v string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(v) != valueBytes {
		return fmt.Errorf("%s: value of %d bytes, want %d", what, len(v), valueBytes)
	}
	return nil
}

// BenchmarkL1Hit reads warm keys from each library's local cache: a
// tiercache L1 hit, a go-redis/cache TinyLFU hit and a rueidis DoCache
// hit, against a Get on a bare ristretto cache holding the same values.
// Each sub-benchmark starts its library afresh and warms it just before
// its timed loop, so that no entry can reach its local TTL (a minute) in
// the loop however many times -count runs it, and checks afterwards, by
// the library's own account, that no read of the timed loop went to Redis.
func BenchmarkL1Hit(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()

	tkeys := keysOf("user", keyCount)

	gRedis, _ := newGoRedisCache(b, srv, false)
	gkeys := keysOf("grc:user", keyCount)
	fillGoRedisCache(b, gRedis, gkeys)

	rkeys := keysOf("rue:user", keyCount)
	fillRueidis(b, newRueidis(b, srv, false), rkeys)

	rr := newRawRistretto(b, tkeys)

	for _, m := range l1Modes {
		b.Run(m.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				tn, tc := warmTierCache(b, srv, "l1", tkeys)
				before := tn.Stats()
				loop(b, m, func(k int) error {
					v, err := tc.Get(ctx, tkeys[k])
					return checkLen("tiercache Get", v, err)
				})
				checkTierHits(b, tn, before, uint64(b.N), 0)
			})
			b.Run("go-redis-cache", func(b *testing.B) {
				gc, gcnt := warmGoRedisLocal(b, srv, gkeys)
				before := gcnt.n.Load()
				loop(b, m, func(k int) error {
					var v string
					err := gc.Get(ctx, gkeys[k], &v)
					return checkLen("go-redis/cache Get", v, err)
				})
				if d := gcnt.n.Load() - before; d != 0 {
					b.Fatalf("go-redis/cache sent %d commands in the timed loop; its local cache did not answer", d)
				}
			})
			b.Run("rueidis-csc", func(b *testing.B) {
				rc := warmRueidisLocal(b, srv, rkeys)
				var misses atomic.Int64
				loop(b, m, func(k int) error {
					r := rueidisCacheGet(ctx, rc, rkeys[k])
					if !r.IsCacheHit() {
						misses.Add(1)
					}
					v, err := r.ToString()
					return checkLen("rueidis DoCache", v, err)
				})
				if n := misses.Load(); n != 0 {
					b.Fatalf("rueidis: %d DoCache reads of the timed loop were not client-side cache hits", n)
				}
			})
			b.Run("ristretto-raw", func(b *testing.B) {
				loop(b, m, func(k int) error {
					v, ok := rr.Get(tkeys[k])
					if !ok {
						return fmt.Errorf("ristretto miss")
					}
					return checkLen("ristretto Get", v, nil)
				})
			})
		})
	}
}

// BenchmarkL2Hit reads keys held in Redis with each library's local cache
// out of the way: tiercache with Config.L1TTL < 0, of keys its node has
// read before (a PTTL and one MGET of the value and the stamps of the
// fleet's and the namespace's groups, pipelined; no script; reads that
// overlap share one pipeline, every PTTL then one MGET, reported as
// reads/MGET),
// go-redis/cache without a LocalCache (one GET), rueidis without DoCache
// (a plain GET through Do, on a client with DisableCache), against a bare
// go-redis GET of a value of the same size. Serial, and parallel with 8
// goroutines per CPU. redis-cmds/op is every command the server ran per
// read, counting those a script runs; redis-cpu-µs/op is the server
// process's CPU time per read; value-B is the size of what the library
// stores in Redis for one value of 200 bytes (tiercache's: a header with
// the value's expiry and groups, then its CBOR envelope).
//
// Each tiercache sub-benchmark starts its Node, and has it read every key
// once, just before its timed loop, and closes it after: no Node runs (its
// lease's GET every 15 s) during another library's loop.
func BenchmarkL2Hit(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	admin := srv.Client(b)

	const namespace = "l2"
	tkeys := keysOf("user", keyCount)

	gc, _ := newGoRedisCache(b, srv, false)
	gkeys := keysOf("grc:user", keyCount)
	fillGoRedisCache(b, gc, gkeys)

	rc := newRueidis(b, srv, false)
	rkeys := keysOf("rue:user", keyCount)
	fillRueidis(b, rc, rkeys)

	raw := srv.Client(b)
	xkeys := keysOf("raw:user", keyCount)
	fillRaw(b, raw, xkeys)

	stored := func(b *testing.B, key string) {
		n, err := admin.StrLen(ctx, key).Result()
		if err != nil || n == 0 {
			b.Fatalf("STRLEN %q = %d, %v", key, n, err)
		}
		b.ReportMetric(float64(n), "value-B")
	}
	// run times op and checks that each call made exactly want[c] calls
	// of each command c of want in Redis (so no local cache answered, and
	// the read took the path it names), and reports what the server did
	// per call.
	run := func(b *testing.B, m mode, want calls, op func(k int) error) {
		before := serverNow(b, admin)
		loop(b, m, op)
		after := serverNow(b, admin)
		after.expectCalls(b, before, int64(b.N), want)
		after.report(b, before)
	}

	for _, m := range l2Modes {
		b.Run(m.name, func(b *testing.B) {
			b.Run("tiercache", func(b *testing.B) {
				tn := newTierNode(b, srv)
				tc := newTierCache(b, tn, namespace, -1, nil)
				fillTier(b, tc, tkeys, baseValue) // the node has read every key
				before, server := tn.Stats(), serverNow(b, admin)
				run(b, m, calls{"pttl": 1, "evalsha": 0, "eval": 0}, func(k int) error {
					v, err := tc.Get(ctx, tkeys[k])
					return checkLen("tiercache Get", v, err)
				})
				checkTierHits(b, tn, before, 0, uint64(b.N))
				// One MGET a read, alone; reads that overlap share one
				// (R57): from 16 goroutines, several a round trip.
				mgets := serverNow(b, admin).callsSince(server, "mget")
				if mgets > int64(b.N) || mgets < 1 || (m.parallelism == 0 && mgets != int64(b.N)) {
					b.Fatalf("Redis ran %d mget calls for %d reads; want one a read serially, at most one a read in parallel", mgets, b.N)
				}
				b.ReportMetric(float64(b.N)/float64(mgets), "reads/MGET")
				stored(b, l2.KeysFor(tier.DefaultPrefix, namespace, tkeys[0]).Value)
			})
			b.Run("go-redis-cache", func(b *testing.B) {
				run(b, m, calls{"get": 1}, func(k int) error {
					var v string
					err := gc.Get(ctx, gkeys[k], &v)
					return checkLen("go-redis/cache Get", v, err)
				})
				stored(b, gkeys[0])
			})
			b.Run("rueidis", func(b *testing.B) {
				run(b, m, calls{"get": 1}, func(k int) error {
					v, err := rc.Do(ctx, rc.B().Get().Key(rkeys[k]).Build()).ToString()
					return checkLen("rueidis GET", v, err)
				})
				stored(b, rkeys[0])
			})
			b.Run("redis-raw-GET", func(b *testing.B) {
				run(b, m, calls{"get": 1}, func(k int) error {
					v, err := raw.Get(ctx, xkeys[k]).Result()
					return checkLen("GET", v, err)
				})
				stored(b, xkeys[0])
			})
		})
	}
}
