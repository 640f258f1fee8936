package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// opTimeout bounds one command of a test through a cluster or failover
// client, retries inside go-redis included.
const opTimeout = 10 * time.Second

// The cluster comes up with three masters and three replicas on their own
// ports, every member sees all slots served, every replica's link is up, and
// MasterOfKey names the member that holds a key written through the client.
func TestClusterStarts(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	addrs := c.Addrs()
	if len(addrs) != 6 {
		t.Fatalf("Addrs() = %v, want 6 members", addrs)
	}
	ports := make(map[int]bool)
	for _, s := range c.Members() {
		if s.Port() == 6379 || ports[s.Port()] {
			t.Fatalf("member port %d is the default or taken twice: %v", s.Port(), addrs)
		}
		ports[s.Port()] = true
		info := infoOf(t, s, "CLUSTER", "INFO")
		if info["cluster_state"] != "ok" || info["cluster_slots_ok"] != "16384" {
			t.Fatalf("%s: cluster_state:%s cluster_slots_ok:%s, want ok and 16384",
				s.Addr(), info["cluster_state"], info["cluster_slots_ok"])
		}
	}

	masters, replicas := c.Masters(), c.Replicas()
	if len(masters) != 3 || len(replicas) != 3 {
		t.Fatalf("%d masters and %d replicas, want 3 and 3", len(masters), len(replicas))
	}
	for _, m := range masters {
		r := c.ReplicaOf(m)
		repl := infoOf(t, r, "INFO", "replication")
		if repl["role"] != "slave" || repl["master_port"] != strconv.Itoa(m.Port()) || repl["master_link_status"] != "up" {
			t.Fatalf("replica %s of %s: role:%s master_port:%s master_link_status:%s",
				r.Addr(), m.Addr(), repl["role"], repl["master_port"], repl["master_link_status"])
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	cc := c.Client(t)
	for i := range 20 {
		key := fmt.Sprint("key:", i)
		if err := cc.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		// Do on a member: the owner answers for its own key.
		if got := c.MasterOfKey(key).Do("GET", key); got != strconv.Itoa(i) {
			t.Fatalf("GET %s on MasterOfKey = %#v, want %d", key, got, i)
		}
	}
}

// 10,000 keys written through the cluster client spread over the masters,
// each holding within 20% of an even share.
func TestClusterSpreadsKeysOverMasters(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	const n, batch = 10000, 1000
	for i := 0; i < n; i += batch {
		_, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < i+batch; j++ {
				p.Set(ctx, fmt.Sprint("key:", j), j, 0)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("pipelined SETs from %d: %v", i, err)
		}
	}
	counts := c.KeysPerMaster()
	t.Logf("keys per master: %v", counts)
	if len(counts) != 3 {
		t.Fatalf("KeysPerMaster() = %v, want 3 masters", counts)
	}
	var total int64
	for addr, k := range counts {
		total += k
		if even := float64(n) / 3; float64(k) < 0.8*even || float64(k) > 1.2*even {
			t.Errorf("master %s holds %d keys, not within 20%% of %.0f", addr, k, even)
		}
	}
	if total != n {
		t.Fatalf("masters hold %d keys in all, want %d", total, n)
	}
}

// A killed master's replica takes its slots over with the data it had
// replicated; the client made before the kill reads and writes on, and the
// old master, restarted, rejoins as a replica of the promoted one.
func TestClusterKillMasterFailsOverAndRejoins(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	ctx := context.Background()
	const n = 100
	key := func(i int) string { return fmt.Sprintf("{failover}:%d", i) }
	for i := range n {
		if err := cc.Set(ctx, key(i), i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key(i), err)
		}
	}
	old := c.MasterOfKey(key(0))
	replica := c.ReplicaOf(old)
	awaitCaughtUp(t, old, replica)

	start := time.Now()
	c.KillMaster(t, old)
	promoted := c.AwaitFailover(t, old)
	t.Logf("failover took %v", time.Since(start))
	if promoted != replica {
		t.Fatalf("AwaitFailover = %s, want the replica %s", promoted.Addr(), replica.Addr())
	}
	if masters := c.Masters(); len(masters) != 3 || slices.Contains(masters, old) || !slices.Contains(masters, promoted) {
		t.Fatalf("Masters() after the failover = %v; want 3, with %s and without %s", addrsOf(masters), promoted.Addr(), old.Addr())
	}
	if got := c.MasterOfKey(key(0)); got != promoted {
		t.Fatalf("MasterOfKey after the failover = %s, want %s", got.Addr(), promoted.Addr())
	}

	// The client still knows the dead master for these slots; it may need
	// a few of its own retries to learn the new one, but no command fails.
	start = time.Now()
	getAll(t, cc, key, n, func(i int) string { return strconv.Itoa(i) })
	t.Logf("the first reads after the failover took %v", time.Since(start))
	setAll(t, cc, key, n, "after")
	getAll(t, cc, key, n, func(int) string { return "after" })

	c.RestartMember(t, old)
	if got := c.ReplicaOf(promoted); got != old {
		t.Fatalf("ReplicaOf(promoted) after the restart = %s, want the old master %s", got.Addr(), old.Addr())
	}
	if repl := infoOf(t, old, "INFO", "replication"); repl["role"] != "slave" || repl["master_port"] != strconv.Itoa(promoted.Port()) {
		t.Fatalf("restarted %s: role:%s master_port:%s, want a replica of %d", old.Addr(), repl["role"], repl["master_port"], promoted.Port())
	}
	getAll(t, cc, key, n, func(int) string { return "after" })
}

// A paused master is failed over like a dead one; resumed, it finds its
// slots taken over and rejoins as a replica of the promoted one.
func TestClusterPausedMasterFailsOverAndRejoins(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	const key = "{pause}"
	setAll(t, cc, func(int) string { return key }, 1, "before")
	old := c.MasterOfKey(key)
	replica := c.ReplicaOf(old)
	awaitCaughtUp(t, old, replica)

	start := time.Now()
	c.PauseMaster(t, old)
	promoted := c.AwaitFailover(t, old)
	t.Logf("failover took %v", time.Since(start))
	if promoted != replica {
		t.Fatalf("AwaitFailover = %s, want the replica %s", promoted.Addr(), replica.Addr())
	}
	// The client's connection to the paused master times out before it
	// turns to the new one: give it more than one opTimeout.
	ctx, cancel := context.WithTimeout(context.Background(), 3*opTimeout)
	defer cancel()
	start = time.Now()
	if got, err := cc.Get(ctx, key).Result(); err != nil || got != "before" {
		t.Fatalf("GET with the old master paused = %q, %v; want before", got, err)
	}
	t.Logf("the first read with the old master paused took %v", time.Since(start))

	old.Resume()
	c.AwaitSettled(t)
	if got := c.ReplicaOf(promoted); got != old {
		t.Fatalf("ReplicaOf(promoted) after Resume = %s, want the old master %s", got.Addr(), old.Addr())
	}
	if role := infoOf(t, old, "INFO", "replication")["role"]; role != "slave" {
		t.Fatalf("the resumed old master has role:%s, want slave", role)
	}
	setAll(t, cc, func(int) string { return key }, 1, "after")
	getAll(t, cc, func(int) string { return key }, 1, func(int) string { return "after" })
}

// A manual failover swaps a master and its replica without losing a write.
func TestClusterManualFailover(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	const key = "{manual}"
	if err := cc.Set(ctx, key, "before", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	old := c.MasterOfKey(key)
	replica := c.ReplicaOf(old)

	c.ManualFailover(t, replica)

	if got := c.MasterOfKey(key); got != replica {
		t.Fatalf("MasterOfKey after ManualFailover = %s, want %s", got.Addr(), replica.Addr())
	}
	if got := c.ReplicaOf(replica); got != old {
		t.Fatalf("ReplicaOf(new master) = %s, want the old master %s", got.Addr(), old.Addr())
	}
	if !slices.Contains(c.Replicas(), old) || slices.Contains(c.Masters(), old) {
		t.Fatalf("the old master %s is not among Replicas() %v", old.Addr(), addrsOf(c.Replicas()))
	}
	if got := replica.Do("GET", key); got != "before" {
		t.Fatalf("GET on the new master = %#v, want before", got)
	}
	// The client follows MOVED to the new master.
	if got, err := cc.Get(ctx, key).Result(); err != nil || got != "before" {
		t.Fatalf("GET through the client = %q, %v; want before", got, err)
	}
	if err := cc.Set(ctx, key, "after", 0).Err(); err != nil {
		t.Fatalf("SET after ManualFailover: %v", err)
	}
}

// MigrateSlot moves a slot holding more keys than one MIGRATE batch; the
// keys stay readable through a client that still has the old slot map.
func TestClusterMigrateSlot(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	key := func(i int) string { return fmt.Sprintf("{migrate}:%d", i) }
	const n = 250
	setAll(t, cc, key, n, "v")
	slot := c.KeySlot(key(0))
	from := c.MasterOfSlot(slot)
	var to *redistest.Server
	for _, m := range c.Masters() {
		if m != from {
			to = m
			break
		}
	}
	if got := from.Do("CLUSTER", "COUNTKEYSINSLOT", slot); got != int64(n) {
		t.Fatalf("COUNTKEYSINSLOT %d on %s = %#v before, want %d", slot, from.Addr(), got, n)
	}

	c.MigrateSlot(t, slot, from, to)

	if got := c.MasterOfSlot(slot); got != to {
		t.Fatalf("MasterOfSlot(%d) = %s, want %s", slot, got.Addr(), to.Addr())
	}
	if got := to.Do("CLUSTER", "COUNTKEYSINSLOT", slot); got != int64(n) {
		t.Fatalf("COUNTKEYSINSLOT %d on %s = %#v after, want %d", slot, to.Addr(), got, n)
	}
	if got := from.Do("CLUSTER", "COUNTKEYSINSLOT", slot); got != int64(0) {
		t.Fatalf("COUNTKEYSINSLOT %d on %s = %#v after, want 0", slot, from.Addr(), got)
	}
	getAll(t, cc, key, n, func(int) string { return "v" })
	setAll(t, cc, key, n, "moved")
}

// CLIENT KILL TYPE pubsub on the master serving a shard channel ends a
// go-redis SSUBSCRIBE connection; go-redis sees it, subscribes again on its
// next receive and gets the next message.
func TestClusterClientKillPubsub(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	cc := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	const channel = "news"
	ps := cc.SSubscribe(ctx, channel)
	defer func() { _ = ps.Close() }()
	expectSubscribed(t, ctx, ps, channel)

	master := c.MasterOfKey(channel)
	if list := master.Do("CLIENT", "LIST", "TYPE", "pubsub").(string); !strings.Contains(list, "cmd=ssubscribe") {
		t.Fatalf("CLIENT LIST TYPE pubsub on %s shows no SSUBSCRIBE connection:\n%s", master.Addr(), list)
	}
	if n := master.Do("CLIENT", "KILL", "TYPE", "pubsub"); n != int64(1) {
		t.Fatalf("CLIENT KILL TYPE pubsub on %s = %#v, want 1", master.Addr(), n)
	}
	msg, err := ps.ReceiveTimeout(ctx, opTimeout)
	if err == nil {
		t.Fatalf("receive after CLIENT KILL = %#v, want the connection's error", msg)
	}
	t.Logf("receive after CLIENT KILL: %v", err)

	expectSubscribed(t, ctx, ps, channel)
	if err := cc.SPublish(ctx, channel, "hello").Err(); err != nil {
		t.Fatalf("SPUBLISH: %v", err)
	}
	msg, err = ps.ReceiveTimeout(ctx, opTimeout)
	if m, ok := msg.(*redis.Message); err != nil || !ok || m.Payload != "hello" {
		t.Fatalf("receive after resubscribing = %#v, %v; want the message hello", msg, err)
	}
}

// Options reach every member: the masters count, no replicas, and extra
// arguments.
func TestClusterOptions(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.ClusterOptions{
		Masters:           4,
		ReplicasPerMaster: -1,
		NodeTimeout:       3 * time.Second,
		Args:              []string{"--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"},
	})
	if len(c.Members()) != 4 || len(c.Masters()) != 4 || len(c.Replicas()) != 0 {
		t.Fatalf("%d members, %d masters, %d replicas; want 4, 4, 0", len(c.Members()), len(c.Masters()), len(c.Replicas()))
	}
	for _, s := range c.Members() {
		for param, want := range map[string]string{
			"maxmemory":            "10485760",
			"maxmemory-policy":     "allkeys-lru",
			"cluster-node-timeout": "3000",
		} {
			if got := s.Do("CONFIG", "GET", param).(map[any]any)[param]; got != want {
				t.Errorf("%s: %s = %#v, want %s", s.Addr(), param, got, want)
			}
		}
	}
}

// expectSubscribed receives the confirmation of a subscription to channel.
func expectSubscribed(t *testing.T, ctx context.Context, ps *redis.PubSub, channel string) {
	t.Helper()
	msg, err := ps.ReceiveTimeout(ctx, opTimeout)
	if s, ok := msg.(*redis.Subscription); err != nil || !ok || s.Channel != channel {
		t.Fatalf("receive = %#v, %v; want the subscription to %s", msg, err, channel)
	}
}

// setAll sets key(i) to value for i below n.
func setAll(t *testing.T, c redis.Cmdable, key func(int) string, n int, value string) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := c.Set(ctx, key(i), value, 0).Err()
		cancel()
		if err != nil {
			t.Fatalf("SET %s: %v", key(i), err)
		}
	}
}

