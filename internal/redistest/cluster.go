package redistest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// cliInstallHint is included in the failure message when redis-cli is
	// missing.
	cliInstallHint = "apt-get install -y redis-tools"

	// defaultNodeTimeout is a member's --cluster-node-timeout unless
	// ClusterOptions says otherwise. It is short so that a failover after
	// KillMaster takes seconds, and long enough that a loaded machine does
	// not make a healthy master look dead.
	defaultNodeTimeout = 1500 * time.Millisecond

	// migrateBatch is how many keys MigrateSlot moves with one MIGRATE.
	migrateBatch = 100
	// migrateTimeout is the MIGRATE timeout of one batch.
	migrateTimeout = 5 * time.Second

	// clusterReloadInterval is how stale the slot map of a client made by
	// [Cluster.Client] may get. go-redis reloads it at once on MOVED and
	// ASK, but not when the master it knows for a slot has died: left at
	// its default (60s), such a client fails every command on that slot
	// for up to a minute after the failover.
	clusterReloadInterval = time.Second
)

// ClusterOptions configures [StartCluster]. The zero value starts three
// masters with one replica each.
type ClusterOptions struct {
	// Masters is the number of masters. Zero means 3; Redis Cluster, and
	// redis-cli --cluster create, need at least 3.
	Masters int
	// ReplicasPerMaster is the number of replicas of each master. Zero
	// means 1; a negative value means none.
	ReplicasPerMaster int
	// NodeTimeout is every member's --cluster-node-timeout: how long a
	// member may not answer before the others start to fail it over. It is
	// sent in whole milliseconds. Zero means 1.5s.
	NodeTimeout time.Duration
	// Args are appended to every member's command line (for example
	// "--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru"); they win
	// over the arguments StartCluster passes.
	Args []string
}

// Cluster is a private Redis Cluster owned by one test: every member is a
// redis-server [Server] of its own, on free 127.0.0.1 ports, with
// persistence off and its files in a temporary directory.
//
// Roles are not cached: [Cluster.Masters], [Cluster.Replicas],
// [Cluster.MasterOfSlot] and [Cluster.ReplicaOf] ask the cluster (CLUSTER
// NODES on the first member that answers) each time, because failovers
// change them; while a member is paused, a look that asks it first waits a
// second for it before asking the next. The methods report failures on the testing.TB given to
// [StartCluster], or on the one they take; all are safe for concurrent use.
type Cluster struct {
	t testing.TB
	*cluster
}

// cluster is what [Cluster] and [LaunchedCluster] share: the members, and
// every look at and change of the cluster, each returning its failure
// instead of failing a test.
type cluster struct {
	members []*member // in start order; fixed once the cluster is up
	byID    map[string]*member
	byAddr  map[string]*member

	mu     sync.Mutex
	downed map[*member]downRecord // masters taken down by KillMaster or PauseMaster, for AwaitFailover
}

// member is one redis-server of a cluster or a sentinel deployment.
type member struct {
	srv   *Server
	id    string        // its cluster node ID, kept across restarts in nodes.conf; "" outside a cluster
	admin *redis.Client // for the package's own commands
}

// downRecord is what KillMaster or PauseMaster saw of a master just before
// taking it down.
type downRecord struct {
	slots    [][2]int
	replicas []string // node IDs
}

// StartCluster starts a Redis Cluster of opts.Masters masters with
// opts.ReplicasPerMaster replicas each and returns once it is usable: every
// member answers cluster_state:ok, sees all 16384 slots served, knows every
// other member and shares their view of who serves what, and every replica
// reports master_link_status:up. Each member runs
//
//	redis-server --cluster-enabled yes --cluster-config-file DIR/nodes.conf
//	    --cluster-node-timeout MS --cluster-port BUSPORT ...
//
// in its own temporary directory, with the arguments [Start] passes and
// opts.Args; "redis-cli --cluster create ... --cluster-replicas N
// --cluster-yes" joins them. t.Cleanup kills every member.
//
// If redis-server or redis-cli is missing, or the cluster does not come up
// within a minute, StartCluster fails the test; the message names the
// install command ("apt-get install -y redis-tools" for redis-cli) or shows
// each member's CLUSTER NODES and log tail. It never calls t.Skip.
func StartCluster(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redistest: redis-server not found on PATH (%v); these tests need a private Redis, install it with: %s", err, installHint)
	}
	c := newCluster()
	t.Cleanup(c.closeAdmins)
	err := c.join(context.Background(), opts, func(k kind) (*Server, error) {
		return start(t, k), nil // t.Cleanup kills it
	})
	if err != nil {
		t.Fatal(err)
	}
	return &Cluster{t: t, cluster: c}
}

