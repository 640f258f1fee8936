package peers

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/tiercache/tiercache/internal/redistest"
)

// BenchmarkBatch100 reads 100 keys in one call, serially.
//
// "redis" reads them from Redis, every local cache out of the way:
// tiercache's GetMany with L1 off, of keys its node has read before (one
// pipeline of a TIME and a single MGET of the 100 values and the stamps of
// the fleet's and the namespace's groups; no script); go-redis/cache,
// which has no multi-get in v9.0.0, with 100 Gets one after the other (the
// best it offers); rueidis's MGET, and its DoMulti of 100 GETs (one
// pipelined round trip), on a client without client-side caching; against
// a bare go-redis MGET and a bare go-redis pipeline of 100 GETs.
//
// "local" reads them from warm local caches: tiercache's GetMany with L1
// on, go-redis/cache's 100 Gets with its TinyLFU, rueidis's DoMultiCache of
// 100 GETs, against 100 Gets on a bare ristretto cache.
//
// redis-cmds/op is every command the server ran per batch, counting those
// a script runs; redis-cpu-µs/op the server process's CPU time per batch.
// Each sub-benchmark checks that the batch took the path it names: so
// many read commands in Redis, or none of the library's.
//
// Each tiercache sub-benchmark, and each with a local cache, starts its
// library afresh and warms it just before its timed loop: no local entry
// can reach its TTL (a minute) in a loop of a second or so however many
// times -count runs it, and no tiercache Node runs (its lease's GET every
// 15 s) during another library's loop.
func BenchmarkBatch100(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	admin := srv.Client(b)

	tkeys := keysOf("user", batchSize)

	gRedis, _ := newGoRedisCache(b, srv, false)
	gkeys := keysOf("grc:user", batchSize)
	fillGoRedisCache(b, gRedis, gkeys)

	rRedis := newRueidis(b, srv, false)
	rkeys := keysOf("rue:user", batchSize)
	fillRueidis(b, rRedis, rkeys)

	raw := srv.Client(b)
	xkeys := keysOf("raw:user", batchSize)
	fillRaw(b, raw, xkeys)

	rr := newRawRistretto(b, tkeys)

	// run times op, checks that Redis ran want[c] calls of each command c
	// of want per call, and none of the commands of none, and reports
	// what the server did per call. It returns the calls of every
	// command in the timed loop.
	run := func(b *testing.B, want calls, none []string, op func() error) calls {
		b.ReportAllocs()
		before := serverNow(b, admin)
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		after := serverNow(b, admin)
		if d, ran := after.readsSince(before, none); d != 0 {
			b.Fatalf("the timed loop made %d read commands in Redis (%s), want none", d, ran)
		}
		after.expectCalls(b, before, int64(b.N), want)
		after.report(b, before)
		return after.since(before)
	}
	count := func(what string, n int) error {
		if n != batchSize {
			return fmt.Errorf("%s: %d values, want %d", what, n, batchSize)
		}
		return nil
	}

	b.Run("redis", func(b *testing.B) {
		b.Run("tiercache-GetMany", func(b *testing.B) {
			tn := newTierNode(b, srv)
			tc := newTierCache(b, tn, "batch-redis", -1, nil)
			fillTier(b, tc, tkeys, baseValue) // the node has read every key
			before := tn.Stats()
			d := run(b, calls{"mget": 1, "pttl": 0, "evalsha": 0, "eval": 0}, nil, func() error {
				m, err := tc.GetMany(ctx, tkeys)
				if err != nil {
					return err
				}
				return count("GetMany", len(m))
			})
			// One TIME per call; the node's lease may send one too.
			if d["time"] < int64(b.N) {
				b.Fatalf("the timed loop made %d TIME calls in Redis, want at least %d", d["time"], b.N)
			}
			checkTierHits(b, tn, before, 0, uint64(b.N)*batchSize)
		})
		b.Run("go-redis-cache-Get-x100", func(b *testing.B) {
			run(b, calls{"get": batchSize}, nil, func() error {
				for _, k := range gkeys {
					var v string
					if err := checkLen("go-redis/cache Get", v, gRedis.Get(ctx, k, &v)); err != nil {
						return err
					}
				}
				return nil
			})
		})
		b.Run("rueidis-MGET", func(b *testing.B) {
			run(b, calls{"mget": 1}, nil, func() error {
				vs, err := rRedis.Do(ctx, rRedis.B().Mget().Key(rkeys...).Build()).AsStrSlice()
				if err != nil {
					return err
				}
				return count("MGET", len(vs))
			})
		})
		b.Run("rueidis-DoMulti-GET", func(b *testing.B) {
			cmds := make(rueidis.Commands, batchSize)
			run(b, calls{"get": batchSize}, nil, func() error {
				for i, k := range rkeys {
					cmds[i] = rRedis.B().Get().Key(k).Build()
				}
				for _, r := range rRedis.DoMulti(ctx, cmds...) {
					v, err := r.ToString()
					if err := checkLen("rueidis GET", v, err); err != nil {
						return err
					}
				}
				return nil
			})
		})
		b.Run("redis-raw-MGET", func(b *testing.B) {
			run(b, calls{"mget": 1}, nil, func() error {
				vs, err := raw.MGet(ctx, xkeys...).Result()
				if err != nil {
					return err
				}
				return count("MGET", len(vs))
			})
		})
		b.Run("redis-raw-pipeline-GET", func(b *testing.B) {
			run(b, calls{"get": batchSize}, nil, func() error {
				cmds, err := raw.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range xkeys {
						p.Get(ctx, k)
					}
					return nil
				})
				if err != nil {
					return err
				}
				return count("pipeline", len(cmds))
			})
		})
	})

	b.Run("local", func(b *testing.B) {
		b.Run("tiercache-GetMany", func(b *testing.B) {
			tn, tLocal := warmTierCache(b, srv, "batch-local", tkeys)
			before := tn.Stats()
			run(b, nil, tierReads, func() error {
				m, err := tLocal.GetMany(ctx, tkeys)
				if err != nil {
					return err
				}
				return count("GetMany", len(m))
			})
			checkTierHits(b, tn, before, uint64(b.N)*batchSize, 0)
		})
		b.Run("go-redis-cache-Get-x100", func(b *testing.B) {
			gLocal, gcnt := warmGoRedisLocal(b, srv, gkeys)
			before := gcnt.n.Load()
			run(b, nil, goRedisCacheReads, func() error {
				for _, k := range gkeys {
					var v string
					if err := checkLen("go-redis/cache Get", v, gLocal.Get(ctx, k, &v)); err != nil {
						return err
					}
				}
				return nil
			})
			if d := gcnt.n.Load() - before; d != 0 {
				b.Fatalf("go-redis/cache sent %d commands in the timed loop; its local cache did not answer", d)
			}
		})
		b.Run("rueidis-DoMultiCache", func(b *testing.B) {
			rLocal := warmRueidisLocal(b, srv, rkeys)
			cmds := make([]rueidis.CacheableTTL, batchSize)
			run(b, nil, rueidisReads, func() error {
				for i, k := range rkeys {
					cmds[i] = rueidis.CT(rLocal.B().Get().Key(k).Cache(), localTTL)
				}
				for _, r := range rLocal.DoMultiCache(ctx, cmds...) {
					if !r.IsCacheHit() {
						return fmt.Errorf("rueidis DoMultiCache: a read was not a client-side cache hit")
					}
					v, err := r.ToString()
					if err := checkLen("rueidis DoMultiCache", v, err); err != nil {
						return err
					}
				}
				return nil
			})
		})
		b.Run("ristretto-raw-Get-x100", func(b *testing.B) {
			// ristretto reads nothing from Redis: no library may have read
			// Redis in the background while the floor was timed.
			run(b, nil, anyReads, func() error {
				for _, k := range tkeys {
					v, ok := rr.Get(k)
					if !ok {
						return fmt.Errorf("ristretto miss")
					}
					if err := checkLen("ristretto Get", v, nil); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}
