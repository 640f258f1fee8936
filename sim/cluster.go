package sim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/l2"
)

// A run on a Redis Cluster (a ClusterBackend): every node has a cluster
// client of its own, seeded with the backend's addresses and, if a fault
// targets it, reaching every member through a fault proxy of its own. The
// run takes the shards as it finds them when it begins (the slots each
// master serves, ordered by the lowest), knows the slot of every key's
// Redis name, and records what the Failover and Reshard faults change: the
// master a replica replaced, the slots that moved and when. The checker
// then counts every read and write for the shard that served its key when
// it began.

// namespace is the Cache's namespace, in every key's Redis name.
const namespace = "sim"

// clusterReload is how often a node's cluster client reloads its slot map
// unasked (ClusterOptions.ClusterStateReloadInterval). go-redis reloads it
// at once on MOVED and ASK, but not when the master it knows for a slot
// has died: at its default (60s) a node would send a failed-over shard's
// commands to the dead master for a minute.
const clusterReload = time.Second

// target is how a node, or the run's admin, reaches Redis: one server at
// Addr, or a cluster through the seed addresses Cluster; Via maps the
// address of each server the client may dial to the fault proxy in front
// of it, if the client has proxies.
type target struct {
	Addr    string
	Cluster []string
	Via     map[string]string
}

// client is a node's or the admin's go-redis client: bounded timeouts,
// context deadlines honoured (tier.NodeConfig.RedisTimeout relies on it).
// name, if set, names its connections (CLIENT SETNAME).
func (t target) client(cfg Config, name string) redis.UniversalClient {
	if len(t.Cluster) == 0 {
		addr := t.Addr
		if p, ok := t.Via[addr]; ok {
			addr = p
		}
		return redis.NewClient(&redis.Options{
			Addr:                  addr,
			DialTimeout:           time.Second,
			ReadTimeout:           time.Second,
			WriteTimeout:          time.Second,
			ContextTimeoutEnabled: true,
			PoolSize:              cfg.Goroutines + 4,
			ClientName:            name,
		})
	}
	o := &redis.ClusterOptions{
		Addrs:                      t.Cluster,
		DialTimeout:                time.Second,
		ReadTimeout:                time.Second,
		WriteTimeout:               time.Second,
		ContextTimeoutEnabled:      true,
		ClusterStateReloadInterval: clusterReload,
		PoolSize:                   cfg.Goroutines + 4,
		ClientName:                 name,
	}
	if len(t.Via) > 0 {
		via := t.Via
		d := &net.Dialer{Timeout: time.Second, KeepAlive: 5 * time.Minute}
		o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p, ok := via[addr]; ok {
				addr = p
			}
			return d.DialContext(ctx, network, addr)
		}
	}
	return redis.NewClusterClient(o)
}

// onEveryServer runs fn on the one server, or on every master and replica
// of a cluster, at once.
func onEveryServer(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachShard(ctx, fn)
	}
	return fn(ctx, rdb.(*redis.Client))
}

// onEveryMaster runs fn on the one server, or on every master of a
// cluster, at once.
func onEveryMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, fn)
	}
	return fn(ctx, rdb.(*redis.Client))
}

// killSubscriptions ends every subscriber's connection (CLIENT KILL TYPE
// pubsub) on every server.
func killSubscriptions(ctx context.Context, rdb redis.UniversalClient) error {
	return onEveryServer(ctx, rdb, func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	})
}

// clusterRun is what a run on a Redis Cluster knows of it.
type clusterRun struct {
	r       *run
	backend ClusterBackend
	admin   *redis.ClusterClient
	members []string   // every member's address, replicas too: the servers a node may dial
	shards  [][][2]int // each shard's slot ranges at the start, the shards by their lowest slot
	owner   []int16    // each slot's shard at the start
	keySlot []int      // the slot of each key's Redis name
	busSlot int        // the slot of the bus's channel

	mu      sync.Mutex
	masters [][]string // per shard: its master at the start, then each replica promoted in its place
	moves   []SlotMove // in order

	faultMu sync.Mutex
	faults  map[FaultKind]*clusterFault
}