func newCluster() *cluster {
	return &cluster{
		byID:   make(map[string]*member),
		byAddr: make(map[string]*member),
		downed: make(map[*member]downRecord),
	}
}

// join starts the members opts asks for with launch, joins them with
// redis-cli --cluster create, and waits until the cluster has settled.
// The members it started are in c.members, also when it fails.
func (c *cluster) join(ctx context.Context, opts ClusterOptions, launch func(kind) (*Server, error)) error {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return fmt.Errorf("redistest: redis-cli not found on PATH (%v); a cluster is joined with redis-cli --cluster create, install it with: %s", err, cliInstallHint)
	}
	masters, replicas := opts.Masters, opts.ReplicasPerMaster
	switch {
	case masters == 0:
		masters = 3
	case masters < 3:
		return fmt.Errorf("redistest: a cluster of %d masters: Redis Cluster needs at least 3", masters)
	}
	switch {
	case replicas == 0:
		replicas = 1
	case replicas < 0:
		replicas = 0
	}
	timeout := opts.NodeTimeout
	switch {
	case timeout == 0:
		timeout = defaultNodeTimeout
	case timeout < time.Millisecond:
		return fmt.Errorf("redistest: a cluster with NodeTimeout %v: it must be at least 1ms", timeout)
	}

	k := kind{
		bus:  true,
		args: opts.Args,
		setup: func(dir string) (string, []string, error) {
			return "", []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", strconv.FormatInt(timeout.Milliseconds(), 10),
				// A replica's first sync starts at once, not after the
				// default 5s wait for more replicas.
				"--repl-diskless-sync-delay", "0",
			}, nil
		},
	}
	for range masters * (1 + replicas) {
		s, err := launch(k)
		if err != nil {
			return err
		}
		m := &member{srv: s, admin: newAdmin(s.Addr())}
		c.members = append(c.members, m)
		id, err := queryString(m.admin, "CLUSTER", "MYID")
		if err != nil {
			return fmt.Errorf("redistest: CLUSTER MYID on %s: %v\n%s", s.Addr(), err, c.report())
		}
		m.id = id
		c.byID[id] = m
		c.byAddr[s.Addr()] = m
	}

	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	cctx, cancel := context.WithTimeout(ctx, awaitTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, cli, args...)
	cmd.SysProcAttr = sysProcAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("redistest: %s %s: %v\n--- its output ---\n%s\n%s", cli, strings.Join(args, " "), err, out, c.report())
	}
	return waitFor(ctx, "a settled cluster after redis-cli --cluster create", func() error {
		_, err := c.settled(nil)
		return err
	}, c.report)
}

// Members returns every member of the cluster, running or not, in the order
// they were started. The slice is the caller's.
func (c *cluster) Members() []*Server {
	out := make([]*Server, len(c.members))
	for i, m := range c.members {
		out[i] = m.srv
	}
	return out
}

// Addrs returns the address of every member, running or not, in the order of
// Members.
func (c *cluster) Addrs() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.srv.Addr()
	}
	return out
}

