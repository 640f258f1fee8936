package tier_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// R36: the group clock (<prefix>:gseq) has no TTL, so Redis's allkeys
// eviction policies may evict it. A fill that claimed before the eviction
// must not land after a group invalidation that restarted the clock: it
// would compare its claim's sequence number with one of the new clock and
// land as fresh, and every node would then serve the old value from Redis.
// Run under each allkeys policy, with real eviction.
func TestRace_R36_EvictedGroupClock(t *testing.T) {
	for _, policy := range []string{"allkeys-lru", "allkeys-lfu", "allkeys-random"} {
		t.Run(policy, func(t *testing.T) {
			// lfu-log-factor 0: every read counts, so that the junk can be
			// made more frequent than the group clock in a few reads.
			srv := redistest.Start(t, "--maxmemory", "2mb", "--maxmemory-policy", policy, "--lfu-log-factor", "0")
			f := &fleet{t: t, srv: srv, rdb: srv.Client(t)}
			src := newSource()
			src.set("k", "v1")
			grouped := func(n *tier.Node) *tier.Cache[string, string] {
				c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch,
					Groups: func(string, string) []string { return []string{"G"} }})
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
			a, b := grouped(na), grouped(nb)
			ctx := context.Background()
			// Move the clock on, so that a restarted clock is behind it.
			for range 5 {
				if err := nb.InvalidateGroup(ctx, "other"); err != nil {
					t.Fatal(err)
				}
			}
			src.gated.Store(true)
			first := goGet(ctx, a, "k")
			held := src.next(t) // A claimed k and read v1
			evict(t, f.rdb, policy, "tc:gseq", l2.KeysFor(tier.DefaultPrefix, ns, "k").Flag)
			src.gated.Store(false)
			src.set("k", "v2")
			if err := nb.InvalidateGroup(ctx, "G"); err != nil {
				t.Fatal(err)
			}
			close(held.release)
			if r := await(t, first); r.err != nil || r.v != "v1" {
				t.Fatalf("A's Get = %q, %v; want v1 (its read overlapped the write)", r.v, r.err)
			}
			if got := f.stored("k"); got == "v1" {
				t.Fatal("the fill that claimed before the group invalidation landed in Redis")
			}
			for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
				if v := mustGet(t, c, "k"); v != "v2" {
					t.Fatalf("node %s after InvalidateGroup returned = %q; want v2", name, v)
				}
			}
		})
	}
}

// evict writes junk into a Redis running under maxmemory with policy until
// Redis has evicted key. Keys in keep that Redis evicts first are put back
// as they were (value and remaining lifetime), so that key's is the only
// loss the test sees. Under LRU it first waits until key has been idle for
// a second (Redis's LRU clock counts whole seconds), under LFU it reads the
// junk more often than key was read; so every policy comes to key.
func evict(t *testing.T, rdb *redis.Client, policy, key string, keep ...string) {
	t.Helper()
	ctx := context.Background()
	type saved struct {
		val string
		ttl time.Duration
	}
	kept := make(map[string]saved, len(keep))
	for _, k := range keep {
		v, err := rdb.Get(ctx, k).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", k, err)
		}
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil || ttl <= 0 {
			t.Fatalf("PTTL %s = %v, %v", k, ttl, err)
		}
		kept[k] = saved{v, ttl}
	}
	touches := 1
	switch policy {
	case "allkeys-lru":
		deadline := time.Now().Add(guard)
		for {
			idle, err := rdb.ObjectIdleTime(ctx, key).Result()
			if err != nil {
				t.Fatalf("OBJECT IDLETIME %s: %v", key, err)
			}
			if idle >= 2*time.Second {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never became idle", key)
			}
			if err := rdb.Ping(ctx).Err(); err != nil { // a round trip, not a sleep
				t.Fatal(err)
			}
		}
	case "allkeys-lfu":
		freq, err := rdb.ObjectFreq(ctx, key).Result()
		if err != nil {
			t.Fatalf("OBJECT FREQ %s: %v", key, err)
		}
		touches = int(freq) + 4
	}
	junk := strings.Repeat("x", 16<<10)
	for batch := range 2000 {
		pipe := rdb.Pipeline()
		for i := range 16 {
			k := fmt.Sprintf("junk:%d:%d", batch, i)
			pipe.Set(ctx, k, junk, 0)
			for range touches - 1 {
				pipe.StrLen(ctx, k) // a read that counts (EXISTS does not)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("junk writes: %v", err)
		}
		for k, s := range kept {
			if n, err := rdb.Exists(ctx, k).Result(); err != nil {
				t.Fatal(err)
			} else if n == 0 {
				if err := rdb.Set(ctx, k, s.val, s.ttl).Err(); err != nil {
					t.Fatalf("putting %s back: %v", k, err)
				}
			}
		}
		if n, err := rdb.Exists(ctx, key).Result(); err != nil {
			t.Fatal(err)
		} else if n == 0 {
			return
		}
	}
	t.Fatalf("Redis never evicted %s", key)
}
