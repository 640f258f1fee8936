package tier

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/groups"
	"github.com/tiercache/tiercache/internal/breaker"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/internal/safelog"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/l2"
)

// Defaults of NodeConfig's zero fields.
const (
	DefaultPrefix        = "tc"
	DefaultL1MaxBytes    = l1.DefaultMaxBytes
	DefaultFlagTTL       = 10 * time.Second
	DefaultLeaseTTL      = 2 * time.Second
	DefaultRedisTimeout  = 500 * time.Millisecond
	DefaultBreakerFails  = 5
	DefaultBreakerPause  = time.Second
	DefaultMaxPending    = 100_000
	DefaultMaxKeyBytes   = 1 << 20
	DefaultMaxValueBytes = 8 << 20
)

// NodeConfig configures a Node. The zero value is valid: every zero field
// takes the default named in its comment.
type NodeConfig struct {
	// Prefix starts the name of every key the library writes to Redis, so
	// that several independent fleets can share one Redis. It must not
	// contain '{' or '}' (they would break the cluster hash tag) and is at
	// most 64 bytes. Default "tc".
	Prefix string
	// L1MaxBytes bounds the memory of the node's L1, shared by all of its
	// Caches, in bytes (values' encoded size plus keys plus per-entry
	// overhead). Default 64 MiB; negative is an error.
	L1MaxBytes int64
	// Logger receives the node's warnings and errors as structured records
	// with stable keys ("namespace", "key_hash", "reason", "err"); nothing
	// is logged per request at Info or below. Default slog.Default(), so
	// that warnings are seen; pass a logger with slog.DiscardHandler to
	// silence them. A handler that panics loses its records, never the
	// goroutine that logged (Stats.RecorderPanics counts its panics).
	Logger *slog.Logger
	// FlagTTL is how long a claim of a missing key lasts in Redis: it must
	// be longer than your slowest Fetch, since a fetch that outlives its
	// flag cannot fill the cache (docs/RACES.md R04). It also bounds how long a
	// Get waits for another claimant's fetch before fetching without caching.
	// Default 10s; at least 1ms.
	FlagTTL time.Duration
	// LeaseTTL bounds how stale L1 can be when invalidations are lost. A
	// node serves L1 only while its bus subscription has answered a ping
	// sent less than LeaseTTL ago (so every invalidation published before
	// that ping has been applied) and the fleet epoch in Redis is unchanged.
	// The subscription is pinged every LeaseTTL/4. Default 2s; at least
	// 50ms.
	LeaseTTL time.Duration
	// MaxKeyBytes bounds the string form of a key, in bytes. Longer keys are
	// rejected with ErrKeyTooLarge. Default and maximum 1 MiB (a key must
	// fit in an invalidation message).
	MaxKeyBytes int
	// RedisTimeout bounds every operation on Redis (and the caller's
	// context bounds it too), so that a Get facing a slow or unreachable
	// Redis falls back to the source after at most this long, not after
	// the client's read timeout and retries. On a Redis Cluster a group
	// invalidation (InvalidateGroup, InvalidateAll), which runs in every
	// slot, gets four times as long. For this to hold on a stuck
	// connection, the client must honour context deadlines
	// (redis.Options.ContextTimeoutEnabled); NewNode warns if it does not.
	// Default 500ms.
	RedisTimeout time.Duration
	// BreakerFails is how many consecutive operations that could not reach
	// Redis open the node's circuit breaker; while open, operations fail at
	// once (reads go to the source, writes are queued) instead of each
	// waiting for RedisTimeout. A refused connection opens it at once, and
	// ends the operations in flight (see NewNode). Default 5.
	BreakerFails int
	// BreakerPause is how long the breaker stays open before it lets one
	// operation probe Redis; a success closes it. Default 1s.
	BreakerPause time.Duration
	// MaxPending bounds the invalidations queued while Redis is
	// unreachable. Past it, the namespaces of the keys that did not fit are
	// invalidated whole on replay (in constant time), so nothing is lost
	// silently. Default 100,000.
	MaxPending int
	// MaxTrackedGroups bounds how many groups the node tracks for its L1.
	// An L1 entry in a group the node stopped tracking is not served; the
	// next read checks Redis. Default 65,536; negative is an error.
	MaxTrackedGroups int
	// OutageMaxAge turns on a degraded mode for Redis outages, and suspends
	// the staleness bound while it serves: when a Get cannot reach Redis
	// (the breaker is open, or the read failed), it answers from the entry
	// this node's L1 already holds for the key, if that entry was filled at
	// most OutageMaxAge ago and no invalidation this node learnt of (its
	// own writes included) has touched it since, instead of calling the
	// source. Such a value comes with ReadInfo.Stale set and an error
	// wrapping ErrStale and ErrUnreachable: another node may have
	// invalidated it, unseen, since the bus went quiet. It keeps a fleet's
	// source from taking every read at the moment Redis fails. Default 0:
	// off, and the bound of the guarantee holds; negative is an error.
	OutageMaxAge time.Duration
	// MaxValueBytes bounds the stored form of a value (its encoding plus the
	// envelope and the key), in bytes. A larger value is returned by Get but
	// not cached; Set rejects it with ErrValueTooLarge. Default 8 MiB.
	MaxValueBytes int
	// Recorder receives the node's events for metrics (see Recorder; the
	// module github.com/tiercache/tiercache/tierotel adapts OpenTelemetry).
	// Default none: nothing is measured. Stats and Cache.Stats count
	// either way.
	Recorder Recorder
	// Tracer makes spans of Gets that L1 does not answer and of calls of
	// the source (see Tracer; tierotel adapts OpenTelemetry). Default none.
	Tracer Tracer
	// WaitReplicas makes every write that changes Redis for the fleet
	// (Invalidate, Set, InvalidateGroup, InvalidateAll, Flush, and their
	// replays) wait, after its script, until this many replicas of the
	// master have acknowledged it (Redis WAIT), for at most WaitTimeout. A
	// write that returned nil then survives the promotion of any replica
	// that acknowledged it: replication is asynchronous, and without this a
	// failover can undo an acknowledged invalidation and bring the old value
	// back (README, Redis Cluster, Sentinel and failover). A write that fewer replicas acknowledged
	// in time returns an error wrapping ErrPending and ErrNotReplicated, and
	// is queued and replayed like any write that did not reach Redis. Fills
	// do not wait: one lost in a failover costs a miss, never a stale value.
	// It costs each write the replication round trip (the same section of
	// README gives the figures). With
	// fewer replicas than this, every write fails so: NewNode warns.
	// Default 0: no waiting; negative is an error.
	WaitReplicas int
	// WaitTimeout bounds WaitReplicas' wait, on top of RedisTimeout.
	// Default RedisTimeout; negative is an error.
	WaitTimeout time.Duration
}