// must fails c.t with err, if any.
func (c *Cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// Masters returns the members the cluster currently sees as masters, failed
// ones left out, ordered by the lowest slot they serve. A master killed a
// moment ago is still among them until the cluster marks it as failed.
func (c *Cluster) Masters() []*Server {
	c.t.Helper()
	out, err := c.masters()
	c.must(err)
	return out
}

func (c *cluster) masters() ([]*Server, error) {
	v, err := c.view()
	if err != nil {
		return nil, err
	}
	var ns []viewNode
	for _, n := range v.nodes {
		if n.isMaster && !n.isFailed && c.byID[n.id] != nil {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b viewNode) int {
		if d := a.firstSlot() - b.firstSlot(); d != 0 {
			return d
		}
		return strings.Compare(a.addr, b.addr)
	})
	out := make([]*Server, len(ns))
	for i, n := range ns {
		out[i] = c.byID[n.id].srv
	}
	return out, nil
}

// Replicas returns the members the cluster currently sees as replicas,
// failed ones left out, in the order of [Cluster.Members].
func (c *Cluster) Replicas() []*Server {
	c.t.Helper()
	v, err := c.view()
	c.must(err)
	var out []*Server
	for _, m := range c.members {
		if n := v.node(m.id); n != nil && !n.isMaster && !n.isFailed {
			out = append(out, m.srv)
		}
	}
	return out
}

// MasterOfSlot returns the member that currently serves slot (0 to 16383)
// as master.
func (c *Cluster) MasterOfSlot(slot int) *Server {
	c.t.Helper()
	s, err := c.masterOfSlot(slot)
	c.must(err)
	return s
}

func (c *cluster) masterOfSlot(slot int) (*Server, error) {
	if slot < 0 || slot >= numSlots {
		return nil, fmt.Errorf("redistest: MasterOfSlot(%d): slots run from 0 to %d", slot, numSlots-1)
	}
	v, err := c.view()
	if err != nil {
		return nil, err
	}
	m := c.byID[v.owner(slot)]
	if m == nil {
		return nil, fmt.Errorf("redistest: no member serves slot %d\n%s", slot, v.raw)
	}
	return m.srv, nil
}

// KeySlot returns the hash slot of key, as CLUSTER KEYSLOT computes it
// (hash tags included).
func (c *Cluster) KeySlot(key string) int {
	c.t.Helper()
	var lastErr error
	for _, m := range c.members {
		if !m.srv.running() {
			continue
		}
		v, err := query(m.admin, "CLUSTER", "KEYSLOT", key)
		if err != nil {
			lastErr = err
			continue
		}
		slot, ok := v.(int64)
		if !ok {
			c.t.Fatalf("redistest: CLUSTER KEYSLOT %q answered %T", key, v)
		}
		return int(slot)
	}
	c.t.Fatalf("redistest: CLUSTER KEYSLOT %q: no member answered (last error: %v)", key, lastErr)
	return 0
}

// MasterOfKey returns the member that currently serves key's slot as master.
func (c *Cluster) MasterOfKey(key string) *Server {
	c.t.Helper()
	return c.MasterOfSlot(c.KeySlot(key))
}

// ReplicaOf returns a replica of master, as the cluster currently sees it:
// the first in the order of [Cluster.Members] that is not marked as failed.
// It fails the test if master has no such replica.
func (c *Cluster) ReplicaOf(master *Server) *Server {
	c.t.Helper()
	m, err := c.member(master)
	c.must(err)
	v, err := c.view()
	c.must(err)
	ids := v.replicasOf(m.id)
	for _, r := range c.members {
		if slices.Contains(ids, r.id) {
			return r.srv
		}
	}
	c.t.Fatalf("redistest: %s has no replica\n%s", master.Addr(), v.raw)
	return nil
}

// KeysPerMaster returns DBSIZE of every current master (see
// [Cluster.Masters]), by its address.
func (c *Cluster) KeysPerMaster() map[string]int64 {
	c.t.Helper()
	out := make(map[string]int64)
	for _, s := range c.Masters() {
		v, err := query(c.byAddr[s.Addr()].admin, "DBSIZE")
		if err != nil {
			c.t.Fatalf("redistest: DBSIZE on %s: %v", s.Addr(), err)
		}
		n, ok := v.(int64)
		if !ok {
			c.t.Fatalf("redistest: DBSIZE on %s answered %T", s.Addr(), v)
		}
		out[s.Addr()] = n
	}
	return out
}

// Client returns a go-redis cluster client seeded with every member's
// address, closed automatically by t.Cleanup. It has 2s dial, read and
// write timeouts, honours context deadlines, and reloads its slot map at
// least once a second while in use: go-redis reloads at once on MOVED and
// ASK, but after a failover a client left at the default (60s) would keep
// sending the dead master's slots to the dead master for up to a minute.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                      c.Addrs(),
		DialTimeout:                clientTimeout,
		ReadTimeout:                clientTimeout,
		WriteTimeout:               clientTimeout,
		ContextTimeoutEnabled:      true,
		ClusterStateReloadInterval: clusterReloadInterval,
	})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// KillMaster SIGKILLs master (see [Server.Kill]), which must currently be a
