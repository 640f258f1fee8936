package tier_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// clusterFleet is a private Redis Cluster (3 masters, 1 replica each) and
// the nodes of a test.
type clusterFleet struct {
	t *testing.T
	c *redistest.Cluster
}

func newClusterFleet(t *testing.T, opts redistest.ClusterOptions) *clusterFleet {
	t.Helper()
	return &clusterFleet{t: t, c: redistest.StartCluster(t, opts)}
}

// node starts a Node with its own cluster client, closed at cleanup.
func (f *clusterFleet) node(cfg tier.NodeConfig) *tier.Node {
	f.t.Helper()
	return f.nodeWithHooks(cfg, nil)
}

func (f *clusterFleet) nodeWithHooks(cfg tier.NodeConfig, hk *hooks.Points) *tier.Node {
	f.t.Helper()
	if cfg.L1MaxBytes == 0 {
		cfg.L1MaxBytes = 1 << 20
	}
	n, err := tier.NewNodeWithHooks(context.Background(), f.c.Client(f.t), cfg, hk)
	if err != nil {
		f.t.Fatalf("NewNode: %v", err)
	}
	f.t.Cleanup(func() { _ = n.Close() })
	return n
}

// client returns an observer's cluster client.
func (f *clusterFleet) client() *redis.ClusterClient { return f.c.Client(f.t) }

// On a real cluster the basic promises hold: one fetch for the fleet, L2
// hits on other nodes, read-your-writes, cross-node eviction, groups,
// InvalidateAll, GetMany, Keys and InvalidatePattern across every master.
func TestClusterBasics(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{})
	src := newSource()
	for i := range 50 {
		src.set(fmt.Sprint("k", i), "v1")
	}
	na, nb := f.node(tier.NodeConfig{}), f.node(tier.NodeConfig{})
	a, b := cache(t, na, src), cache(t, nb, src)
	ctx := context.Background()
	for i := range 50 {
		k := fmt.Sprint("k", i)
		if got := mustGet(t, a, k); got != "v1" {
			t.Fatalf("A Get(%s) = %q", k, got)
		}
		if got := mustGet(t, b, k); got != "v1" {
			t.Fatalf("B Get(%s) = %q", k, got)
		}
	}
	if r := src.reads.Load(); r != 50 {
		t.Fatalf("source read %d times for 50 keys on 2 nodes", r)
	}
	// Invalidate on A: B's L1 copy goes when the message arrives.
	src.set("k1", "v2")
	if err := a.Invalidate(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, a, "k1"); got != "v2" {
		t.Fatalf("A after its invalidation = %q", got)
	}
	eventually(t, func() bool { return mustGet(t, b, "k1") == "v2" }, "B sees k1's invalidation")
	// Set: read-your-writes on A, eviction on B.
	if err := a.Set(ctx, "k2", "v3"); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, a, "k2"); got != "v3" {
		t.Fatalf("A after Set = %q", got)
	}
	eventually(t, func() bool { return mustGet(t, b, "k2") == "v3" }, "B sees k2's Set")
	// InvalidateAll: every key of the namespace, on both tiers.
	for i := range 50 {
		src.set(fmt.Sprint("k", i), "v4")
	}
	if err := a.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if got := mustGet(t, a, fmt.Sprint("k", i)); got != "v4" {
			t.Fatalf("A after InvalidateAll: k%d = %q", i, got)
		}
	}
	eventually(t, func() bool {
		for i := range 50 {
			if mustGet(t, b, fmt.Sprint("k", i)) != "v4" {
				return false
			}
		}
		return true
	}, "B sees InvalidateAll")
	// GetMany across slots.
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	got, err := b.GetMany(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if got[k] != "v4" {
			t.Fatalf("GetMany[%s] = %q", k, got[k])
		}
	}
	// Keys walks every master.
	var found int
	for _, err := range a.Keys(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		found++
	}
	if found != 50 {
		t.Fatalf("Keys found %d keys, want 50", found)
	}
	n, err := na.InvalidatePattern(ctx, ns+":k1*")
	if err != nil || n != 11 {
		t.Fatalf("InvalidatePattern = %d, %v; want 11", n, err)
	}
	// Flush: an announcement with no change.
	drops := nb.Stats().Drops
	if err := na.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	eventually(t, func() bool { return nb.Stats().Drops > drops }, "B drops its L1 on the fleet's Flush")
}