func (cfg NodeConfig) withDefaults() (NodeConfig, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(cfg.Prefix, "{}") || len(cfg.Prefix) > 64 {
		return cfg, fmt.Errorf("%w: Prefix %q must be at most 64 bytes with no '{' or '}'", ErrConfig, cfg.Prefix)
	}
	if cfg.L1MaxBytes < 0 {
		return cfg, fmt.Errorf("%w: L1MaxBytes %d is negative", ErrConfig, cfg.L1MaxBytes)
	}
	if cfg.L1MaxBytes == 0 {
		cfg.L1MaxBytes = DefaultL1MaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.FlagTTL == 0:
		cfg.FlagTTL = DefaultFlagTTL
	case cfg.FlagTTL < time.Millisecond:
		return cfg, fmt.Errorf("%w: FlagTTL %v is under 1ms", ErrConfig, cfg.FlagTTL)
	}
	switch {
	case cfg.LeaseTTL == 0:
		cfg.LeaseTTL = DefaultLeaseTTL
	case cfg.LeaseTTL < 50*time.Millisecond:
		return cfg, fmt.Errorf("%w: LeaseTTL %v is under 50ms", ErrConfig, cfg.LeaseTTL)
	}
	switch {
	case cfg.MaxKeyBytes == 0:
		cfg.MaxKeyBytes = DefaultMaxKeyBytes
	case cfg.MaxKeyBytes < 0 || cfg.MaxKeyBytes > bus.MaxKeyBytes:
		return cfg, fmt.Errorf("%w: MaxKeyBytes %d is outside [1, %d]", ErrConfig, cfg.MaxKeyBytes, bus.MaxKeyBytes)
	}
	if cfg.RedisTimeout == 0 {
		cfg.RedisTimeout = DefaultRedisTimeout
	}
	if cfg.BreakerFails == 0 {
		cfg.BreakerFails = DefaultBreakerFails
	}
	if cfg.BreakerPause == 0 {
		cfg.BreakerPause = DefaultBreakerPause
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.RedisTimeout < 0 || cfg.BreakerFails < 0 || cfg.BreakerPause < 0 || cfg.MaxPending < 0 {
		return cfg, fmt.Errorf("%w: RedisTimeout, BreakerFails, BreakerPause and MaxPending may not be negative", ErrConfig)
	}
	if cfg.OutageMaxAge < 0 {
		return cfg, fmt.Errorf("%w: OutageMaxAge %v is negative", ErrConfig, cfg.OutageMaxAge)
	}
	if cfg.WaitReplicas < 0 || cfg.WaitTimeout < 0 {
		return cfg, fmt.Errorf("%w: WaitReplicas %d and WaitTimeout %v may not be negative", ErrConfig, cfg.WaitReplicas, cfg.WaitTimeout)
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = cfg.RedisTimeout
	}
	if cfg.MaxTrackedGroups < 0 {
		return cfg, fmt.Errorf("%w: MaxTrackedGroups %d is negative", ErrConfig, cfg.MaxTrackedGroups)
	}
	switch {
	case cfg.MaxValueBytes == 0:
		cfg.MaxValueBytes = DefaultMaxValueBytes
	case cfg.MaxValueBytes < 0:
		return cfg, fmt.Errorf("%w: MaxValueBytes %d is negative", ErrConfig, cfg.MaxValueBytes)
	}
	return cfg, nil
}

// Node is one process's membership in the fleet: its Redis client, its L1
// shared by all of its Caches, and its background work. Create one per
// process with NewNode, and Close it on shutdown. It is safe for concurrent
// use.
type Node struct {
	cfg     NodeConfig
	log     *slog.Logger
	rdb     redis.UniversalClient
	store   *l2.Store
	l1      *l1.Cache
	groups  *groups.Table
	breaker *breaker.Breaker
	pending *pending
	present *presence // which keys Redis likely holds: see presence
	hooks   *hooks.Points
	stats   counters
	rec     Recorder        // guarded; nil: none
	tracer  Tracer          // guarded; nil: none
	life    context.Context // cancelled by Close; parent of background work
	cancel  context.CancelFunc

	id      bus.NodeID
	pub     *bus.Publisher
	sub     *bus.Subscriber
	names   l2.BusKeys
	live    chan struct{} // closed at the first lease
	liveOne sync.Once
	wakers  wakers

	mu        sync.Mutex
	closed    bool
	caches    map[string]evictor   // by namespace
	resources map[string]resourcer // by name
	wg        sync.WaitGroup       // every goroutine the node started
}

// evictor is the part of a Cache that the node drives.
type evictor interface {
	evictLocal(key string, h uint64)
	forgetAll()
	meter() *meter
}

// NewNode returns a Node that caches through rdb: a client of one server
// (redis.NewClient), of a Sentinel deployment (redis.NewFailoverClient), or
// of a Redis Cluster (redis.NewClusterClient, every master Redis 7 or later;
// see README, Redis Cluster). The Node does not close it.
//
// NewNode loads the protocol's scripts and subscribes to the invalidation
// bus on a connection of its own. It adds a dial hook to rdb, which stays
// after Close (doing nothing then): a dial that Redis refuses opens the
// node's circuit breaker at once, so that no caller waits for RedisTimeout
// or the client's retries when Redis is down. It returns once the subscription has
// answered its first ping, so that L1 serves at once; or, if ctx is done or
// LeaseTTL passes first (Redis unreachable), with L1 off until it does:
// reads then go to Redis or the source, and a fleet can start while Redis
// is down.
func NewNode(ctx context.Context, rdb redis.UniversalClient, cfg NodeConfig) (*Node, error) {
	return newNode(ctx, rdb, cfg, nil)
}

func newNode(ctx context.Context, rdb redis.UniversalClient, cfg NodeConfig, hk *hooks.Points) (*Node, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil Redis client", ErrConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	l1cfg := l1.Config{MaxBytes: cfg.L1MaxBytes, Epochs: consistency.NewEpochs(0), Leased: true}
	if hk != nil {
		l1cfg.Hooks = hk.L1
	}
	cache, err := l1.New(l1cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n := &Node{
		cfg:     cfg,
		rdb:     rdb,
		pending: newPending(cfg.MaxPending),
		present: newPresence(),
		l1:      cache,
		groups:  groups.New(cfg.MaxTrackedGroups),
		hooks:   hk,
		caches:  make(map[string]evictor),
		live:    make(chan struct{}),
	}
	// The node logs through a guard: a Logger whose handler panics loses
	// the record, never the goroutine that logged (a Get, a flight's end,
	// the bus's subscriber, the replay of pending writes), and its panics
	// are counted with the Recorder's (Stats.RecorderPanics).
	n.log = safelog.New(cfg.Logger, func() { n.stats.recorderPanics.Add(1) })
	if cfg.Recorder != nil && cfg.Recorder != Recorder(NopRecorder{}) {
		n.rec = guardedRecorder{r: cfg.Recorder, n: n}
	}
	if cfg.Tracer != nil {
		n.tracer = guardedTracer{t: cfg.Tracer, n: n}
	}
	n.breaker = breaker.New(cfg.BreakerFails, cfg.BreakerPause, nil, func(from, to breaker.State) {
		switch to {
		case breaker.Open:
			n.stats.breakerOpens.Add(1)
		case breaker.Closed:
			n.pending.kick() // Redis answers again: replay at once
		}
		// The Recorder and the Logger run inside the Redis operation that
		// moved the breaker, which must finish: one that ended its
		// goroutine would leave a claim the operation took, or a write's
		// local effect, undone.
		apart(func() {
			if n.rec != nil && (from == breaker.Closed || to == breaker.Closed) {
				n.rec.Breaker(to != breaker.Closed)
			}
			n.log.Warn("tiercache: redis circuit breaker", "from", from.String(), "to", to.String())
		})
	})
	n.store = l2.NewStore(rdb, cfg.Prefix, l2.WithGuard(breakerGuard{n.breaker}), l2.WithTimeout(cfg.RedisTimeout),
		l2.WithWaitReplicas(cfg.WaitReplicas, cfg.WaitTimeout))
	n.names = l2.BusKeysFor(cfg.Prefix, n.store.Cluster())
	if c, ok := rdb.(*redis.ClusterClient); ok {
		if err := n.checkCluster(ctx, c); err != nil {
			cache.Close()
			return nil, err
		}
	}
	rdb.AddHook(outageHook{n})
	if c, ok := rdb.(*redis.Client); ok {
		if !c.Options().ContextTimeoutEnabled {
			n.log.Warn("tiercache: the Redis client ignores context deadlines (ContextTimeoutEnabled is false): a stuck connection can hold an operation past RedisTimeout")
		}
		if c.Options().ReadTimeout < 0 {
			n.log.Warn("tiercache: the Redis client has no read timeout: Close can wait for a reconnect stuck in a partition")
		}
	}
	if cfg.WaitReplicas > 0 {
		n.checkReplicas(ctx)
	}
	n.groups.Pin(fleetGroup)
	_, _ = crand.Read(n.id[:])
	n.life, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := n.store.LoadScripts(ctx); err != nil {
		n.log.Warn("tiercache: cannot load scripts; they will load on first use", "err", err)
	}
	if n.pub, err = bus.NewPublisher(n.life, bus.PublisherConfig{Origin: n.id, Exec: n.exec}); err != nil {
		n.cancel()
		cache.Close()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	var bh *bus.Hooks
	if hk != nil {
		bh = hk.Bus
	}
	n.sub, err = bus.NewSubscriber(n.life, bus.SubscriberConfig{
		Client:   rdb,
		Channel:  n.names.Channel,
		Sharded:  n.store.Cluster(),
		EpochKey: n.names.Epoch,
		SeqKey:   n.names.Seq,
		Self:     n.id,
		LeaseTTL: cfg.LeaseTTL,
		Handler:  busHandler{n},
		// Waiters are woken on the bus's connection: one subscription.
		WakeChannel: n.names.Wake,
		Wake:        n.wakers.wake,
		Logger:      n.log,
		Hooks:       bh,
	})
	if err != nil {
		n.pub.Close()
		n.cancel()
		cache.Close()
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.spawn(n.replay)
	wait, cancel := context.WithTimeout(ctx, cfg.LeaseTTL)
	defer cancel()
	select {
	case <-n.live:
	case <-wait.Done():
		n.log.Warn("tiercache: bus subscription not confirmed yet; L1 is off until it is")
	}
	return n, nil
}

// checkReplicas warns if the master has fewer replicas connected than
// WaitReplicas asks for: every write would then fail until more connect.
func (n *Node) checkReplicas(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RedisTimeout)
	defer cancel()
	if err := forEachMaster(ctx, n.rdb, func(ctx context.Context, c redis.UniversalClient) error {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		n.checkReplicasIn(info)
		return nil
	}); err != nil {
		n.log.Warn("tiercache: cannot count the master's replicas for WaitReplicas", "err", err)
	}
}

// checkReplicasIn warns if INFO replication's info counts fewer replicas
// than WaitReplicas.
func (n *Node) checkReplicasIn(info string) {
	if got, err := strconv.Atoi(infoField(info, "connected_slaves")); err == nil && got < n.cfg.WaitReplicas {
		n.log.Warn("tiercache: fewer replicas than WaitReplicas; writes fail with ErrNotReplicated until more connect",
			"replicas", got, "wait_replicas", n.cfg.WaitReplicas)
	}
}

// Close stops the node's background work and waits for it: fetches in
// flight see their context cancelled, and Close returns when they have
// returned (a Fetch must honour its ctx). Calls on the node's Caches then
// return ErrClosed. Close is idempotent and always returns nil.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	n.cancel()
	n.sub.Close()
	n.pub.Close()
	n.wg.Wait()
	n.l1.Close()
	return nil
}

// Flush drops every L1 in the fleet: this node's at once, and every other
// node's when it receives the message. Use it when the source of truth was
// changed behind the caches' back. Redis (L2) is left as it is. If Redis
// cannot be reached, the local part still applies and the error says so.
func (n *Node) Flush(ctx context.Context) error {
	if n.isClosed() {
		return ErrClosed
	}
	if n.rec != nil {
		n.rec.Published("", ScopeFleet, 1)
	}
	err := n.pub.Flush(ctx)
	if err != nil {
		n.pending.add(nil, true)
	}
	n.dropLocal(false)
	if err != nil {
		return fmt.Errorf("tier flush: %w: %w", ErrPending, err)
	}
	return nil
}

// exec runs one batch of the bus publisher: every change and the message
// that announces them in one atomic script (R14), then the local effect of
// each change, whatever Redis answered: by then a fill that read the old
// value cannot land in this node's L1.
func (n *Node) exec(ctx context.Context, b *bus.Batch) error {
	changes := make([]l2.Change, len(b.Ops))
	for i, op := range b.Ops {
		if op.Group != "" {
			changes[i] = l2.Change{Group: op.Group}
			continue
		}
		changes[i] = l2.Change{Keys: l2.KeysFor(n.cfg.Prefix, op.Namespace, op.Key)}
		if w, ok := op.Payload.(write); ok {
			changes[i].Write, changes[i].Envelope, changes[i].TTL, changes[i].Groups = true, w.envelope, w.ttl, w.groups
			changes[i].LateAfter, changes[i].LateTTL = n.lateAfter(ctx), n.cfg.LeaseTTL
		}
	}
	a := &l2.Announcement{SeqKey: n.names.Seq, Channel: n.names.Channel, Head: b.Head, Body: b.Body}
	var err error
	switch {
	case n.hooks != nil && n.hooks.LateApply != nil && n.hooks.LateApply(func() { _, _ = n.store.Apply(context.Background(), changes, a) }):
		err = context.DeadlineExceeded
	case n.hooks != nil && n.hooks.PublishBeforeDelete:
		err = n.publishBeforeDelete(ctx, changes, a, b.Ops)
	default:
		_, err = n.store.Apply(ctx, changes, a)
	}
	if !b.Flush { // Flush drops locally itself
		n.applyOps(b.Ops)
	}
	if err != nil {
		n.redisFailed("", "publish", err)
		return err
	}
	n.stats.published.Add(1)
	return nil
}

// lateAfter returns the instant on Redis's clock after which a write that
// the node sends now is late: its call has given up (RedisTimeout, or ctx's
// deadline if sooner), so a newer write may have landed before it. The
// estimate errs early (see bus.ClockSample), so that no late write passes
// for a timely one; before the first sample, every write counts as late.
func (n *Node) lateAfter(ctx context.Context) time.Time {
	deadline := time.Now().Add(n.cfg.RedisTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c, ok := n.sub.RedisClock()
	if !ok {
		return time.UnixMicro(1)
	}
	return c.Redis.Add(deadline.Sub(c.End))
}

// publishBeforeDelete is the broken order that R14 forbids, kept for its
// negative control: the message overtakes the delete. The message itself is
// announced as usual (its sequence number drawn with its publish), so that
// the only fault is the order.
func (n *Node) publishBeforeDelete(ctx context.Context, changes []l2.Change, a *l2.Announcement, ops []bus.Op) error {
	seq, err := n.store.Apply(ctx, nil, a)
	if err != nil {
		return err
	}
	if n.hooks.BetweenPublishAndDelete != nil {
		var keys []string
		for _, op := range ops {
			if op.Group == "" {
				keys = append(keys, op.Key)
			}
		}
		n.hooks.BetweenPublishAndDelete(seq, keys)
	}
	_, err = n.store.Apply(ctx, changes, nil)
	return err
}

// publish is every write's way to Redis and the fleet: it hands ops to the
// bus publisher (one atomic write and announcement per batch), and applies
// their local effect before it returns, whatever happened. The publisher's
// exec applies it too, once Redis answered; applying it again here covers a
// ctx that ended while the batch was queued. If the ops may not have reached
// Redis, they are queued for replay first, so that a read that begins after
// the local effect sees them pending and keeps away from Redis, and an L1
// fill that read Redis before it is fenced off by it (R17, R21). A write is
// queued as an invalidation, which is always safe.
func (n *Node) publish(ctx context.Context, ops []bus.Op) error {
	if len(ops) == 0 {
		return nil
	}
	err := n.pub.Publish(ctx, ops...)
	if err != nil {
		queued := make([]bus.Op, len(ops))
		for i, op := range ops {
			queued[i] = bus.Op{Namespace: op.Namespace, Key: op.Key, Group: op.Group}
		}
		n.pending.add(queued, false)
	}
	n.applyOps(ops)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPending, err)
	}
	return nil
}

// applyOps applies ops to this node: keys evicted, groups invalidated. The
// ops of a replay applied when they were queued, and are skipped.
func (n *Node) applyOps(ops []bus.Op) {
	var invalid []string
	for _, op := range ops {
		if _, ok := op.Payload.(replayed); ok {
			continue
		}
		if op.Group != "" {
			invalid = append(invalid, op.Group)
			continue
		}
		n.evict(op.Namespace, op.Key)
	}
	if len(invalid) > 0 {
		n.applyGroups(invalid)
	}
}

// InvalidateGroup makes every entry of the named groups stale, on every
// node and in both tiers, in time independent of the groups' sizes: each
// group gets a new random stamp in Redis (so no restart or flush can make
// an old one valid again), announced on the bus in the same atomic step.
// Redis refuses, at read time, any value filled under an older stamp, and
// a fill in progress in one of the groups (R31). Before it returns, this
// node's L1 serves no member; other nodes stop when they apply the message,
// and within NodeConfig.LeaseTTL at worst. If Redis fails, the local part
// still applies and the error says so.
func (n *Node) InvalidateGroup(ctx context.Context, names ...string) error {
	if _, err := n.invalidate(ctx, []Target{Groups(names...)}); err != nil {
		return fmt.Errorf("tier invalidate group: %w", err)
	}
	return nil
}

// recordGroups reports invalidated groups to the Recorder through rec: a
// namespace's group as ScopeNamespace of that namespace, the fleet's as
// ScopeFleet, and the others together as ScopeGroups.
func (n *Node) recordGroups(names []string, rec func(namespace string, s Scope, k int)) {
	if n.rec == nil {
		return
	}
	user := 0
	for _, g := range names {
		switch {
		case g == fleetGroup:
			rec("", ScopeFleet, 1)
		case strings.HasPrefix(g, nsGroupPrefix):
			rec(g[len(nsGroupPrefix):], ScopeNamespace, 1)
		default:
			user++
		}
	}
	if user > 0 {
		rec("", ScopeGroups, user)
	}
}

// applyGroups applies the invalidation of groups to this node: no L1 entry
// in them serves any more, and no read that begins now joins a flight that
// began before (the node does not know which keys the groups hold).
func (n *Node) applyGroups(names []string) {
	n.groups.Invalidate(names...)
	n.forgetAllFlights()
}

// evict applies the invalidation of one key to this node: its L1 entry and
// fill epoch, and its flight if a Cache of the namespace is here.
func (n *Node) evict(namespace, key string) {
	if namespace == resourceNS {
		n.notifyResources(key) // a new version of a resource
		return
	}
	h := l1.Hash(l1.Seed(namespace), key)
	n.mu.Lock()
	c := n.caches[namespace]
	n.mu.Unlock()
	if c != nil {
		c.evictLocal(key, h)
	} else {
		n.l1.Evict(h)
	}
}

// dropLocal evicts everything from this node's L1 and forgets every flight;
// with revoke, L1 also stops serving until the bus renews its lease.
func (n *Node) dropLocal(revoke bool) {
	n.dropL1(revoke)
	n.forgetAllFlights()
}

// dropL1 evicts everything from this node's L1; with revoke, L1 also stops
// serving until the bus renews its lease.
func (n *Node) dropL1(revoke bool) {
	if revoke {
		n.l1.Revoke()
	} else {
		n.l1.EvictAll()
	}
}

// forgetAllFlights ends the membership of every flight of every cache.
func (n *Node) forgetAllFlights() {
	n.mu.Lock()
	caches := make([]evictor, 0, len(n.caches))
	for _, c := range n.caches {
		caches = append(caches, c)
	}
	n.mu.Unlock()
	for _, c := range caches {
		c.forgetAll()
	}
}

// breakerGuard makes the node's breaker the l2 Store's guard.
type breakerGuard struct{ b *breaker.Breaker }

func (g breakerGuard) Allow() (bool, error) { return g.b.Allow() }

func (g breakerGuard) Done(probe bool, o l2.Outcome) {
	switch o {
	case l2.Unreachable:
		g.b.Done(probe, breaker.Unreachable)
	case l2.Abandoned:
		g.b.Done(probe, breaker.Abandoned)
	default:
		g.b.Done(probe, breaker.Reached)
	}
}

// busHandler applies what the node's subscriber delivers.
type busHandler struct{ n *Node }

func (h busHandler) Apply(m *bus.Message) {
	for _, g := range m.Groups {
		for _, k := range g.Keys {
			h.n.evict(g.Namespace, k)
		}
	}
	if len(m.InvalidGroups) > 0 {
		h.n.stats.groupInvalidations.Add(uint64(len(m.InvalidGroups)))
		h.n.applyGroups(m.InvalidGroups)
	}
	if h.n.rec == nil {
		return
	}
	delay := h.n.delayOf(m)
	for _, g := range m.Groups {
		if g.Namespace != resourceNS {
			h.n.rec.Applied(g.Namespace, ScopeKeys, len(g.Keys), delay)
		}
	}
	h.n.recordGroups(m.InvalidGroups, func(ns string, s Scope, k int) { h.n.rec.Applied(ns, s, k, delay) })
}

// delayOf estimates how long ago, on Redis's clock, Redis published m: its
// publish-to-apply delay, or -1 if m or this node lacks a clock reading.
func (n *Node) delayOf(m *bus.Message) time.Duration {
	c, ok := n.sub.RedisClock()
	if !ok || m.SentAt.IsZero() {
		return -1
	}
	return max(c.Since(m.SentAt, time.Now()), 0)
}

func (h busHandler) Drop(reason bus.Reason, revoke bool) {
	h.n.stats.drops.Add(1)
	// The effect first, then the Recorder: one that ends the goroutine
	// (runtime.Goexit) must not leave L1 serving what a lost message
	// invalidated (R37).
	h.n.dropL1(revoke)
	if reason == bus.Flushed {
		// Another node flushed the fleet's L1: an invalidation of
		// everything, which no flight that began before may answer.
		h.n.forgetAllFlights()
	}
	// Otherwise the node lost track of its bus (a disconnect, a gap, a
	// lapse, a new fleet epoch): flights stay joinable for what is left of
	// their LeaseTTL (R42), so that losing the bus, or Redis, does not
	// multiply the source's load.
	h.n.notifyResources("") // a new version may have been announced unheard
	if h.n.rec != nil {
		h.n.rec.Dropped(dropReason(reason))
		switch reason {
		case bus.LeaseLapsed:
			h.n.rec.Lease(LeaseLapsed)
		case bus.Flushed:
			// The subscriber hands over no message for a flush: no delay.
			h.n.rec.Applied("", ScopeFleet, 1, -1)
		}
	}
}

func (h busHandler) Renew(sentAt time.Time) {
	if h.n.l1.Renew(sentAt, h.n.cfg.LeaseTTL) {
		// The lease had lapsed or been revoked: a flight started meanwhile
		// may have read what a lost message invalidated. Now that the node
		// has seen every message again, no read from now on may join it.
		// (While the bus stays lost, the flight's age bounds joining: R42.)
		h.n.forgetAllFlights()
		h.n.notifyResources("")
	}
	h.n.liveOne.Do(func() { close(h.n.live) })
	// The effect first, then the Recorder, as in Drop.
	if h.n.rec != nil {
		h.n.rec.Lease(LeaseRenewed)
	}
}

// spawn runs f in a goroutine that Close waits for, unless the node is
// closed. It is the node's one way to start work in the background
// (flights, batches, refreshes, the replay): a panic that escapes f is
// logged, never a crash. User callbacks are guarded where they are called,
// so that what they held is released; this is the last line.
func (n *Node) spawn(f func()) bool {
	if !n.enter() {
		return false
	}
	go func() {
		defer n.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				n.log.Error("tiercache: panic in background work", "panic", r, "stack", string(debug.Stack()))
			}
		}()
		f()
	}()
	return true
}