// master serving slots and having a replica. Call [Cluster.AwaitFailover]
// next to wait until a replica has taken its slots over, and
// [Cluster.RestartMember] to bring it back as a replica.
func (c *Cluster) KillMaster(t testing.TB, master *Server) {
	t.Helper()
	if err := c.downMaster("KillMaster", master, master.Kill); err != nil {
		t.Fatal(err)
	}
}

// PauseMaster stops master with SIGSTOP (see [Server.Pause]), which must
// currently be a master serving slots and having a replica; once the other
// members stop hearing from it they fail it over as they would a dead one.
// Call [Cluster.AwaitFailover] next, then [Server.Resume] and
// [Cluster.AwaitSettled]: the old master finds its slots taken over and
// rejoins as a replica of the promoted one.
func (c *Cluster) PauseMaster(t testing.TB, master *Server) {
	t.Helper()
	if err := c.downMaster("PauseMaster", master, master.Pause); err != nil {
		t.Fatal(err)
	}
}

// downMaster records what AwaitFailover needs to know of master, then takes
// it down with down.
func (c *cluster) downMaster(op string, master *Server, down func()) error {
	m, err := c.member(master)
	if err != nil {
		return err
	}
	v, err := c.view()
	if err != nil {
		return err
	}
	n := v.node(m.id)
	switch {
	case n == nil || !n.isMaster || n.isFailed || len(n.slots) == 0:
		return fmt.Errorf("redistest: %s(%s): it is not a master serving slots\n%s", op, master.Addr(), v.raw)
	case len(v.replicasOf(m.id)) == 0:
		return fmt.Errorf("redistest: %s(%s): it has no replica to fail over to\n%s", op, master.Addr(), v.raw)
	}
	c.mu.Lock()
	c.downed[m] = downRecord{slots: n.slots, replicas: v.replicasOf(m.id)}
	c.mu.Unlock()
	down()
	return nil
}

// AwaitFailover waits until one of the replicas old had when
// [Cluster.KillMaster] or [Cluster.PauseMaster] took it down serves all of
// its slots as master, and the other members have settled: each answers cluster_state:ok and sees all
// slots served, they share one view of the cluster, and every replica's
// link is up. It returns the promoted replica.
//
// Detecting the failure takes about NodeTimeout and the election about
// another second. If the failover does not happen within a minute,
// AwaitFailover fails the test with each member's CLUSTER NODES and log
// tail.
func (c *Cluster) AwaitFailover(t testing.TB, old *Server) *Server {
	t.Helper()
	s, err := c.awaitFailover(context.Background(), old)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c *cluster) awaitFailover(ctx context.Context, old *Server) (*Server, error) {
	m, err := c.member(old)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	rec, ok := c.downed[m]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("redistest: AwaitFailover(%s): it was not taken down by KillMaster or PauseMaster", old.Addr())
	}
	var promoted *member
	err = waitFor(ctx, fmt.Sprintf("failover of master %s", old.Addr()), func() error {
		v, err := c.settled(m)
		if err != nil {
			return err
		}
		owner, err := ownerOfAll(v, rec.slots)
		if err != nil {
			return err
		}
		if !slices.Contains(rec.replicas, owner) {
			return fmt.Errorf("its slots are served by %s, which was not its replica", c.addrOf(owner))
		}
		promoted = c.byID[owner]
		return nil
	}, c.report)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	delete(c.downed, m)
	c.mu.Unlock()
	return promoted.srv, nil
}

