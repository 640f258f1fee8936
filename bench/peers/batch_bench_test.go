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
// tiercache's GetMany with L1 off (one pipelined round trip of 100 read
// scripts); go-redis/cache, which has no multi-get in v9.0.0, with 100
// Gets one after the other (the best it offers); rueidis's MGET, and its
// DoMulti of 100 GETs (one pipelined round trip), on a client without
// client-side caching; against a bare go-redis MGET and a bare go-redis
// pipeline of 100 GETs.
//
// "local" reads them from warm local caches: tiercache's GetMany with L1
// on, go-redis/cache's 100 Gets with its TinyLFU, rueidis's DoMultiCache of
// 100 GETs, against 100 Gets on a bare ristretto cache.
//
// redis-cmds/op is every command the server ran per batch, counting those
// a script runs; redis-cpu-µs/op the server process's CPU time per batch.
// Each sub-benchmark checks that the batch took the path it names: so
// many read commands in Redis, or none.
func BenchmarkBatch100(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	admin := srv.Client(b)

	tn := newTierNode(b, srv)
	tRedis := newTierCache(b, tn, "batch-redis", -1, nil)
	tLocal := newTierCache(b, tn, "batch-local", localTTL, nil)
	tkeys := keysOf("user", batchSize)
	fillTier(b, tRedis, tkeys, baseValue)
	warmTier(b, tn, tLocal, tkeys)

	gRedis, _ := newGoRedisCache(b, srv, false)
	gLocal, gcnt := newGoRedisCache(b, srv, true)
	gkeys := keysOf("grc:user", batchSize)
	fillGoRedisCache(b, gLocal, gkeys) // Redis, and gLocal's TinyLFU
	warmGoRedisCache(b, gLocal, gcnt, gkeys)

	rRedis := newRueidis(b, srv, false)
	rLocal := newRueidis(b, srv, true)
	rkeys := keysOf("rue:user", batchSize)
	fillRueidis(b, rRedis, rkeys)
	warmRueidis(b, rLocal, rkeys)

	raw := srv.Client(b)
	xkeys := keysOf("raw:user", batchSize)
	fillRaw(b, raw, xkeys)

	rr := newRawRistretto(b, tkeys)

	// run times op, checks that each call made reads top-level calls of
	// cmd in Redis, or no read command at all if reads is 0, and reports
	// what the server did per call.
	run := func(b *testing.B, cmd string, reads int, op func() error) {
		b.ReportAllocs()
		before := serverNow(b, admin)
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		after := serverNow(b, admin)
		if reads == 0 {
			if d := after.readsSince(before); d != 0 {
				b.Fatalf("the timed loop made %d read commands in Redis, want none", d)
			}
		} else if d, want := after.callsSince(before, cmd), int64(reads)*int64(b.N); d != want {
			b.Fatalf("the timed loop made %d %s calls in Redis, want %d", d, cmd, want)
		}
		after.report(b, before)
	}
	count := func(what string, n int) error {
		if n != batchSize {
			return fmt.Errorf("%s: %d values, want %d", what, n, batchSize)
		}
		return nil
	}

	b.Run("redis", func(b *testing.B) {
		b.Run("tiercache-GetMany", func(b *testing.B) {
			before := tn.Stats()
			run(b, "evalsha", batchSize, func() error {
				m, err := tRedis.GetMany(ctx, tkeys)
				if err != nil {
					return err
				}
				return count("GetMany", len(m))
			})
			checkTierHits(b, tn, before, 0, uint64(b.N)*batchSize)
		})
		b.Run("go-redis-cache-Get-x100", func(b *testing.B) {
			run(b, "get", batchSize, func() error {
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
			run(b, "mget", 1, func() error {
				vs, err := rRedis.Do(ctx, rRedis.B().Mget().Key(rkeys...).Build()).AsStrSlice()
				if err != nil {
					return err
				}
				return count("MGET", len(vs))
			})
		})
		b.Run("rueidis-DoMulti-GET", func(b *testing.B) {
			cmds := make(rueidis.Commands, batchSize)
			run(b, "get", batchSize, func() error {
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
			run(b, "mget", 1, func() error {
				vs, err := raw.MGet(ctx, xkeys...).Result()
				if err != nil {
					return err
				}
				return count("MGET", len(vs))
			})
		})
		b.Run("redis-raw-pipeline-GET", func(b *testing.B) {
			run(b, "get", batchSize, func() error {
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
			before := tn.Stats()
			run(b, "", 0, func() error {
				m, err := tLocal.GetMany(ctx, tkeys)
				if err != nil {
					return err
				}
				return count("GetMany", len(m))
			})
			checkTierHits(b, tn, before, uint64(b.N)*batchSize, 0)
		})
		b.Run("go-redis-cache-Get-x100", func(b *testing.B) {
			before := gcnt.n.Load()
			run(b, "", 0, func() error {
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
			cmds := make([]rueidis.CacheableTTL, batchSize)
			run(b, "", 0, func() error {
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
			run(b, "", 0, func() error {
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