// takeOver ends a long-lived background loop, which does what: if its
// goroutine exited other than by the loop's return (a callback called
// runtime.Goexit, or a panic got past the guards), next takes over in a new
// goroutine, unless the node is closing, and the handover is logged with
// attrs.
func (n *Node) takeOver(exited bool, what string, next func(), attrs ...any) {
	if exited && n.spawn(next) {
		n.log.Error("tiercache: the goroutine that "+what+" ended (a callback called runtime.Goexit, or panicked); a new one took over", attrs...)
	}
}

// enter counts work that Close waits for, unless the node is closed: its
// end must call n.wg.Done. spawn runs such work in a goroutine; a flight
// whose caller cannot leave runs it in the caller's.
func (n *Node) enter() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	return true
}

func (n *Node) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func (n *Node) register(namespace string, c evictor) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.caches[namespace] != nil {
		return fmt.Errorf("%w: namespace %q already has a Cache on this node", ErrConfig, namespace)
	}
	n.caches[namespace] = c
	return nil
}

func (n *Node) token() string {
	if n.hooks != nil && n.hooks.Token != nil {
		return n.hooks.Token()
	}
	return consistency.NewToken()
}

// cleanupContext returns a context for I/O that must run even though ctx was
// cancelled or the node is closing (releasing a flag), bounded by
// cleanupTimeout and the flag TTL.
func (n *Node) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), min(n.cfg.FlagTTL, cleanupTimeout))
}

