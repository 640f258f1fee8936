package tier

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/groups"
	"github.com/tiercache/tiercache/internal/wait"
	"github.com/tiercache/tiercache/l2"
)

// Defaults of Config's zero fields.
const (
	DefaultTTL   = time.Hour
	DefaultL1TTL = time.Minute
)

// maxNamespaceBytes bounds Config.Namespace, so that the namespace's group
// name ("\x00ns\x00" + namespace) fits in a bus message.
const maxNamespaceBytes = 1020

// maxTTL bounds Config.TTL: about 146 years, far inside what Redis's PX and
// a time.Duration can hold.
const maxTTL = time.Duration(1 << 62)

// Config configures a Cache: one kind of object, with its source of truth.
type Config[K comparable, V any] struct {
	// Namespace names this kind of object. Required, at most 1020 bytes,
	// any bytes; keys of different namespaces never collide. A node holds at
	// most one Cache per namespace; every node of the fleet that caches
	// this kind of object must use the same namespace, key form and codec.
	Namespace string
	// Fetch reads one object from the source of truth. Required. It runs
	// at most once at a time per key on a node, shared by every Get waiting
	// for that key; its ctx keeps the values of the first caller's context
	// and is cancelled only when every waiting caller has gone or the node
	// closes. To say that the object does not exist, return an error that
	// wraps ErrNotFound. A panic is recovered and returned to every waiting
	// caller as an error wrapping ErrFetchPanic.
	Fetch func(ctx context.Context, key K) (V, error)
	// TTL is the lifetime of a value in L2 (Redis), set server-side.
	// Default 1h; negative is an error.
	TTL time.Duration
	// L1TTL is the lifetime of a value in this node's L1, never beyond the
	// remaining lifetime of the L2 entry it came from (RACES.md R24).
	// Default 1m; negative disables L1 for this Cache.
	L1TTL time.Duration
	// Key returns the string form of a key: its name in Redis and in
	// invalidation messages. It must be injective and deterministic across
	// processes. Optional for key types whose underlying type is a string
	// (the string itself) or an integer (its decimal form); required
	// otherwise. An L1 hit calls it once.
	Key func(K) string
	// Codec encodes values for Redis. Default CBOR[V].
	Codec Codec[V]
	// Groups returns the groups an entry belongs to, from its key, its
	// value, or both; it is called when the entry is filled or Set.
	// Node.InvalidateGroup of any of them makes the entry stale on every
	// node, in time independent of the group's size. A name is 1 to 1024
	// bytes and does not start with NUL; an entry has at most
	// MaxGroupsPerEntry. An entry whose groups break these rules is returned
	// by Get but not cached, and Set of it fails with ErrBadGroup. Reading
	// an entry's groups back costs nothing extra: Redis checks their stamps
	// in the same round trip as the value, whether they come from the key
	// or the value. Optional.
	Groups func(key K, value V) []string
}

// MaxGroupsPerEntry bounds the groups of one entry.
const MaxGroupsPerEntry = 64

// Cache caches one kind of object in both tiers of a Node. It is safe for
// concurrent use. Values returned by Get may be shared with other callers
// and with L1: treat them as immutable.
type Cache[K comparable, V any] struct {
	node    *Node
	ns      string
	fetch   func(context.Context, K) (V, error)
	ttl     time.Duration
	l1TTL   time.Duration // <0: no L1
	codec   Codec[V]
	keys    keyer[K]
	flights flights[V]
	groupFn func(K, V) []string
	nsGroup string // the group of every entry of the namespace
}

// entry is what a Cache keeps in L1.
type entry[K comparable, V any] struct {
	owner  *Cache[K, V]
	key    K
	val    V
	groups []groups.Ref
}

// fence is what a fill took before it read Redis: the key's fill-epoch
// ticket and the node's group generation. An invalidation of the key, or of
// any group, that the node learns of after that refuses the L1 fill.
type fence struct {
	ticket consistency.Ticket
	gen    uint64
}