// clusterFault is a running Failover or Reshard fault.
type clusterFault struct {
	end    chan struct{} // closed to end its cycles
	done   chan struct{} // closed when it is done
	detail string        // what it did, once done
}

// newClusterRun looks at the cluster behind admin as the run begins.
func newClusterRun(ctx context.Context, r *run, b ClusterBackend, admin *redis.ClusterClient) (*clusterRun, error) {
	c := &clusterRun{r: r, backend: b, admin: admin, owner: make([]int16, l2.Slots), faults: map[FaultKind]*clusterFault{}}
	ctx, cancel := context.WithTimeout(ctx, procWait)
	defer cancel()
	slots, err := admin.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("sim: CLUSTER SLOTS: %w", err)
	}
	byMaster := map[string][][2]int{}
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		byMaster[s.Nodes[0].Addr] = append(byMaster[s.Nodes[0].Addr], [2]int{s.Start, s.End})
	}
	var masters []string
	for m, rs := range byMaster {
		slices.SortFunc(rs, func(a, b [2]int) int { return a[0] - b[0] })
		masters = append(masters, m)
	}
	slices.SortFunc(masters, func(a, b string) int { return byMaster[a][0][0] - byMaster[b][0][0] })
	for i := range c.owner {
		c.owner[i] = -1
	}
	for i, m := range masters {
		c.shards = append(c.shards, byMaster[m])
		c.masters = append(c.masters, []string{m})
		for _, rg := range byMaster[m] {
			for s := rg[0]; s <= rg[1]; s++ {
				c.owner[s] = int16(i)
			}
		}
	}
	if i := slices.Index(c.owner, -1); i >= 0 {
		return nil, fmt.Errorf("sim: the cluster serves no slot %d", i)
	}
	c.keySlot = make([]int, r.cfg.keySpace())
	for k := range c.keySlot {
		c.keySlot[k] = l2.Slot(l2.KeysFor(r.prefix, namespace, strconv.Itoa(k)).Value)
	}
	c.busSlot = l2.Slot(l2.BusKeysFor(r.prefix, true).Channel)
	nodes, err := admin.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("sim: CLUSTER NODES: %w", err)
	}
	for line := range strings.Lines(nodes) {
		if f := strings.Fields(line); len(f) > 1 {
			addr, _, _ := strings.Cut(f[1], "@")
			c.members = append(c.members, addr)
		}
	}
	return c, nil
}

// shardAt is the shard that served slot at time t of the run's clock: its
// shard at the start, or the one the last move of it that ended by t took
// it to.
func (c *clusterRun) shardAt(slot int, t int64) int {
	s := int(c.owner[slot])
	for _, m := range c.moves {
		if m.Slot == slot && int64(m.End) <= t {
			s = m.To
		}
	}
	return s
}

// shardNow is shardAt the present, safe while faults run.
func (c *clusterRun) shardNow(slot int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shardAt(slot, c.r.clock.now())
}

// masterOf asks the cluster which master serves slot now.
func (c *clusterRun) masterOf(ctx context.Context, slot int) (string, error) {
	slots, err := c.admin.ClusterSlots(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("CLUSTER SLOTS: %w", err)
	}
	for _, s := range slots {
		if s.Start <= slot && slot <= s.End && len(s.Nodes) > 0 {
			return s.Nodes[0].Addr, nil
		}
	}
	return "", fmt.Errorf("no master serves slot %d", slot)
}

// slotOfShard returns a slot that shard serves now: one of its first
// slots that no move took away.
func (c *clusterRun) slotOfShard(shard int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.r.clock.now()
	for _, rg := range c.shards[shard] {
		for s := rg[0]; s <= rg[1]; s++ {
			if c.shardAt(s, now) == shard {
				return s
			}
		}
	}
	for s := range l2.Slots { // every first slot moved away: one moved in
		if c.shardAt(s, now) == shard {
			return s
		}
	}
	return -1
}