// migrate moves slot, with its keys, to another master.
func (f *clusterFleet) migrate(slot int) {
	f.t.Helper()
	_, to := f.c.MigrateSlotAway(f.t, slot)
	if got := f.c.MasterOfSlot(slot); got.Addr() != to.Addr() {
		f.t.Fatalf("slot %d is on %s after the migration, want %s", slot, got.Addr(), to.Addr())
	}
}

// busMaster returns the master that serves the bus's slot.
func (f *clusterFleet) busMaster() *redistest.Server {
	return f.c.MasterOfKey(l2.BusKeysFor(tier.DefaultPrefix, true).Channel)
}

// keysInSlot returns n keys of namespace ns whose Redis names all lie in
// one slot, and that slot.
func keysInSlot(n int) ([]string, int) {
	slot := l2.Slot(l2.KeysFor(tier.DefaultPrefix, ns, "m0").Value)
	keys := []string{"m0"}
	for i := 1; len(keys) < n; i++ {
		k := fmt.Sprint("m", i)
		if l2.Slot(l2.KeysFor(tier.DefaultPrefix, ns, k).Value) == slot {
			keys = append(keys, k)
		}
	}
	return keys, slot
}

// clusterUnderLoad runs a writer on node A and readers on A and B (see
// load) on a fresh cluster, injects fault once 200 writes were
// acknowledged, and checks the bound of every read until 200 more were,
// then that every key converges. It returns the load and the two nodes.
func clusterUnderLoad(t *testing.T, cfg tier.NodeConfig, keys []string, fault func(f *clusterFleet)) (*load, []*tier.Node) {
	f := newClusterFleet(t, redistest.ClusterOptions{})
	src := newSource()
	na, nb := f.node(cfg), f.node(cfg)
	a, b := cache(t, na, src), cache(t, nb, src)
	l := startLoad(t, src, keys, a, reader{a, 0, "A"}, reader{b, cfg.LeaseTTL, "B"}, reader{b, cfg.LeaseTTL, "B"})
	l.progress("before the fault", 200)
	fault(f)
	l.progress("after the fault", 200)
	l.finish(na, b)
	return l, []*tier.Node{na, nb}
}

// resubscribed fails the test unless every node lost its subscription and
// subscribed again.
func resubscribed(t *testing.T, nodes []*tier.Node) {
	t.Helper()
	for i, n := range nodes {
		if st := n.Stats(); st.BusDisconnects == 0 {
			t.Errorf("node %d never lost its subscription: %+v", i, st)
		}
	}
}

// spread are keys whose Redis names lie on every master of a 3-master
// cluster, several per master.
var spread = []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11"}

// clusterCfg is the fault tests' node config: a short lease, so that the
// bound is checked tightly, and a short Redis timeout.
var clusterCfg = tier.NodeConfig{LeaseTTL: 500 * time.Millisecond, RedisTimeout: 300 * time.Millisecond}

// A master (the bus's own, which also holds cached keys) is SIGKILLed under
// load, its replica promoted, and the old master brought back as a
// replica. With WaitReplicas 1, no read misses an acknowledged
// invalidation beyond the bound; writes to the dead master's slots fail
// with ErrPending until a replica can acknowledge them, then land.
func TestClusterKillMaster(t *testing.T) {
	cfg := clusterCfg
	cfg.WaitReplicas, cfg.WaitTimeout = 1, 300*time.Millisecond
	l, _ := clusterUnderLoad(t, cfg, spread, func(f *clusterFleet) {
		old := f.busMaster()
		f.c.KillMaster(t, old)
		f.c.AwaitFailover(t, old)
		f.c.RestartMember(t, old)
	})
	if l.pendingErrs.Load() == 0 {
		t.Errorf("no write failed while a master was down: the fault was not exercised")
	}
}

// CLUSTER FAILOVER swaps the bus's master with its replica under load:
// coordinated, it loses no write, and the bus follows the new master.
func TestClusterManualFailover(t *testing.T) {
	clusterUnderLoad(t, clusterCfg, spread, func(f *clusterFleet) {
		f.c.ManualFailover(t, f.c.ReplicaOf(f.busMaster()))
	})
}

// A slot holding every key of the load is migrated to another master while
// the writer invalidates them and the readers' misses fill them (fills in
// flight through the move: ASK, TRYAGAIN).
func TestClusterMigrateSlot(t *testing.T) {
	keys, slot := keysInSlot(6)
	clusterUnderLoad(t, clusterCfg, keys, func(f *clusterFleet) { f.migrate(slot) })
}