// getAll checks that key(i) holds want(i) for i below n.
func getAll(t *testing.T, c redis.Cmdable, key func(int) string, n int, want func(int) string) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		got, err := c.Get(ctx, key(i)).Result()
		cancel()
		if err != nil || got != want(i) {
			t.Fatalf("GET %s = %q, %v; want %q", key(i), got, err, want(i))
		}
	}
}

// awaitCaughtUp polls until replica has applied everything master has sent.
func awaitCaughtUp(t *testing.T, master, replica *redistest.Server) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s caught up with %s", replica.Addr(), master.Addr()), func() error {
		mo := infoOf(t, master, "INFO", "replication")["master_repl_offset"]
		ro := infoOf(t, replica, "INFO", "replication")["slave_repl_offset"]
		m, err1 := strconv.ParseInt(mo, 10, 64)
		r, err2 := strconv.ParseInt(ro, 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if r < m {
			return fmt.Errorf("replica at offset %d, master at %d", r, m)
		}
		return nil
	})
}

// eventually polls check until it returns nil, failing the test with its
// last error after a generous deadline.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	const timeout = 30 * time.Second
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// infoOf runs an INFO-like command on s and parses its "key:value" lines.
func infoOf(t *testing.T, s *redistest.Server, args ...any) map[string]string {
	t.Helper()
	raw, ok := s.Do(args...).(string)
	if !ok {
		t.Fatalf("%v on %s did not answer a string", args, s.Addr())
	}
	m := make(map[string]string)
	for line := range strings.SplitSeq(raw, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// addrsOf lists the servers' addresses, for messages.
func addrsOf(servers []*redistest.Server) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = s.Addr()
	}
	return out
}