// rng is the seeded generator of the choices of a fault of kind.
func (c *clusterRun) rng(kind FaultKind) *rand.Rand {
	var h uint64
	for _, b := range []byte(kind) {
		h = h*131 + uint64(b)
	}
	return rand.New(rand.NewPCG(uint64(c.r.cfg.Seed), h))
}

// start begins a Failover or Reshard window: what must hold before the
// cluster is changed is checked here, and an error means the fault could
// not be injected (nothing was changed); the rest runs in the background
// until stop.
func (c *clusterRun) start(ctx context.Context, kind FaultKind) error {
	f := &clusterFault{end: make(chan struct{}), done: make(chan struct{})}
	var run func() (string, error)
	switch kind {
	case Failover:
		addr, shard, err := c.killMaster(ctx)
		if err != nil {
			return err
		}
		at := c.r.clock.now()
		run = func() (string, error) { return c.failover(ctx, shard, addr, at) }
	case Reshard:
		if len(c.shards) < 2 {
			return errors.New("a reshard needs two masters")
		}
		run = func() (string, error) { return c.reshard(ctx, f.end) }
	}
	c.faultMu.Lock()
	c.faults[kind] = f
	c.faultMu.Unlock()
	go func() {
		defer close(f.done)
		detail, err := run()
		f.detail = detail
		if err != nil && ctx.Err() == nil {
			c.r.fail(fmt.Errorf("sim: %s: %w", kind, err))
		}
	}()
	return nil
}

// stop ends a Failover or Reshard window once its cycle is done, and says
// what it did.
func (c *clusterRun) stop(kind FaultKind) string {
	c.faultMu.Lock()
	f := c.faults[kind]
	delete(c.faults, kind)
	c.faultMu.Unlock()
	if f == nil {
		return ""
	}
	close(f.end)
	<-f.done
	return f.detail
}

// killMaster SIGKILLs the master of a shard that holds keys of the run,
// picked by the seed, and returns its address and shard.
func (c *clusterRun) killMaster(ctx context.Context) (string, int, error) {
	var held []int // shards holding keys now, and one key of each
	var keyOf []int
	for k := range c.r.cfg.Keys {
		if s := c.shardNow(c.keySlot[k]); !slices.Contains(held, s) {
			held = append(held, s)
			keyOf = append(keyOf, k)
		}
	}
	i := c.rng(Failover).IntN(len(held))
	addr, err := c.masterOf(ctx, c.keySlot[keyOf[i]])
	if err != nil {
		return "", 0, err
	}
	if err := c.backend.KillMaster(addr); err != nil { // having killed nothing if it has no replica
		return "", 0, err
	}
	return addr, held[i], nil
}

// failover waits for the promotion of a replica of the master at addr of
// shard, killed at the clock reading killed, then brings it back.
func (c *clusterRun) failover(ctx context.Context, shard int, addr string, killed int64) (string, error) {
	bus := ""
	if c.shardNow(c.busSlot) == shard {
		bus = ", the bus's"
	}
	detail := fmt.Sprintf("killed %s (shard %d%s)", addr, shard, bus)
	promoted, err := c.backend.AwaitFailover(ctx, addr)
	if err != nil {
		return detail, err
	}
	up := c.r.clock.now()
	c.mu.Lock()
	c.masters[shard] = append(c.masters[shard], promoted)
	c.mu.Unlock()
	detail += fmt.Sprintf("; %s promoted %s later", promoted, dur(time.Duration(up-killed)))
	if err := c.backend.Rejoin(ctx, addr); err != nil {
		return detail, err
	}
	return detail + fmt.Sprintf("; the old master back as its replica %s after", dur(time.Duration(c.r.clock.now()-up))), nil
}