// ManualFailover runs CLUSTER FAILOVER on replica, which swaps roles with
// its master in coordination with it (both must be running, and no write
// is lost), and waits until replica serves the master's slots, the old
// master has become its replica with its link up, and the cluster has
// settled as for [Cluster.AwaitFailover].
func (c *Cluster) ManualFailover(t testing.TB, replica *Server) {
	t.Helper()
	m, err := c.member(replica)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.view()
	if err != nil {
		t.Fatal(err)
	}
	n := v.node(m.id)
	if n == nil || n.isMaster {
		t.Fatalf("redistest: ManualFailover(%s): it is not a replica\n%s", replica.Addr(), v.raw)
	}
	old := v.node(n.master)
	if old == nil || len(old.slots) == 0 {
		t.Fatalf("redistest: ManualFailover(%s): its master %s serves no slots\n%s", replica.Addr(), n.master, v.raw)
	}
	if _, err := query(m.admin, "CLUSTER", "FAILOVER"); err != nil {
		t.Fatalf("redistest: CLUSTER FAILOVER on %s: %v", replica.Addr(), err)
	}
	await(t, fmt.Sprintf("manual failover from %s to %s", old.addr, replica.Addr()), func() error {
		v, err := c.settled(nil)
		if err != nil {
			return err
		}
		owner, err := ownerOfAll(v, old.slots)
		if err != nil {
			return err
		}
		if owner != m.id {
			return fmt.Errorf("the slots are still served by %s", c.addrOf(owner))
		}
		if o := v.node(old.id); o == nil || o.isMaster || o.master != m.id {
			return fmt.Errorf("%s is not yet a replica of %s", old.addr, replica.Addr())
		}
		return nil
	}, c.report)
}

// MigrateSlot moves slot, with its keys, from master from to master to, the
// way redis-cli --cluster reshard does:
//
//  1. CLUSTER SETSLOT slot IMPORTING <from's ID> on to;
//  2. CLUSTER SETSLOT slot MIGRATING <to's ID> on from; from now on, a
//     client asking from for a key already moved is sent to to with ASK;
//  3. CLUSTER GETKEYSINSLOT slot 100 on from and one MIGRATE ... KEYS of
//     those keys to to, repeated until from has no key left in the slot;
//  4. CLUSTER SETSLOT slot NODE <to's ID> on to, then from, then every
//     other master, which ends the migration and spreads the new owner.
//
// It then waits until every running member agrees that to serves the slot
// and the cluster has settled as for [Cluster.AwaitFailover]. Clients follow
// with MOVED. Keys written to the slot while MigrateSlot runs may make a
// MIGRATE fail (BUSYKEY); MigrateSlot then fails the test.
func (c *Cluster) MigrateSlot(t testing.TB, slot int, from, to *Server) {
	t.Helper()
	if err := c.migrateSlot(context.Background(), slot, from, to); err != nil {
		t.Fatal(err)
	}
}

// MigrateSlotAway moves slot, with its keys, from the master that serves
// it to another master, as MigrateSlot does, and returns both.
func (c *Cluster) MigrateSlotAway(t testing.TB, slot int) (from, to *Server) {
	t.Helper()
	from = c.MasterOfSlot(slot)
	for _, m := range c.Masters() {
		if m.Addr() != from.Addr() {
			c.MigrateSlot(t, slot, from, m)
			return from, m
		}
	}
	t.Fatalf("redistest: MigrateSlotAway(%d): no master but %s", slot, from.Addr())
	return nil, nil
}