// LaunchCluster starts a cluster outside any test; RestartAll restarts
// every member without persistence, so every key is gone and every role
// is as before; Stop kills every member.
func TestLaunchClusterRestartAll(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := redistest.LaunchCluster(ctx, redistest.ClusterOptions{})
	if err != nil {
		t.Fatalf("LaunchCluster: %v", err)
	}
	defer c.Stop()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRedirects: 8})
	defer func() { _ = cc.Close() }()
	key := func(i int) string { return fmt.Sprint("launched:", i) }
	const n = 30
	setAll(t, cc, key, n, "v")
	before, err := c.Masters()
	if err != nil || len(before) != 3 {
		t.Fatalf("Masters() = %v, %v; want 3", addrsOf(before), err)
	}
	if err := c.RestartAll(ctx); err != nil {
		t.Fatalf("RestartAll: %v", err)
	}
	after, err := c.Masters()
	if err != nil || !slices.Equal(addrsOf(before), addrsOf(after)) {
		t.Fatalf("Masters() after RestartAll = %v, %v; want %v", addrsOf(after), err, addrsOf(before))
	}
	eventually(t, "every key gone after RestartAll", func() error {
		for i := range n {
			if err := cc.Get(ctx, key(i)).Err(); !errors.Is(err, redis.Nil) {
				return fmt.Errorf("GET %s: %v", key(i), err)
			}
		}
		return nil
	})
	c.Stop()
	for _, s := range c.Members() {
		if conn, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
			_ = conn.Close()
			t.Fatalf("%s still listens after Stop", s.Addr())
		}
	}
}
