package tier_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tier"
)

// A refused connection is an outage, not a slow server: with Redis killed,
// Gets, Invalidates and fills give up at once, not after RedisTimeout
// (here an hour) nor after the client's retries (here a thousand, with
// backoff): either would outlast the test's guard.
func TestRefusedConnectionFailsFast(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	cfg := tier.NodeConfig{RedisTimeout: time.Hour, BreakerPause: time.Hour, LeaseTTL: time.Hour}
	rdb := redis.NewClient(&redis.Options{Addr: f.srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: 1000})
	t.Cleanup(func() { _ = rdb.Close() })
	n, err := tier.NewNode(context.Background(), rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	c := cache(t, n, src)
	mustGet(t, c, "k")
	f.srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for i := range 10 {
		key := fmt.Sprint("cold", i)
		src.set(key, "v1")
		if v, err := c.Get(ctx, key); err != nil || v != "v1" {
			t.Fatalf("Get %s with Redis down = %q, %v; want v1 from the source", key, v, err)
		}
	}
	if err := c.Invalidate(ctx, "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with Redis down = %v; want ErrPending", err)
	}
	if st := n.Stats(); st.BreakerOpens != 1 {
		t.Fatalf("breaker opened %d times; want once, at the first refused dial", st.BreakerOpens)
	}
}

// With Redis unreachable and writes pending, the node does not spin: its
// replay retries on the breaker's schedule. Counted in breaker periods,
// not in time: while the breaker opens three more times (each a probe
// that failed), Redis errors grow by a handful, not by thousands.
func TestOutageDoesNotSpin(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	n := f.node(faultCfg, nil)
	c := cache(t, n, src)
	f.srv.Kill()
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		if err := c.Invalidate(ctx, k); !errors.Is(err, tier.ErrPending) {
			t.Fatalf("Invalidate = %v; want ErrPending", err)
		}
	}
	awaitStats(t, n, "the breaker to open", func(st tier.Stats) bool { return st.BreakerOpens >= 1 })
	before := n.Stats()
	awaitStats(t, n, "three failed probes", func(st tier.Stats) bool { return st.BreakerOpens >= before.BreakerOpens+3 })
	after := n.Stats()
	if grew := after.RedisErrors - before.RedisErrors; grew > 20 {
		t.Fatalf("Redis errors grew by %d over 3 breaker periods with 3 writes pending: the replay spins", grew)
	}
	if after.Pending != 3 {
		t.Fatalf("pending = %d; want 3", after.Pending)
	}
}
