package peers

import (
	"context"
	"fmt"
	"testing"
	"time"

	gocache "github.com/go-redis/cache/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// These tests check the benchmarks' setup, so that a broken one fails
// loudly instead of timing the wrong path: a local read of each library
// sends Redis nothing, a Redis read of each sends exactly the commands it
// is said to, and a freshness round sees what each library's mechanism
// makes it see. They count commands and values, never time.

// TestLocalReadsStayLocal reads every key of the L1 hit setup, warmed as
// BenchmarkL1Hit warms it, and requires that Redis ran none of the
// library's read commands meanwhile, and that its own account agrees.
func TestLocalReadsStayLocal(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	const passes = 2

	// local runs passes reads of every key and fails unless Redis ran none
	// of the commands of reads meanwhile.
	local := func(t *testing.T, keys []string, reads []string, read func(k string) error) {
		t.Helper()
		before := serverNow(t, admin)
		for range passes {
			for _, k := range keys {
				if err := read(k); err != nil {
					t.Fatal(err)
				}
			}
		}
		if d, ran := serverNow(t, admin).readsSince(before, reads); d != 0 {
			t.Fatalf("%d reads of warm keys made %d read commands in Redis (%s), want none", passes*len(keys), d, ran)
		}
	}

	t.Run("tiercache", func(t *testing.T) {
		n := newTierNode(t, srv)
		c := newTierCache(t, n, "local", localTTL, nil)
		keys := keysOf("user", keyCount)
		warmTier(t, n, c, keys)
		before := n.Stats()
		local(t, keys, tierReads, func(k string) error {
			v, err := c.Get(ctx, k)
			return checkLen("tiercache Get", v, err)
		})
		checkTierHits(t, n, before, passes*keyCount, 0)
	})
	t.Run("go-redis-cache", func(t *testing.T) {
		c, cnt := newGoRedisCache(t, srv, true)
		keys := keysOf("grc:user", keyCount)
		fillGoRedisCache(t, c, keys)
		warmGoRedisCache(t, c, cnt, keys)
		before := cnt.n.Load()
		local(t, keys, goRedisCacheReads, func(k string) error {
			var v string
			return checkLen("go-redis/cache Get", v, c.Get(ctx, k, &v))
		})
		if d := cnt.n.Load() - before; d != 0 {
			t.Fatalf("go-redis/cache sent %d commands for reads of warm keys", d)
		}
	})
	t.Run("rueidis-csc", func(t *testing.T) {
		c := newRueidis(t, srv, true)
		keys := keysOf("rue:user", keyCount)
		fillRueidis(t, c, keys)
		warmRueidis(t, c, keys)
		local(t, keys, rueidisReads, func(k string) error {
			r := rueidisCacheGet(ctx, c, k)
			if !r.IsCacheHit() {
				return fmt.Errorf("rueidis DoCache(GET %s) was not a client-side cache hit", k)
			}
			v, err := r.ToString()
			return checkLen("rueidis DoCache", v, err)
		})
	})
}

// TestRedisReadsReachRedis reads keys through each library set up as
// BenchmarkL2Hit and BenchmarkBatch100's "redis" half set it up, and
// requires that Redis ran exactly the top-level read commands each is
// said to make: no local cache answered, and tiercache took the path it
// is said to take.
func TestRedisReadsReachRedis(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	const reads = 3 * batchSize

	// expect runs op and fails unless Redis ran ops×want[c] calls of each
	// command c of want.
	expect := func(t *testing.T, ops int64, want calls, op func() error) calls {
		t.Helper()
		before := serverNow(t, admin)
		if err := op(); err != nil {
			t.Fatal(err)
		}
		after := serverNow(t, admin)
		after.expectCalls(t, before, ops, want)
		return after.since(before)
	}
	// each reads every key of keys, n times in all.
	each := func(keys []string, n int, read func(k string) error) func() error {
		return func() error {
			for i := range n {
				if err := read(keys[i%len(keys)]); err != nil {
					return err
				}
			}
			return nil
		}
	}

	t.Run("tiercache-L1-off", func(t *testing.T) {
		keys := keysOf("user", batchSize)
		get := func(c *tier.Cache[string, string]) func(k string) error {
			return func(k string) error {
				v, err := c.Get(ctx, k)
				return checkLen("tiercache Get", v, err)
			}
		}
		getMany := func(c *tier.Cache[string, string]) func() error {
			return func() error {
				m, err := c.GetMany(ctx, keys)
				if err == nil && len(m) != batchSize {
					err = fmt.Errorf("GetMany: %d values", len(m))
				}
				return err
			}
		}
		// Node a fills Redis: a miss, a fetch and a fill per key.
		a := newTierNode(t, srv)
		fillTier(t, newTierCache(t, a, "redis", -1, nil), keys, baseValue)

		// Node b has not read these keys yet: its first Get of each runs
		// the read script (whose own GET and PTTL count too), later ones a
		// PTTL and an MGET of the value and the stamps of the fleet's and
		// the namespace's groups, and no script.
		b := newTierNode(t, srv)
		cb := newTierCache(t, b, "redis", -1, nil)
		before := b.Stats()
		expect(t, batchSize, calls{"evalsha": 1, "eval": 0, "mget": 0}, each(keys, batchSize, get(cb)))
		expect(t, reads, calls{"mget": 1, "pttl": 1, "evalsha": 0, "eval": 0}, each(keys, reads, get(cb)))
		// A GetMany of keys it has read: a TIME and one MGET of every value
		// and the two stamps, in one pipeline. Its lease may send a TIME
		// of its own meanwhile.
		d := expect(t, 1, calls{"mget": 1, "pttl": 0, "evalsha": 0, "eval": 0}, getMany(cb))
		if d["time"] < 1 {
			t.Fatalf("GetMany of keys the node has read: Redis ran %d TIME calls, want at least 1", d["time"])
		}
		checkTierHits(t, b, before, 0, batchSize+reads+batchSize)

		// Node c has not read them either: its first GetMany runs the read
		// script per key, in one pipeline; its second, one MGET.
		c := newTierNode(t, srv)
		cc := newTierCache(t, c, "redis", -1, nil)
		before = c.Stats()
		expect(t, 1, calls{"evalsha": batchSize, "eval": 0, "mget": 0}, getMany(cc))
		expect(t, 1, calls{"mget": 1, "pttl": 0, "evalsha": 0, "eval": 0}, getMany(cc))
		checkTierHits(t, c, before, 0, 2*batchSize)
	})
	t.Run("go-redis-cache-no-LocalCache", func(t *testing.T) {
		c, _ := newGoRedisCache(t, srv, false)
		keys := keysOf("grc:user", batchSize)
		fillGoRedisCache(t, c, keys)
		expect(t, reads, calls{"get": 1}, each(keys, reads, func(k string) error {
			var v string
			return checkLen("go-redis/cache Get", v, c.Get(ctx, k, &v))
		}))
	})
	t.Run("rueidis-no-DoCache", func(t *testing.T) {
		c := newRueidis(t, srv, false)
		keys := keysOf("rue:user", batchSize)
		fillRueidis(t, c, keys)
		expect(t, reads, calls{"get": 1}, each(keys, reads, func(k string) error {
			v, err := c.Do(ctx, c.B().Get().Key(k).Build()).ToString()
			return checkLen("rueidis GET", v, err)
		}))
		expect(t, 1, calls{"mget": 1}, func() error {
			vs, err := c.Do(ctx, c.B().Mget().Key(keys...).Build()).AsStrSlice()
			if err == nil && len(vs) != batchSize {
				err = fmt.Errorf("MGET: %d values", len(vs))
			}
			return err
		})
	})
}

// TestFreshnessRounds runs freshness rounds as BenchmarkFreshness does and
// requires what each library's mechanism implies, so that the benchmark
// cannot quietly measure something else. The limits are guards against a
// hang, not timed assertions: tiercache's bus and Redis's CLIENT TRACKING
// deliver in well under a second unless something is broken, and nothing
// ever tells a go-redis/cache node of another's write, so any limit well
// under its local TTL (1 min) shows it stale.
func TestFreshnessRounds(t *testing.T) {
	srv := redistest.Start(t)
	const (
		guard = 30 * time.Second
		// neverTold is how long a go-redis/cache reader is watched.
		neverTold = 50 * time.Millisecond
		rounds    = 3
	)
	for _, tc := range []struct {
		fleet *fleet
		// otherFresh: node B reads the new value within guard.
		otherFresh bool
		// ownAtOnce: node A's first read after its write returns the new
		// value (read-your-writes); false: not required either way.
		ownAtOnce bool
	}{
		{fleet: tierFleet(t, srv, true), otherFresh: true, ownAtOnce: true},
		{fleet: tierFleet(t, srv, false), otherFresh: true, ownAtOnce: true},
		{fleet: goRedisCacheFleet(t, srv), otherFresh: false, ownAtOnce: true},
		// rueidis learns of its own write from Redis's invalidation
		// push, which may come after the SET's reply: A may read the old
		// value for a moment.
		{fleet: rueidisFleet(t, srv), otherFresh: true, ownAtOnce: false},
	} {
		f := tc.fleet
		t.Run(f.name, func(t *testing.T) {
			var audit func(testing.TB)
			if f.audit != nil {
				audit = f.audit()
			}
			for i := range rounds {
				limit := guard
				if !tc.otherFresh {
					limit = neverTold
				}
				if o := f.watch(t, f.prepare(t), false, limit); o.fresh != tc.otherFresh {
					t.Fatalf("round %d, node B: fresh %v after %d stale reads, want fresh %v", i, o.fresh, o.stale, tc.otherFresh)
				} else if !o.fresh && o.stale == 0 {
					t.Fatalf("round %d, node B: neither fresh nor stale", i)
				}
				o := f.watch(t, f.prepare(t), true, guard)
				if !o.fresh {
					t.Fatalf("round %d, node A: its own write not read within %v", i, guard)
				}
				if tc.ownAtOnce && o.stale != 0 {
					t.Fatalf("round %d, node A: %d reads of the old value after its own write returned, want none", i, o.stale)
				}
			}
			if audit != nil {
				audit(t)
			}
		})
	}
}

// TestGoRedisCacheOverwriteKeepsOldValue pins a claim the README makes of
// go-redis/cache v9.0.0 (its issue #105): its TinyLFU local cache does not
// replace a key's entry on Set but adds another; once its admission window
// (1% of the size) has filled with them, a Set of the key moves an older
// entry over the new one, and the same node's Get returns a value written
// that many Sets earlier, until the local TTL. BenchmarkFreshness writes
// each key once, so it never meets this. If a new version of the peer
// fixes it, this test fails: update the README.
func TestGoRedisCacheOverwriteKeepsOldValue(t *testing.T) {
	srv := redistest.Start(t)
	c, _ := newGoRedisCache(t, srv, true)
	ctx := context.Background()
	const key = "grc:overwritten"
	window := tinyLFUSize / 100
	var last string
	for i := range window + 1 {
		last = value(fmt.Sprintf("write:%d:", i))
		if err := c.Set(&gocache.Item{Ctx: ctx, Key: key, Value: last, TTL: redisTTL}); err != nil {
			t.Fatal(err)
		}
	}
	var got string
	if err := c.Get(ctx, key, &got); err != nil {
		t.Fatal(err)
	}
	if want := value("write:0:"); got != want {
		t.Fatalf("after %d Sets of one key, the same node's Get = %.12q…, want the first write %.12q… (the last was %.12q…): go-redis/cache's local cache changed; update the README", window+1, got, want, last)
	}
}
