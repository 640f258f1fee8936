package tier_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// faultCfg makes a node notice an unreachable Redis quickly.
var faultCfg = tier.NodeConfig{
	LeaseTTL:     200 * time.Millisecond,
	RedisTimeout: 100 * time.Millisecond,
	BreakerPause: 100 * time.Millisecond,
}

// awaitStats waits until a node's stats satisfy cond: an event the node
// decides, not a sleep.
func awaitStats(t *testing.T, n *tier.Node, what string, cond func(tier.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond(n.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats %+v", what, n.Stats())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, bounded by the guard
	}
}

// R17, R27: through a 5-second outage (Redis stopped, keeping its data) a
// node answers every Get from the source with no error; its invalidations
// issued meanwhile are queued, replayed when Redis is back, and reach the
// other node, which then reads the new state.
func TestRace_R17_OutageReplay(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for i := range 10 {
		src.set(fmt.Sprint("k", i), "v1")
	}
	eb, hb := newBusEvents()
	na, nb := f.node(faultCfg, nil), f.node(faultCfg, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	for i := range 10 {
		warm(t, nb, b, fmt.Sprint("k", i))
	}
	ctx := context.Background()

	f.srv.Pause()
	src.set("k0", "v2")
	if err := a.Invalidate(ctx, "k0"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate during the outage = %v, want ErrPending", err)
	}
	start := time.Now()
	gets := 0
	for time.Since(start) < 5*time.Second {
		k := fmt.Sprint("k", gets%10)
		v, err := a.Get(ctx, k)
		if err != nil {
			t.Fatalf("Get(%s) during the outage: %v", k, err)
		}
		if want := map[bool]string{true: "v2", false: "v1"}[k == "k0"]; v != want {
			t.Fatalf("Get(%s) during the outage = %q, want %q", k, v, want)
		}
		gets++
	}
	if st := na.Stats(); st.BreakerOpens == 0 || st.Pending == 0 {
		t.Fatalf("after the outage: %+v", st)
	}
	t.Logf("%d Gets answered during the 5 s outage", gets)

	f.srv.Resume()
	eb.awaitApplied(t, "k0") // A's replay reached B
	awaitStats(t, na, "the replay", func(s tier.Stats) bool { return s.Pending == 0 && s.Replayed >= 1 })
	if s := f.stored("k0"); s == "v1" {
		t.Fatal("Redis still holds the value invalidated during the outage")
	}
	for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
		if v := mustGet(t, c, "k0"); v != "v2" {
			t.Fatalf("node %s after recovery = %q, want v2", name, v)
		}
	}
}

// R24, R25: Redis restarts from a snapshot taken before an invalidation
// (persistence, or a failover that lost the last writes), resurrecting the
// old value. The bound is its L2 TTL, which the snapshot keeps: no L1 serves
// it longer, and once it expires every node reads the new state.
func TestRace_R24_R25_Resurrection(t *testing.T) {
	const ttl = 2 * time.Second
	srv := redistest.Start(t) // persistence off, but it loads dump.rdb on start
	f := &fleet{t: t, srv: srv, rdb: srv.Client(t)}
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	na, nb := f.node(faultCfg, nil), f.node(faultCfg, &hooks.Points{Bus: hb})
	mk := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := mk(na), mk(nb)
	mustGet(t, a, "k")
	srv.Do("SAVE") // the snapshot holds v1
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	srv.Restart() // v1 is back, with the expiry it had
	eb.awaitDropped(t, 1)
	eb.forgetRenewals()
	eb.awaitRenewed(t)
	if s := f.stored("k"); s != "v1" {
		t.Fatalf("the snapshot did not resurrect v1 (Redis holds %q): the test is not testing R24", s)
	}
	// Within the bound, v1 may be served; never from an L1 entry that
	// outlives the L2 entry.
	mustGet(t, b, "k")
	tier.WaitL1(nb)
	left, err := f.rdb.PTTL(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, "k").Value).Result()
	if err != nil {
		t.Fatal(err)
	}
	if l1, ok := tier.L1TTL(b, "k"); ok && l1 > left {
		t.Fatalf("L1 keeps the resurrected value %v, longer than Redis (%v)", l1, left)
	}
	// Past the bound, everyone reads v2.
	deadline := time.Now().Add(guard)
	for f.stored("k") == "v1" {
		if time.Now().After(deadline) {
			t.Fatal("the resurrected value never expired")
		}
		time.Sleep(10 * time.Millisecond) // waiting for Redis to expire it
	}
	for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
		if v := mustGet(t, c, "k"); v != "v2" {
			t.Fatalf("node %s after the resurrected value expired = %q", name, v)
		}
	}
}