// The subscription to the bus's shard is killed by the server (CLIENT KILL
// TYPE pubsub): every node drops L1 and subscribes again, and the bound
// holds throughout.
func TestClusterPubSubKilled(t *testing.T) {
	_, nodes := clusterUnderLoad(t, clusterCfg, spread, func(f *clusterFleet) {
		if n, _ := f.busMaster().Do("CLIENT", "KILL", "TYPE", "pubsub").(int64); n < 2 {
			t.Fatalf("CLIENT KILL TYPE pubsub killed %d connections, want the 2 nodes'", n)
		}
	})
	resubscribed(t, nodes)
}

// 10,000 keys spread over the masters of a cluster, each holding its share
// within 20% of even.
func TestClusterSpreadsKeys(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	n := f.node(tier.NodeConfig{})
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	const total = 10_000
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < total; i += 16 {
				if err := c.Set(ctx, fmt.Sprint("user:", i), "v"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	perMaster := countPerMaster(t, f.client(), tier.DefaultPrefix+":v:*")
	sum := 0
	for _, v := range perMaster {
		sum += v
	}
	even := float64(total) / float64(len(perMaster))
	for addr, v := range perMaster {
		if d := (float64(v) - even) / even; d > 0.2 || d < -0.2 {
			t.Errorf("master %s holds %d values, %+.0f%% from even (%d of %d over %d masters)", addr, v, 100*d, v, sum, len(perMaster))
		}
	}
	if sum != total || len(perMaster) != 3 {
		t.Fatalf("%d values over %d masters, want %d over 3: %v", sum, len(perMaster), total, perMaster)
	}
	t.Logf("values per master: %v", perMaster)
}

// A message lost on the way to one node (the bus is one shard on a
// cluster) is detected by its sequence number: the node drops its L1.
func TestClusterDetectsLostMessage(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	src := newSource()
	src.set("k", "v1")
	src.set("other", "o")
	eb, hb := newBusEvents()
	var dropOne sync.Once
	hb.DropMessage = func(payload []byte) bool {
		dropped := false
		if m, err := bus.Decode(payload); err == nil && names(m, "other") {
			dropOne.Do(func() { dropped = true })
		}
		return dropped
	}
	na, nb := f.node(tier.NodeConfig{}), f.nodeWithHooks(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	mustGet(t, b, "k")
	// A first message sets B's sequence number.
	if err := a.Invalidate(context.Background(), "first"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "first")
	if err := a.Invalidate(context.Background(), "other"); err != nil { // lost on B
		t.Fatal(err)
	}
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	eb.awaitDropped(t, bus.Gap)
	if got := mustGet(t, b, "k"); got != "v2" {
		t.Fatalf("B after the gap = %q", got)
	}
}

// names reports whether m names key.
func names(m *bus.Message, key string) bool {
	for _, g := range m.Groups {
		if slices.Contains(g.Keys, key) {
			return true
		}
	}
	return false
}

// A cluster in a failed state (a master with no replica dies, and the
// others answer CLUSTERDOWN) is an outage, never a wrong answer: reads go
// to the source, writes are queued (ErrPending); once the cluster is back,
// the queue is replayed and every node reads the new value.
func TestClusterDownIsAnOutage(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	src := newSource()
	na, nb := f.node(clusterCfg), f.node(clusterCfg)
	a, b := cache(t, na, src), cache(t, nb, src)
	// A key on a master other than the one that dies, and not the bus's.
	bm := f.busMaster()
	var victim *redistest.Server
	for _, m := range f.c.Masters() {
		if m.Addr() != bm.Addr() {
			victim = m
			break
		}
	}
	key := ""
	for i := 0; key == ""; i++ {
		k := fmt.Sprint("d", i)
		if m := f.c.MasterOfKey(l2.KeysFor(tier.DefaultPrefix, ns, k).Value); m.Addr() != victim.Addr() {
			key = k
		}
	}
	src.set(key, "v1")
	if got := mustGet(t, b, key); got != "v1" {
		t.Fatalf("Get = %q", got)
	}
	victim.Kill()
	rdb := f.client()
	eventually(t, func() bool {
		return redis.HasErrorPrefix(rdb.Get(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, key).Value).Err(), "CLUSTERDOWN")
	}, "the cluster answers CLUSTERDOWN")
	src.set(key, "v2")
	err := a.Invalidate(context.Background(), key)
	if !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate on a failed cluster = %v, want ErrPending", err)
	}
	for _, c := range []*tier.Cache[string, string]{a, b} {
		// B's L1 may serve v1 until its lease lapses (the bus message did
		// not go out): the bound. Then it reads the source.
		eventually(t, func() bool { return mustGet(t, c, key) == "v2" }, "reads answered from the source")
	}
	f.c.RestartMember(t, victim)
	eventually(t, func() bool { return na.Stats().Pending == 0 }, "the queued invalidation replayed")
	if got := mustGet(t, b, key); got != "v2" {
		t.Fatalf("B after recovery = %q", got)
	}
}

// A script cache flushed on one master (SCRIPT FLUSH, or a promoted replica
// that never loaded the scripts) costs a resend of the script, never an
// error: reads, fills, writes and group invalidations go on.
func TestClusterScriptFlushedOnOneMaster(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	src := newSource()
	n := f.node(tier.NodeConfig{})
	c := cache(t, n, src)
	ctx := context.Background()
	for _, k := range spread {
		src.set(k, "v1")
		mustGet(t, c, k)
	}
	f.c.Masters()[0].Do("SCRIPT", "FLUSH")
	for _, k := range spread {
		src.set(k, "v2")
		if err := c.Invalidate(ctx, k); err != nil {
			t.Fatalf("Invalidate(%s): %v", k, err)
		}
		if got := mustGet(t, c, k); got != "v2" {
			t.Fatalf("Get(%s) = %q", k, got)
		}
	}
	f.c.Masters()[1].Do("SCRIPT", "FLUSH")
	if err := c.InvalidateAll(ctx); err != nil {
		t.Fatalf("InvalidateAll: %v", err)
	}
	if st := n.Stats(); st.Caches.Errors > 0 {
		t.Fatalf("errors after SCRIPT FLUSH: %+v", st)
	}
}

// R31 on a cluster: the group's state is per slot, and a group
// invalidation advances every slot's clock, so a fill that began before it
// is refused in whichever slot its key lies.
func TestRace_R31_GroupInvalidatedDuringFill_Cluster(t *testing.T) {
	raceGroupInvalidatedDuringFill(t, func(t *testing.T) func(tier.NodeConfig) *tier.Node {
		f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
		return f.node
	})
}

// R50: the bus's own slot moves to another master under load. Redis ends
// every node's subscription to the shard channel (SUNSUBSCRIBE); each node
// drops its L1, subscribes again where the slot went, and the bound holds.
func TestRace_R50_BusSlotMigrated(t *testing.T) {
	busSlot := l2.Slot(l2.BusKeysFor(tier.DefaultPrefix, true).Channel)
	_, nodes := clusterUnderLoad(t, clusterCfg, spread, func(f *clusterFleet) { f.migrate(busSlot) })
	resubscribed(t, nodes)
}

// A resource on a cluster: one load for the fleet, its chunks in one slot,
// its announcement on the bus's shard.
func TestClusterResourceLoadsOnce(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	resourceLoadsOnce(t, func() *tier.Node { return f.node(tier.NodeConfig{}) })
}

// What a cluster cannot serve is refused: a client that reads from
// replicas, and a namespace that would break the keys' hash tag.
func TestClusterRefusesBadConfig(t *testing.T) {
	f := newClusterFleet(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	ro := redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.c.Addrs(), ReadOnly: true})
	t.Cleanup(func() { _ = ro.Close() })
	if _, err := tier.NewNode(context.Background(), ro, tier.NodeConfig{}); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("NewNode with a ReadOnly cluster client = %v, want ErrConfig", err)
	}
	n := f.node(tier.NodeConfig{})
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "a}b", Fetch: newSource().fetch}); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("namespace with '}' on a cluster = %v, want ErrConfig", err)
	}
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "a{b", Fetch: newSource().fetch}); err != nil {
		t.Fatalf("namespace with '{' on a cluster = %v, want nil", err)
	}
}

// countPerMaster counts the keys matching pattern on each master, by
// address.
func countPerMaster(tb testing.TB, rdb *redis.ClusterClient, pattern string) map[string]int {
	tb.Helper()
	var (
		mu        sync.Mutex
		perMaster = map[string]int{}
	)
	if err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		count := 0
		iter := m.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			count++
		}
		mu.Lock()
		perMaster[m.Options().Addr] = count
		mu.Unlock()
		return iter.Err()
	}); err != nil {
		tb.Fatal(err)
	}
	return perMaster
}