// New returns a Cache of one kind of object on node n.
func New[K comparable, V any](n *Node, cfg Config[K, V]) (*Cache[K, V], error) {
	switch {
	case n == nil:
		return nil, fmt.Errorf("%w: nil Node", ErrConfig)
	case cfg.Namespace == "":
		return nil, fmt.Errorf("%w: empty Namespace", ErrConfig)
	case len(cfg.Namespace) > maxNamespaceBytes:
		return nil, fmt.Errorf("%w: Namespace is %d bytes, limit %d", ErrConfig, len(cfg.Namespace), maxNamespaceBytes)
	case cfg.Fetch == nil:
		return nil, fmt.Errorf("%w: nil Fetch", ErrConfig)
	case cfg.TTL < 0 || cfg.TTL > maxTTL:
		return nil, fmt.Errorf("%w: TTL %v is negative or over %v", ErrConfig, cfg.TTL, maxTTL)
	}
	kr, err := newKeyer(cfg.Namespace, n.cfg.MaxKeyBytes, cfg.Key)
	if err != nil {
		return nil, err
	}
	c := &Cache[K, V]{
		node:    n,
		ns:      cfg.Namespace,
		fetch:   cfg.Fetch,
		ttl:     cfg.TTL,
		l1TTL:   cfg.L1TTL,
		codec:   cfg.Codec,
		keys:    kr,
		groupFn: cfg.Groups,
		nsGroup: namespaceGroup(cfg.Namespace),
	}
	if c.ttl == 0 {
		c.ttl = DefaultTTL
	}
	if c.l1TTL == 0 {
		c.l1TTL = DefaultL1TTL
	}
	c.l1TTL = min(c.l1TTL, c.ttl)
	if c.codec == nil {
		c.codec = CBOR[V]{}
	}
	if err := n.register(cfg.Namespace, c); err != nil {
		return nil, err
	}
	n.groups.Pin(c.nsGroup)
	return c, nil
}

// fleetGroup is the group that every entry of every namespace belongs to:
// invalidating it is the last resort of a node whose queue of pending
// group invalidations overflowed (it cannot know their members).
const fleetGroup = "\x00all"

// namespaceGroup is the group that every entry of a namespace belongs to:
// InvalidateAll invalidates it. User group names cannot start with NUL, so
// it cannot collide with one.
func namespaceGroup(namespace string) string {
	return "\x00ns\x00" + namespace
}

// Get returns the value of key: from L1 if this node holds a valid copy,
// else from Redis, else from Fetch, caching what it fetched in both tiers.
//
// Concurrent Gets of one key on a node share one load; across the fleet,
// one fetch fills the cache while the others wait for its value (bounded by
// NodeConfig.FlagTTL and ctx) and then, if it has not come, fetch without
// caching. A fetch that began before an invalidation never fills either
// tier. If Redis fails, Get answers from Fetch without caching.
//
// Errors: those of Fetch (wrapping ErrNotFound when it says so), ctx's,
// ErrFetchPanic, ErrEmptyKey, ErrKeyTooLarge, ErrClosed. An L1 hit does
// not consult ctx and allocates nothing.
func (c *Cache[K, V]) Get(ctx context.Context, key K) (V, error) {
	if v, ok := c.fromL1(key); ok {
		return v, nil
	}
	return c.getSlow(ctx, key)
}

// fromL1 returns key's value if this node's L1 holds a valid copy: present,
// unexpired, leased, fenced, of this cache, of this key, in groups none of
// which was invalidated since.
func (c *Cache[K, V]) fromL1(key K) (V, bool) {
	var zero V
	if c.l1TTL <= 0 {
		return zero, false
	}
	h, ok := c.keys.hash(key)
	if !ok {
		return zero, false
	}
	v, found := c.node.l1.Get(h)
	if !found {
		return zero, false
	}
	e, ok := v.(*entry[K, V])
	if !ok || e.owner != c || e.key != key || !groupsValid(e.groups) {
		return zero, false
	}
	c.node.stats.l1Hits.add(h)
	return e.val, true
}