func (c *cluster) migrateSlot(ctx context.Context, slot int, from, to *Server) error {
	if slot < 0 || slot >= numSlots {
		return fmt.Errorf("redistest: MigrateSlot(%d): slots run from 0 to %d", slot, numSlots-1)
	}
	src, err := c.member(from)
	if err != nil {
		return err
	}
	dst, err := c.member(to)
	if err != nil {
		return err
	}
	v, err := c.view()
	if err != nil {
		return err
	}
	if owner := v.owner(slot); owner != src.id {
		return fmt.Errorf("redistest: MigrateSlot(%d): it is served by %s, not by %s\n%s", slot, c.addrOf(owner), from.Addr(), v.raw)
	}
	if n := v.node(dst.id); n == nil || !n.isMaster || n.isFailed || dst == src {
		return fmt.Errorf("redistest: MigrateSlot(%d): %s is not another master\n%s", slot, to.Addr(), v.raw)
	}
	run := func(m *member, args ...any) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, migrateTimeout+clientTimeout)
		defer cancel()
		r, err := m.admin.Do(ctx, args...).Result()
		if err != nil {
			return nil, fmt.Errorf("redistest: MigrateSlot(%d): %v on %s: %v\n%s", slot, args, m.srv.Addr(), err, c.report())
		}
		return r, nil
	}
	if _, err := run(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src.id); err != nil {
		return err
	}
	if _, err := run(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.id); err != nil {
		return err
	}
	for {
		r, err := run(src, "CLUSTER", "GETKEYSINSLOT", slot, migrateBatch)
		if err != nil {
			return err
		}
		keys, ok := r.([]any)
		if !ok {
			return fmt.Errorf("redistest: MigrateSlot(%d): CLUSTER GETKEYSINSLOT did not answer a list", slot)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.Port(), "", 0, migrateTimeout.Milliseconds(), "KEYS"}
		if _, err := run(src, append(args, keys...)...); err != nil {
			return err
		}
	}
	if _, err := run(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst.id); err != nil {
		return err
	}
	if _, err := run(src, "CLUSTER", "SETSLOT", slot, "NODE", dst.id); err != nil {
		return err
	}
	for _, n := range v.nodes {
		if m := c.byID[n.id]; m != nil && m != src && m != dst && n.isMaster && !n.isFailed && m.srv.running() {
			if _, err := run(m, "CLUSTER", "SETSLOT", slot, "NODE", dst.id); err != nil {
				return err
			}
		}
	}
	return waitFor(ctx, fmt.Sprintf("slot %d served by %s on every member", slot, to.Addr()), func() error {
		v, err := c.settled(nil)
		if err != nil {
			return err
		}
		if owner := v.owner(slot); owner != dst.id {
			return fmt.Errorf("slot %d is served by %s", slot, c.addrOf(owner))
		}
		return nil
	}, c.report)
}