// R26: under maxmemory, Redis evicts values, flags, meta lists and group
// stamps at random; none of it lets a node serve a member of an
// invalidated group as fresh.
func TestRace_R26_MaxmemoryEviction(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-random")
	f := &fleet{t: t, srv: srv, rdb: srv.Client(t)}
	version := "v1"
	fetch := func(_ context.Context, key string) (string, error) {
		return key + "@" + version + strings.Repeat(".", 8<<10), nil
	}
	mk := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: fetch,
			Groups: func(string, string) []string { return []string{"all"} }})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	a, b := mk(na), mk(nb)
	ctx := context.Background()
	const keys = 1000 // about 8 MiB of values for 4 MiB of Redis
	for i := range keys {
		mustGet(t, a, fmt.Sprint("k", i))
	}
	if info, _ := f.rdb.Info(ctx, "stats").Result(); !strings.Contains(info, "evicted_keys:") || strings.Contains(info, "evicted_keys:0\r") {
		t.Fatal("Redis evicted nothing: the test is not testing R26")
	}
	version = "v2"
	if err := na.InvalidateGroup(ctx, "all"); err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(16)
	for i := range keys {
		g.Go(func() error {
			k := fmt.Sprint("k", i)
			v, err := b.Get(ctx, k)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(v, k+"@v2") {
				return fmt.Errorf("%s served stale after its group was invalidated", k)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// R17: past MaxPending, the invalidations that do not fit are not dropped:
// the replay invalidates their whole namespace, on every node.
func TestPendingOverflowEscalates(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for i := range 20 {
		src.set(fmt.Sprint("k", i), "v1")
	}
	cfg := faultCfg
	cfg.MaxPending = 4
	eb, hb := newBusEvents()
	na, nb := f.node(cfg, nil), f.node(faultCfg, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	for i := range 20 {
		mustGet(t, b, fmt.Sprint("k", i))
	}
	f.srv.Pause()
	for i := range 20 {
		src.set(fmt.Sprint("k", i), "v2")
		if err := a.Invalidate(context.Background(), fmt.Sprint("k", i)); !errors.Is(err, tier.ErrPending) {
			t.Fatalf("Invalidate during the outage = %v", err)
		}
	}
	// The replay keeps trying (and failing) meanwhile, taking ops out and
	// putting them back, so how many overflowed varies; some must have.
	if st := na.Stats(); st.PendingOverflow == 0 {
		t.Fatalf("stats = %+v, want ops past the bound", st)
	}
	f.srv.Resume()
	waitGroupApplied(t, eb, "\x00ns\x00"+ns)
	awaitStats(t, na, "the replay", func(s tier.Stats) bool { return s.Pending == 0 })
	for i := range 20 {
		if v := mustGet(t, b, fmt.Sprint("k", i)); v != "v2" {
			t.Fatalf("k%d on B after the escalated replay = %q", i, v)
		}
	}
}

// A Fetch that never returns on its own: Get returns when its ctx is done,
// and the shared fetch is cancelled once nobody waits for it.
func TestFetchNeverReturns(t *testing.T) {
	f := newFleet(t)
	stopped := make(chan struct{})
	n := f.node(tier.NodeConfig{}, nil)
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: func(ctx context.Context, _ string) (string, error) {
		<-ctx.Done() // only its context ends it
		close(stopped)
		return "", ctx.Err()
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get = %v, want the caller's deadline", err)
	}
	wait(t, stopped, "the abandoned fetch to be cancelled")
	// The claim goes once the cancelled Fetch has returned, which it does
	// after closing stopped.
	f.awaitNoFlag("k")
}

type user struct{ Name string }

// A nil value of a pointer type is a value like any other: cached, and
// returned as nil.
func TestNilPointerValue(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	reads := 0
	c, err := tier.New(n, tier.Config[string, *user]{Namespace: ns, Fetch: func(context.Context, string) (*user, error) {
		reads++
		return nil, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if u, err := c.Get(context.Background(), "k"); err != nil || u != nil {
			t.Fatalf("Get = %v, %v; want nil, nil", u, err)
		}
	}
	other, err := tier.New(f.node(tier.NodeConfig{}, nil), tier.Config[string, *user]{Namespace: ns, Fetch: func(context.Context, string) (*user, error) {
		return nil, errors.New("must be an L2 hit")
	}})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := other.Get(context.Background(), "k"); err != nil || u != nil {
		t.Fatalf("L2 hit of a nil pointer = %v, %v", u, err)
	}
	if reads != 1 {
		t.Fatalf("source read %d times", reads)
	}
}

// proxiedNode starts a node whose every connection to Redis goes through a
// fault proxy.
func (f *fleet) proxiedNode(cfg tier.NodeConfig, hk *hooks.Points) (*tier.Node, *faultproxy.Proxy) {
	f.t.Helper()
	p := faultproxy.Start(f.t, f.srv.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true, DialTimeout: 200 * time.Millisecond})
	f.t.Cleanup(func() { _ = rdb.Close() })
	n, err := tier.NewNodeWithHooks(context.Background(), rdb, cfg, hk)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = n.Close() })
	return n, p
}

// R27, R15: a node partitioned from Redis (its packets silently lost) gets
// no invalidations; it stops serving L1 when its lease, granted by a ping
// sent before the partition, runs out, and answers from the source, with no
// error, until the partition heals; then it serves L1 again.
func TestRace_R27_PartitionedNode(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	ea, ha := newBusEvents()
	var lastGrant time.Time
	var grantMu sync.Mutex
	ha.Renewed = func(at time.Time) {
		grantMu.Lock()
		lastGrant = at
		grantMu.Unlock()
		ea.renewed <- at
	}
	na, proxy := f.proxiedNode(faultCfg, &hooks.Points{Bus: ha})
	nb := f.node(faultCfg, nil)
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, na, a, "k")

	proxy.Blackhole()
	cut := time.Now()
	src.set("k", "v2")
	if err := b.Invalidate(context.Background(), "k"); err != nil { // A cannot hear this
		t.Fatal(err)
	}
	ea.awaitDropped(t, bus.LeaseLapsed)
	grantMu.Lock()
	granted := lastGrant
	grantMu.Unlock()
	if !granted.Before(cut) {
		t.Fatalf("the lease that lapsed was granted by a ping sent at %v, after the partition at %v", granted, cut)
	}
	if v := mustGet(t, a, "k"); v != "v2" {
		t.Fatalf("partitioned A = %q, want v2 from the source", v)
	}
	ea.forgetRenewals()
	proxy.Pass()
	ea.awaitRenewed(t)
	mustGet(t, a, "k")
	if !inL1(t, na, a, "k") {
		t.Fatal("A does not serve L1 again after the partition healed")
	}
}

// A slow network (every packet held longer than RedisTimeout): Get answers
// from the source without error instead of waiting for Redis, and a
// caller's deadline shorter than RedisTimeout is honoured too.
func TestSlowRedis(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	na, proxy := f.proxiedNode(faultCfg, nil)
	a := cache(t, na, src)
	proxy.Delay(time.Second) // ten times RedisTimeout
	if v := mustGet(t, a, "k"); v != "v1" {
		t.Fatalf("Get on a slow network = %q", v)
	}
	if st := na.Stats(); st.RedisErrors == 0 || st.Caches.UncachedFetches != 1 {
		t.Fatalf("stats = %+v; the read should have timed out and gone to the source", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	src.gated.Store(true) // a fetch that outlives the caller
	if _, err := a.Get(ctx, "j"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a short deadline = %v, want DeadlineExceeded", err)
	}
}