func (c *Cache[K, V]) getSlow(ctx context.Context, key K) (V, error) {
	var zero V
	s, h, err := c.keys.resolve(key)
	if err != nil {
		return zero, fmt.Errorf("tier get: %w", err)
	}
	return c.flights.do(ctx, c.node, s, func(ctx context.Context) (V, error) {
		return c.load(ctx, key, s, h)
	})
}

// load is the body of one flight: read L2 or claim, then fetch and fill, or
// wait for another claimant.
func (c *Cache[K, V]) load(ctx context.Context, key K, s string, h uint64) (V, error) {
	n := c.node
	// The ticket is taken before anything is read: an invalidation this
	// node learns of from here on refuses the L1 fill (R12, R13).
	f := fence{ticket: n.l1.Ticket(h), gen: n.groups.Gen()}
	if n.pending.blocks(c.ns, s, nil) {
		// This node invalidated the key while Redis was unreachable, and
		// the invalidation has not landed yet: Redis may hold the old value.
		return c.fetchUncached(ctx, key)
	}
	keys := l2.KeysFor(n.cfg.Prefix, c.ns, s)
	// Redis operations outlive the flight's waiters (each is bounded by
	// RedisTimeout): if callers give up before Redis answers, the outcome
	// still reaches the breaker, which otherwise would never learn that
	// Redis is unreachable from callers with short deadlines.
	rctx := context.WithoutCancel(ctx)
	var (
		waitUntil time.Time
		backoff   = time.Millisecond
		corrupt   bool
	)
	for {
		token := n.token()
		start := time.Now()
		r, err := n.store.ReadOrClaim(rctx, keys, token, n.cfg.FlagTTL)
		if n.hooks != nil && n.hooks.AfterRead != nil {
			n.hooks.AfterRead(s)
		}
		if err != nil {
			if ctx.Err() != nil {
				var zero V
				return zero, ctx.Err()
			}
			n.redisFailed("read", err)
			return c.fetchUncached(ctx, key)
		}
		if r.Stale {
			n.stats.groupStale.Add(1)
		}
		switch r.State {
		case l2.Hit:
			v, size, err := c.decode(s, r.Value)
			switch {
			case err == nil && n.pending.blocks(c.ns, s, r.Groups):
				// One of its groups was invalidated here while Redis was
				// unreachable, and that has not landed yet.
				return c.fetchUncached(ctx, key)
			case err == nil:
				n.stats.l2Hits.Add(1)
				ttl := c.l1TTL
				if r.TTL >= 0 {
					// Measured from before the request, so that L1 never
					// outlives the L2 entry it came from (R24).
					ttl = min(ttl, r.TTL-time.Since(start))
				}
				c.fillL1(h, key, v, size, ttl, f, r.Groups)
				return v, nil
			case errors.Is(err, errKeyMismatch):
				// Another long key with the same 128-bit hash owns the slot.
				return c.fetchUncached(ctx, key)
			case corrupt:
				// Corrupt again after one removal: do not loop.
				return c.fetchUncached(ctx, key)
			}
			corrupt = true
			n.stats.corrupt.Add(1)
			n.log.Warn("tiercache: undecodable value in redis; removing it", "namespace", c.ns, "err", err)
			if err := n.store.DeleteIfEqual(rctx, keys, r.Value); err != nil {
				n.redisFailed("delete corrupt", err)
				return c.fetchUncached(ctx, key)
			}
			continue
		case l2.Claimed:
			return c.fetchAndFill(ctx, key, s, h, keys, token, r.Seq, f)
		}
		// Busy: another claimant is fetching. Wait for its value, bounded
		// by our flag TTL (if its flag expires we claim on the next round:
		// R08) and by ctx; then fetch without caching. Never a second fill.
		if waitUntil.IsZero() {
			n.stats.waits.Add(1)
			waitUntil = start.Add(n.cfg.FlagTTL)
		}
		if n.hooks != nil && n.hooks.OnBusy != nil {
			n.hooks.OnBusy(s)
		}
		if !time.Now().Before(waitUntil) {
			return c.fetchUncached(ctx, key)
		}
		if err := wait.Sleep(ctx, min(backoff, time.Until(waitUntil))); err != nil {
			var zero V
			return zero, err
		}
		backoff = min(2*backoff, 32*time.Millisecond)
	}
}