// RestartMember restarts a member (see [Server.Restart]; it comes back empty,
// with its node ID and its view of the cluster from nodes.conf) and waits
// until the cluster has settled with it, as for [Cluster.AwaitFailover]: in
// particular, until no member marks it as failed and, if it is a replica,
// its link is up. A master killed by [Cluster.KillMaster] whose slots were
// taken over rejoins as a replica of the promoted one.
func (c *Cluster) RestartMember(t testing.TB, s *Server) {
	t.Helper()
	if err := c.restartMember(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) restartMember(ctx context.Context, s *Server) error {
	m, err := c.member(s)
	if err != nil {
		return err
	}
	if err := s.Relaunch(); err != nil {
		return err
	}
	return waitFor(ctx, fmt.Sprintf("%s back in the cluster", s.Addr()), func() error {
		v, err := c.settled(nil)
		if err != nil {
			return err
		}
		if n := v.node(m.id); n == nil || n.isFailed {
			return fmt.Errorf("%s is still marked as failed", s.Addr())
		}
		return nil
	}, c.report)
}

// AwaitSettled waits until the cluster has settled, as for
// [Cluster.AwaitFailover], among the members whose processes are running;
// a paused member must be resumed first. It is for tests that change the
// cluster through [Server] methods or commands of their own.
func (c *Cluster) AwaitSettled(t testing.TB) {
	t.Helper()
	if err := c.awaitSettled(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) awaitSettled(ctx context.Context) error {
	return waitFor(ctx, "a settled cluster", func() error {
		_, err := c.settled(nil)
		return err
	}, c.report)
}

// settled returns the view of the cluster shared by every running member
// but skip, if each answers cluster_state:ok, sees all slots served, knows
// every member, shares that view with the others and, if it is a replica,
// has its link to its master up. Otherwise it says what is missing.
func (c *cluster) settled(skip *member) (*clusterView, error) {
	var agreed *clusterView
	var agreedBy *member
	for _, m := range c.members {
		if m == skip || !m.srv.running() {
			continue
		}
		addr := m.srv.Addr()
		raw, err := queryString(m.admin, "CLUSTER", "INFO")
		if err != nil {
			return nil, fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
		}
		info := infoFields(raw)
		switch {
		case info["cluster_state"] != "ok":
			return nil, fmt.Errorf("%s has cluster_state:%s", addr, info["cluster_state"])
		case info["cluster_slots_ok"] != strconv.Itoa(numSlots):
			return nil, fmt.Errorf("%s sees %s of %d slots served", addr, info["cluster_slots_ok"], numSlots)
		case info["cluster_known_nodes"] != strconv.Itoa(len(c.members)):
			return nil, fmt.Errorf("%s knows %s of %d members", addr, info["cluster_known_nodes"], len(c.members))
		}
		raw, err = queryString(m.admin, "CLUSTER", "NODES")
		if err != nil {
			return nil, fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		v, err := parseClusterNodes(raw)
		if err != nil {
			return nil, fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		if agreed == nil {
			agreed, agreedBy = v, m
		} else if v.key() != agreed.key() {
			return nil, fmt.Errorf("%s and %s see the cluster differently", agreedBy.srv.Addr(), addr)
		}
		if self := v.node(m.id); self == nil || self.isMaster {
			continue
		}
		raw, err = queryString(m.admin, "INFO", "replication")
		if err != nil {
			return nil, fmt.Errorf("INFO replication on %s: %w", addr, err)
		}
		if link := infoFields(raw)["master_link_status"]; link != "up" {
			return nil, fmt.Errorf("replica %s has master_link_status:%s", addr, link)
		}
	}
	if agreed == nil {
		return nil, errors.New("no member is running")
	}
	return agreed, nil
}

// ownerOfAll returns the one master serving every slot in ranges.
func ownerOfAll(v *clusterView, ranges [][2]int) (string, error) {
	owner := v.owner(ranges[0][0])
	for _, r := range ranges {
		for slot := r[0]; slot <= r[1]; slot++ {
			if o := v.owner(slot); o != owner {
				return "", fmt.Errorf("slots %d and %d are served by different masters", ranges[0][0], slot)
			}
		}
	}
	return owner, nil
}

// view returns the view of the cluster of the first running member that
// answers CLUSTER NODES.
func (c *cluster) view() (*clusterView, error) {
	var lastErr error = errors.New("no member is running")
	for _, m := range c.members {
		if !m.srv.running() {
			continue
		}
		raw, err := queryString(m.admin, "CLUSTER", "NODES")
		if err != nil {
			lastErr = fmt.Errorf("CLUSTER NODES on %s: %w", m.srv.Addr(), err)
			continue
		}
		v, err := parseClusterNodes(raw)
		if err != nil {
			return nil, fmt.Errorf("redistest: CLUSTER NODES on %s: %v", m.srv.Addr(), err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("redistest: no member of the cluster answers: %v\n%s", lastErr, c.report())
}

// member returns the member s is, or an error if s is not one.
func (c *cluster) member(s *Server) (*member, error) {
	if s == nil {
		return nil, errors.New("redistest: a nil *Server is not a member of the cluster")
	}
	m := c.byAddr[s.Addr()]
	if m == nil || m.srv != s {
		return nil, fmt.Errorf("redistest: %s is not a member of this cluster", s.Addr())
	}
	return m, nil
}

// addrOf names node id for messages.
func (c *cluster) addrOf(id string) string {
	if m := c.byID[id]; m != nil {
		return m.srv.Addr()
	}
	if id == "" {
		return "no master"
	}
	return "node " + id
}

// report pictures every member for a failure message: whether it runs, its
// CLUSTER NODES, and its log's last lines.
func (c *cluster) report() string {
	var b strings.Builder
	for _, m := range c.members {
		fmt.Fprintf(&b, "--- member %s (node %s, %s) ---\n", m.srv.Addr(), m.id, runningWord(m.srv))
		if m.srv.running() {
			if raw, err := queryString(m.admin, "CLUSTER", "NODES"); err != nil {
				fmt.Fprintf(&b, "CLUSTER NODES: %v\n", err)
			} else {
				fmt.Fprintf(&b, "%s\n", strings.TrimSpace(raw))
			}
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s", m.srv.logPath, m.srv.logTail(reportTailLines))
	}
	return b.String()
}

// closeAdmins closes the package's own clients; registered with t.Cleanup.
func (c *cluster) closeAdmins() {
	for _, m := range c.members {
		_ = m.admin.Close()
	}
}