// reshard moves slots in cycles until end is closed, at least one: each
// cycle moves the slot of the next hot key (by popularity under Zipf, else
// in the seed's order), then the bus's slot, each from the master serving
// it to the next shard's.
func (c *clusterRun) reshard(ctx context.Context, end <-chan struct{}) (string, error) {
	var order []int
	if c.r.cfg.Zipf > 0 {
		for k := range c.r.cfg.Keys {
			order = append(order, k)
		}
	} else {
		order = c.rng(Reshard).Perm(c.r.cfg.Keys)
	}
	var did []SlotMove
	for cycle := 0; ; cycle++ {
		key := order[cycle%len(order)]
		for _, k := range []int{key, -1} {
			slot := c.busSlot
			if k >= 0 {
				slot = c.keySlot[k]
			}
			m, err := c.migrate(ctx, slot, k)
			if err != nil {
				return movesText(did), err
			}
			did = append(did, m)
		}
		select {
		case <-end:
			return movesText(did), nil
		default:
		}
	}
}

// movesText describes moves for the table: each, or past four the first
// two and a summary of the rest (Result.Moves lists them all).
func movesText(moves []SlotMove) string {
	var parts []string
	for i, m := range moves {
		if i == 2 && len(moves) > 4 {
			break
		}
		parts = append(parts, m.String())
	}
	if rest := moves[len(parts):]; len(rest) > 0 {
		lo, hi := rest[0].End-rest[0].Start, time.Duration(0)
		for _, m := range rest {
			lo, hi = min(lo, m.End-m.Start), max(hi, m.End-m.Start)
		}
		parts = append(parts, fmt.Sprintf("%d more moves like them, %s to %s each", len(rest), dur(lo), dur(hi)))
	}
	return strings.Join(parts, "; ")
}

// migrate moves slot (of key, or the bus's if key is -1) from the master
// serving it to the next shard's, and records the move.
func (c *clusterRun) migrate(ctx context.Context, slot, key int) (SlotMove, error) {
	from := c.shardNow(slot)
	to := (from + 1) % len(c.shards)
	src, err := c.masterOf(ctx, slot)
	if err != nil {
		return SlotMove{}, err
	}
	dst, err := c.masterOf(ctx, c.slotOfShard(to))
	if err != nil {
		return SlotMove{}, err
	}
	m := SlotMove{Slot: slot, Key: key, From: from, To: to, Start: time.Duration(c.r.clock.now())}
	if err := c.backend.MigrateSlot(ctx, slot, src, dst); err != nil {
		return m, err
	}
	m.End = time.Duration(c.r.clock.now())
	c.mu.Lock()
	c.moves = append(c.moves, m)
	c.mu.Unlock()
	return m, nil
}

// SlotMove is one move of a slot by the Reshard fault.
type SlotMove struct {
	// Slot moved from shard From to shard To between Start and End, on
	// the run's clock; it held the Redis names of Key, or the bus's
	// channel if Key is -1.
	Slot  int           `json:"slot"`
	Key   int           `json:"key"`
	From  int           `json:"from"`
	To    int           `json:"to"`
	Start time.Duration `json:"start_ns"`
	End   time.Duration `json:"end_ns"`
}

// String describes the move for the table: "slot 866 (key 3) shard 0→1
// in 31.2ms".
func (m SlotMove) String() string {
	what := fmt.Sprintf("key %d", m.Key)
	if m.Key < 0 {
		what = "the bus"
	}
	return fmt.Sprintf("slot %d (%s) shard %d→%d in %s", m.Slot, what, m.From, m.To, dur(m.End-m.Start))
}