var errKeyMismatch = errors.New("tier: stored value belongs to another key")

// decode returns the value stored in envelope b for key s, with the size
// that L1 accounts for it.
func (c *Cache[K, V]) decode(s string, b []byte) (V, int, error) {
	var zero V
	env, err := l2.DecodeEnvelope(b)
	if err != nil {
		return zero, 0, err
	}
	if env.Key != s {
		return zero, 0, errKeyMismatch
	}
	v, err := c.codec.Decode(env.Data)
	if err != nil {
		return zero, 0, err
	}
	return v, len(b), nil
}

// fetchAndFill runs Fetch under our claim and fills both tiers if the claim
// still holds.
func (c *Cache[K, V]) fetchAndFill(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, claimSeq uint64, f fence) (V, error) {
	n := c.node
	v, err := c.callFetch(ctx, key)
	if err != nil {
		c.release(ctx, keys, token)
		var zero V
		return zero, err
	}
	gs, err := c.groupsOf(key, v)
	if err != nil {
		c.release(ctx, keys, token)
		n.stats.badGroups.Add(1)
		n.log.Warn("tiercache: not caching an entry with bad groups", "namespace", c.ns, "err", err)
		return v, nil
	}
	env, err := c.encode(s, v)
	if err != nil {
		c.release(ctx, keys, token)
		if errors.Is(err, ErrValueTooLarge) {
			n.stats.oversize.Add(1)
			n.log.Warn("tiercache: value too large to cache", "namespace", c.ns, "err", err)
			return v, nil
		}
		var zero V
		return zero, fmt.Errorf("tier get: %w", err)
	}
	if n.hooks != nil && n.hooks.BeforeFill != nil {
		n.hooks.BeforeFill(s)
	}
	start := time.Now()
	landed, err := n.store.FillInGroups(context.WithoutCancel(ctx), keys, token, env, c.ttl, gs, claimSeq)
	switch {
	case err != nil:
		n.redisFailed("fill", err)
		c.release(ctx, keys, token) // if the flag is still ours, let others claim now
		return v, nil
	case !landed:
		// Invalidated, expired or taken over since we claimed, or one of
		// its groups was invalidated meanwhile (R01, R03, R04, R05, R31).
		// Our caller may still have v: its read overlapped the write.
		// Neither tier keeps it.
		n.stats.fillsRefused.Add(1)
		return v, nil
	}
	n.stats.fillsLanded.Add(1)
	c.fillL1(h, key, v, len(env), c.ttl-time.Since(start), f, gs)
	return v, nil
}

// fetchUncached answers from the source and caches nothing.
func (c *Cache[K, V]) fetchUncached(ctx context.Context, key K) (V, error) {
	c.node.stats.uncached.Add(1)
	return c.callFetch(ctx, key)
}

// callFetch calls Fetch, turning a panic into ErrFetchPanic.
func (c *Cache[K, V]) callFetch(ctx context.Context, key K) (v V, err error) {
	c.node.stats.fetches.Add(1)
	defer func() {
		if r := recover(); r != nil {
			c.node.log.Error("tiercache: fetch panicked", "namespace", c.ns, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrFetchPanic, r)
		}
	}()
	return c.fetch(ctx, key)
}