// cleanupTimeout bounds a cleanup operation such as releasing a flag.
const cleanupTimeout = time.Second

// redisFailed counts, records and logs a failed Redis operation op for a
// key of namespace ("" for the node's own). Operations the breaker refused
// are counted, not logged: the breaker logs its changes.
func (n *Node) redisFailed(namespace, op string, err error) {
	n.stats.redisErrors.Add(1)
	if n.rec != nil {
		n.rec.RedisError(namespace, op, redisErrorKind(err))
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, l2.ErrUnavailable) {
		return
	}
	attrs := []any{"err", err}
	if namespace != "" {
		attrs = append(attrs, "namespace", namespace)
	}
	n.log.Warn("tiercache: redis "+op+" failed", attrs...)
}

func init() {
	hooks.NewNode = func(ctx context.Context, rdb redis.UniversalClient, cfg any, p *hooks.Points) (any, error) {
		c, ok := cfg.(NodeConfig)
		if !ok {
			return nil, fmt.Errorf("%w: hooks.NewNode wants a tier.NodeConfig, got %T", ErrConfig, cfg)
		}
		n, err := newNode(ctx, rdb, c, p)
		if err != nil {
			return nil, err
		}
		return n, nil
	}
}

// now reads the node's clock for freshness decisions in L1: the L1's
// coarse monotonic clock, or a test's.
func (n *Node) now() time.Duration {
	if n.hooks != nil && n.hooks.Now != nil {
		return n.hooks.Now()
	}
	return n.l1.Now()
}

// rand01 draws uniformly from [0,1): for TTL jitter and early refresh.
func (n *Node) rand01() float64 {
	if n.hooks != nil && n.hooks.Rand != nil {
		return n.hooks.Rand()
	}
	return rand.Float64()
}