// Shard is one shard of a run on a Redis Cluster: the slots one master
// served when the run began, with the reads and writes of the keys it
// served.
type Shard struct {
	// Index is its place among the shards, ordered by their lowest slot.
	Index int `json:"index"`
	// Slots are its slot ranges at the start, "0-5460"; Keys counts the
	// run's keys whose Redis names hashed to them.
	Slots string `json:"slots"`
	Keys  int    `json:"keys"`
	// Masters are its master at the start, then each replica a Failover
	// promoted in its place.
	Masters []string `json:"masters"`
	// Bus reports that it served the bus's channel at the start.
	Bus bool `json:"bus"`
	// Phases count the reads and writes of the keys it served when they
	// began (a slot moved by Reshard counts for its new shard from the end
	// of the move), by the phase they began in, in the order of
	// Result.Phases; Total sums them.
	Phases []ShardPhase `json:"phases"`
	Total  ShardPhase   `json:"total"`
}

// ShardPhase counts one shard's reads and writes in one phase.
type ShardPhase struct {
	// Reads are the reads, judged as those of Result.Phases (Reads.Name is
	// the phase).
	Reads Phase `json:"reads"`
	// Writes counts the key writes; Pending those that returned
	// ErrPending, Failed those that returned another error.
	Writes  int64 `json:"writes"`
	Pending int64 `json:"writes_pending"`
	Failed  int64 `json:"writes_failed"`
}

// rangesText writes slot ranges as "0-5460 5462".
func rangesText(rs [][2]int) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.Itoa(r[0])
		if r[1] != r[0] {
			parts[i] += "-" + strconv.Itoa(r[1])
		}
	}
	return strings.Join(parts, " ")
}

// shardCounts are the checker's counts per shard and phase; nil on one
// server.
type shardCounts struct {
	c      *clusterRun
	phases []map[string]*ShardPhase // per shard, by phase name
}

func newShardCounts(c *clusterRun) *shardCounts {
	if c == nil {
		return nil
	}
	s := &shardCounts{c: c, phases: make([]map[string]*ShardPhase, len(c.shards))}
	for i := range s.phases {
		s.phases[i] = map[string]*ShardPhase{}
	}
	return s
}

// at returns the counts of phase of the shard that served key at time t,
// or nil on one server.
func (s *shardCounts) at(key int, t int64, phase string) *ShardPhase {
	if s == nil {
		return nil
	}
	m := s.phases[s.c.shardAt(s.c.keySlot[key], t)]
	sp := m[phase]
	if sp == nil {
		sp = &ShardPhase{Reads: Phase{Name: phase, ByClass: map[string]int64{}}}
		m[phase] = sp
	}
	return sp
}

// countWrite counts a key write.
func (sp *ShardPhase) countWrite(w write) {
	sp.Writes++
	switch w.Outcome {
	case wrotePending:
		sp.Pending++
	case wroteFailed:
		sp.Failed++
	}
}

// result lists the shards, each with its phases in order.
func (s *shardCounts) result(order []string, keys int) []Shard {
	if s == nil {
		return nil
	}
	out := make([]Shard, len(s.c.shards))
	for i, rs := range s.c.shards {
		sh := Shard{Index: i, Slots: rangesText(rs), Masters: s.c.masters[i], Bus: int(s.c.owner[s.c.busSlot]) == i,
			Total: ShardPhase{Reads: Phase{Name: "total", ByClass: map[string]int64{}}}}
		for k := range keys {
			if int(s.c.owner[s.c.keySlot[k]]) == i {
				sh.Keys++
			}
		}
		names := slices.Sorted(maps.Keys(s.phases[i]))
		slices.SortStableFunc(names, func(a, b string) int { return rank(order, a) - rank(order, b) })
		for _, name := range names {
			sp := s.phases[i][name]
			if sp == nil {
				continue
			}
			sp.Reads.summarize()
			sh.Total.Reads.add(&sp.Reads)
			sh.Total.Writes += sp.Writes
			sh.Total.Pending += sp.Pending
			sh.Total.Failed += sp.Failed
			sh.Phases = append(sh.Phases, *sp)
		}
		sh.Total.Reads.summarize()
		out[i] = sh
	}
	return out
}

// rank is name's place in order, or after every name of it.
func rank(order []string, name string) int {
	if i := slices.Index(order, name); i >= 0 {
		return i
	}
	return len(order)
}