// release gives up our claim so that waiters elsewhere need not wait for it
// to expire. It runs even if ctx was cancelled.
func (c *Cache[K, V]) release(ctx context.Context, keys l2.Keys, token string) {
	rctx, cancel := c.node.cleanupContext(ctx)
	defer cancel()
	if err := c.node.store.Release(rctx, keys, token); err != nil {
		c.node.redisFailed("release", err)
	}
}

// encode returns the envelope of v under key s, or ErrValueTooLarge.
func (c *Cache[K, V]) encode(s string, v V) ([]byte, error) {
	data, err := c.codec.Encode(v)
	if err != nil {
		return nil, err
	}
	limit := c.node.cfg.MaxValueBytes
	if len(data)+len(s) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(data)+len(s), limit)
	}
	env, err := l2.EncodeEnvelope(s, data)
	if err != nil {
		return nil, err
	}
	if len(env) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(env), limit)
	}
	return env, nil
}

// fillL1 stores v, in groups, in L1 if nothing the node learnt since the
// fence was taken invalidates it.
func (c *Cache[K, V]) fillL1(h uint64, key K, v V, size int, ttl time.Duration, f fence, groupNames []string) {
	if c.l1TTL <= 0 || ttl <= 0 {
		return
	}
	e := &entry[K, V]{owner: c, key: key, val: v, groups: c.node.groups.Refs(groupNames)}
	// After taking the refs: a group invalidation applied before this check
	// moved the generation; one applied after it invalidates the refs.
	if c.node.groups.Gen() != f.gen || !c.node.l1.Fill(h, e, int64(size), min(ttl, c.l1TTL), f.ticket) {
		c.node.stats.l1FillsRefused.Add(1)
	}
}

// groupsValid reports whether no group of an entry was invalidated since it
// was filled: one atomic load per group.
func groupsValid(refs []groups.Ref) bool {
	for _, r := range refs {
		if !r.Valid() {
			return false
		}
	}
	return true
}

// groupsOf returns the groups of an entry: the fleet's and its namespace's,
// then those Config.Groups names, checked.
func (c *Cache[K, V]) groupsOf(key K, v V) ([]string, error) {
	if c.groupFn == nil {
		return []string{fleetGroup, c.nsGroup}, nil
	}
	user := c.groupFn(key, v)
	if len(user) > MaxGroupsPerEntry {
		return nil, fmt.Errorf("%w: %d groups, limit %d", ErrBadGroup, len(user), MaxGroupsPerEntry)
	}
	out := make([]string, 0, 2+len(user))
	out = append(out, fleetGroup, c.nsGroup)
	for _, g := range user {
		if err := checkGroup(g); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// checkGroup reports whether g can name a group.
func checkGroup(g string) error {
	switch {
	case g == "":
		return fmt.Errorf("%w: empty group name", ErrBadGroup)
	case len(g) > bus.MaxGroupBytes:
		return fmt.Errorf("%w: group name of %d bytes, limit %d", ErrBadGroup, len(g), bus.MaxGroupBytes)
	case g[0] == 0:
		return fmt.Errorf("%w: group name starts with NUL", ErrBadGroup)
	}
	return nil
}

// Set stores value as key's value in Redis, for use right after the source
// of truth was updated (write-through). In one atomic round trip the value
// is written, the key's flag cleared (a fill in progress is refused) and the
// change announced on the bus, so that every node evicts its L1 copy; this
// node's is evicted and its flight forgotten before Set returns, and the
// next Get reads the new value from Redis. Concurrent Sets of one key are
// decided by Redis: every tier converges to the value Redis holds last.
//
// A value larger than NodeConfig.MaxValueBytes is not stored: the key is
// invalidated instead, so that no tier keeps the old value, and the error
// wraps ErrValueTooLarge. If Redis fails, the local effect still applies
// and the error says so.
func (c *Cache[K, V]) Set(ctx context.Context, key K, value V) error {
	s, _, err := c.keys.resolve(key)
	if err != nil {
		return fmt.Errorf("tier set: %w", err)
	}
	if c.node.isClosed() {
		return ErrClosed
	}
	env, err := c.encode(s, value)
	if errors.Is(err, ErrValueTooLarge) {
		if ierr := c.publish(ctx, []bus.Op{{Namespace: c.ns, Key: s}}); ierr != nil {
			return fmt.Errorf("tier set: %w (and invalidating failed: %w)", err, ierr)
		}
		return fmt.Errorf("tier set: %w; key invalidated instead", err)
	}
	if err != nil {
		return fmt.Errorf("tier set: %w", err)
	}
	gs, err := c.groupsOf(key, value)
	if err != nil {
		if ierr := c.publish(ctx, []bus.Op{{Namespace: c.ns, Key: s}}); ierr != nil {
			return fmt.Errorf("tier set: %w (and invalidating failed: %w)", err, ierr)
		}
		return fmt.Errorf("tier set: %w; key invalidated instead", err)
	}
	op := bus.Op{Namespace: c.ns, Key: s, Payload: write{envelope: env, ttl: c.ttl, groups: gs}}
	if err := c.publish(ctx, []bus.Op{op}); err != nil {
		return fmt.Errorf("tier set: %w", err)
	}
	return nil
}

// write is the payload of a bus op that stores a value instead of deleting.
type write struct {
	envelope []byte
	ttl      time.Duration
	groups   []string
}

// Invalidate removes keys from both tiers on every node. In one atomic
// round trip their values and flags are deleted from Redis and the
// invalidation is announced on the bus (batched with other callers'); every
// node that receives it evicts its L1 copies, and a node that may have
// missed it stops serving L1 within NodeConfig.LeaseTTL. Before Invalidate
// returns, this node's L1 entries are evicted and their flights forgotten,
// so that no read on this node that begins afterwards returns an old value
// (R20, R21), and no fetch that began before it can fill either tier (R01,
// R03). If Redis fails, the local effect still applies and the error says
// so. Invalid keys are reported before anything is done.
func (c *Cache[K, V]) Invalidate(ctx context.Context, keys ...K) error {
	ops := make([]bus.Op, len(keys))
	for i, k := range keys {
		s, _, err := c.keys.resolve(k)
		if err != nil {
			return fmt.Errorf("tier invalidate: key %d: %w", i, err)
		}
		ops[i] = bus.Op{Namespace: c.ns, Key: s}
	}
	if c.node.isClosed() {
		return ErrClosed
	}
	if err := c.publish(ctx, ops); err != nil {
		return fmt.Errorf("tier invalidate: %w", err)
	}
	return nil
}

// InvalidateAll makes every entry of this cache's namespace stale on every
// node, in constant time: every entry belongs to its namespace's group, and
// this invalidates that group (cacheme's invalid_all). Entries stay in Redis
// until they expire or are read (a read removes a stale one).
func (c *Cache[K, V]) InvalidateAll(ctx context.Context) error {
	if err := c.node.invalidateGroups(ctx, []string{c.nsGroup}); err != nil {
		return fmt.Errorf("tier invalidate all: %w", err)
	}
	return nil
}

// publish hands ops to the node (see Node.publish) and counts them.
func (c *Cache[K, V]) publish(ctx context.Context, ops []bus.Op) error {
	c.node.stats.invalidate.Add(uint64(len(ops)))
	return c.node.publish(ctx, ops)
}

// evictLocal applies an invalidation of key s to this node: the L1 entry is
// evicted (and every fill ticket of its stripe invalidated) and the key's
// flight forgotten.
func (c *Cache[K, V]) evictLocal(s string, h uint64) {
	c.node.l1.Evict(h)
	if c.node.hooks == nil || !c.node.hooks.NoForget {
		c.flights.forget(s)
	}
}

// forgetAll forgets every flight of this cache.
func (c *Cache[K, V]) forgetAll() {
	if c.node.hooks == nil || !c.node.hooks.NoForget {
		c.flights.forgetAll()
	}
}
