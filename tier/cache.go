package tier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/groups"
	"github.com/tiercache/tiercache/l1"
)

// Defaults of Config's zero fields.
const (
	DefaultTTL   = time.Hour
	DefaultL1TTL = time.Minute
)

// MaxNamespaceBytes bounds Config.Namespace, so that the namespace's group
// name ("\x00ns\x00" + namespace) fits in a bus message.
const MaxNamespaceBytes = 1020

// CheckNamespace says why ns cannot name a namespace (empty, over
// MaxNamespaceBytes, or starting with NUL, which the library reserves), or
// returns nil. The error wraps ErrConfig.
func CheckNamespace(ns string) error {
	switch {
	case ns == "":
		return fmt.Errorf("%w: empty namespace", ErrConfig)
	case len(ns) > MaxNamespaceBytes:
		return fmt.Errorf("%w: namespace of %d bytes, limit %d", ErrConfig, len(ns), MaxNamespaceBytes)
	case ns[0] == 0:
		return fmt.Errorf("%w: namespace starts with NUL, which the library reserves", ErrConfig)
	}
	return nil
}

// maxTTL bounds Config.TTL: about 146 years, far inside what Redis's PX and
// a time.Duration can hold.
const maxTTL = time.Duration(1 << 62)

// Config configures a Cache: one kind of object, with its source of truth.
type Config[K comparable, V any] struct {
	// Namespace names this kind of object. Required, at most 1020 bytes,
	// any bytes but a leading NUL; keys of different namespaces never collide. A node holds at
	// most one Cache per namespace; every node of the fleet that caches
	// this kind of object must use the same namespace, key form and codec.
	Namespace string
	// Fetch reads one object from the source of truth. Optional: without
	// it, a read of one key goes through FetchMany, or through the source
	// its call names (GetOrFetch); with neither, FreshFor and EarlyRefresh,
	// which refresh in the background, are an error. It runs
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
	// remaining lifetime of the L2 entry it came from (docs/RACES.md R24).
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
	// FreshFor is how long after its fill a value is fresh, at most TTL.
	// Between FreshFor and TTL a value is stale but servable: Get returns it
	// at once, with ReadInfo.Stale set, while one fetch for the whole fleet
	// refreshes it in the background, a claimed and fenced fill like any
	// other (stale-while-revalidate, docs/RACES.md R34). Default TTL: no stale
	// serving.
	FreshFor time.Duration
	// MaxStale keeps a value in Redis this long past its TTL, for
	// fail-safe: when Fetch fails (other than with ErrNotFound) or outlasts
	// FetchTimeout and such a value exists, Get returns it with an error
	// wrapping ErrStale and the cause, and the key is marked failing in
	// Redis for FailSafeThrottle, during which every node serves that value
	// with ErrStale instead of calling Fetch again. Default 0: off.
	MaxStale time.Duration
	// FetchTimeout bounds a Fetch that has a stale value to fall back to
	// (fail-safe or a background refresh). Default 0: only ctx bounds it.
	FetchTimeout time.Duration
	// FailSafeThrottle is how long a key whose Fetch failed is left alone
	// while its stale value is served. Default 1s; at least 1ms.
	FailSafeThrottle time.Duration
	// EarlyRefresh turns on probabilistic early refresh (Vattani,
	// Chierichetti and Lowenstein, VLDB 2015, "XFetch"): a fresh hit whose
	// remaining freshness is t refreshes in the background with probability
	// exp(-t / (EarlyRefresh × the node's recent Fetch time)), so hot keys
	// are refreshed before they expire, by one caller, without a herd. The
	// refresh is a claimed, fenced fill like any other (R35). 0: off; 1 is
	// the paper's choice; larger refreshes earlier.
	EarlyRefresh float64
	// NotFoundTTL caches "not found" (a Fetch error wrapping ErrNotFound)
	// in both tiers for this long: Get returns an error wrapping
	// ErrNotFound with ReadInfo.Negative set, without calling Fetch. A Set
	// or Invalidate of the key removes it like any value (R11), and so does
	// invalidating a group that Groups gives for the key and the zero value
	// (value-derived groups cannot apply to an absent object; if Groups
	// panics on the zero value, "not found" is not cached). Default 0: not
	// cached.
	NotFoundTTL time.Duration
	// TTLJitter shortens each filled or Set value's TTL by a random
	// fraction of it, up to TTLJitter, so that keys filled together do not
	// expire together. In [0, 1); default 0.
	TTLJitter float64
	// Losers says what a Get does when another claimant in the fleet is
	// fetching the key and no fresh value exists. Default LoserWait.
	Losers LoserPolicy
	// OnHit, if set, is called on the caller's goroutine for every Get
	// answered from L1 or L2 (with the tier), and OnMiss for every Get that
	// had to fetch. They cost nothing when unset. They must be fast and
	// must not call the Cache.
	OnHit  func(key K, src Source)
	OnMiss func(key K)
	// FetchMany, if set, reads many objects from the source at once for
	// GetMany and GetList. It says "not found" as Fetch does, with
	// ErrNotFound, for each key: it returns the values it found and, for
	// the keys it did not find (or failed on, alone), a *KeyErrors that
	// maps each to its error; tier.Missing builds that error from the
	// keys and the values. Any other error fails every key. A key given
	// neither a value nor an error is an error, not "not found". Without
	// FetchMany, GetMany fetches each missing key through Fetch.
	FetchMany func(ctx context.Context, keys []K) (map[K]V, error)
	// Groups returns the groups an entry belongs to, from its key, its
	// value, or both; it is called when the entry is filled or Set.
	// Node.InvalidateGroup of any of them makes the entry stale on every
	// node, in time independent of the group's size. A name is 1 to 1024
	// bytes and does not start with NUL; an entry has at most
	// MaxGroupsPerEntry. An entry whose groups break these rules, or whose
	// Groups call panics, is not cached: Get returns it with an error
	// wrapping ErrBadGroup (or ErrPanic), and Set of it fails so. Reading
	// an entry's groups back costs nothing extra: Redis checks their stamps
	// in the same round trip as the value, whether they come from the key
	// or the value. Optional.
	Groups func(key K, value V) []string
}

// MaxGroupsPerEntry bounds the groups of one entry: enough for a list page
// of a thousand items, each item a group. An entry's groups cost one stamp
// read each when Redis answers, and one atomic load each on an L1 hit.
const MaxGroupsPerEntry = 1024

// Cache caches one kind of object in both tiers of a Node. It is safe for
// concurrent use. Values returned by Get may be shared with other callers
// and with L1: treat them as immutable.
type Cache[K comparable, V any] struct {
	node      *Node
	ns        string
	fetch     func(context.Context, K) (V, error)
	fetchMany func(context.Context, []K) (map[K]V, error)
	ttl       time.Duration
	l1TTL     time.Duration // <0: no L1
	codec     Codec[V]
	cbor      bool // codec is CBOR[V], which keeps none of the bytes it decodes
	keys      keyer[K]
	flights   flights[loaded[V]]
	groupFn   func(K, V) []string
	nsGroup   string                       // the group of every entry of the namespace
	known     []string                     // fleetGroup and nsGroup: the groups every read checks
	baseRefs  atomic.Pointer[[]groups.Ref] // see refs
	slot      *l1.Slot[entry[K, V]]        // the node's L1, for this Cache's entries
	z         zones
	onHit     func(K, Source) error // Config.OnHit, a panic an error
	onMiss    func(K) error
	fetchTime atomic.Int64 // recent Fetch duration (ns), for early refresh
	m         *meter

	bgMu sync.Mutex
	bg   map[string]struct{} // keys with an early refresh from L2 running
}

// loaded is the result of one load: the value and how it was found.
type loaded[V any] struct {
	v  V
	ri ReadInfo
}

// entry is what a Cache keeps in L1: one allocation, which L1 holds itself
// (l1.Slot), with L1's bookkeeping in its first field.
type entry[K comparable, V any] struct {
	// Entry is L1's part. Its Flags hold entryNegative and
	// entryRefreshing.
	l1.Entry
	key K
	val V
	// groups are the entry's groups, as taken at the fill: shared by the
	// entries filled while the fleet's and the namespace's groups are
	// unchanged (Cache.refs).
	groups *[]groups.Ref
	// fresh is the node clock's reading (Node.now) at which the value stops
	// being fresh and a hit serves it as stale while it is refreshed; 0 if
	// it is fresh for as long as L1 keeps it.
	fresh time.Duration
}

// The Flags of an entry.
const (
	// entryNegative marks a cached "not found"; set before the fill.
	entryNegative uint32 = 1 << iota
	// entryRefreshing is set while a background refresh started from the
	// entry runs, so that hits start one at a time.
	entryRefreshing
)

func (e *entry[K, V]) negative() bool { return e.Flags.Load()&entryNegative != 0 }

// fence is what a fill took before it read Redis: the key's fill-epoch
// ticket and the node's group generation. An invalidation of the key, or of
// any group, that the node learns of after that refuses the L1 fill.
type fence struct {
	ticket consistency.Ticket
	gen    uint64
	landed uint64 // pending.landed: see pending.blocksSince
}

// fence takes the fence of a read of the key hashed h, before it reads
// Redis.
func (n *Node) fence(h uint64) fence {
	return fence{ticket: n.l1.Ticket(h), gen: n.groups.Gen(), landed: n.pending.landed.Load()}
}

// New returns a Cache of one kind of object on node n.
func New[K comparable, V any](n *Node, cfg Config[K, V]) (*Cache[K, V], error) {
	switch {
	case n == nil:
		return nil, fmt.Errorf("%w: nil Node", ErrConfig)
	case cfg.TTL < 0 || cfg.TTL > maxTTL:
		return nil, fmt.Errorf("%w: TTL %v is negative or over %v", ErrConfig, cfg.TTL, maxTTL)
	}
	if err := CheckNamespace(cfg.Namespace); err != nil {
		return nil, err
	}
	if n.store.Cluster() && strings.ContainsRune(cfg.Namespace, '}') {
		// The namespace is inside every key's hash tag: a '}' would end the
		// tag early and put the whole namespace in one slot.
		return nil, fmt.Errorf("%w: namespace %q holds '}', which on Redis Cluster would put all its keys in one hash slot", ErrConfig, cfg.Namespace)
	}
	z, err := newZones(cfg.TTL, cfg.FreshFor, cfg.MaxStale, cfg.FetchTimeout, cfg.FailSafeThrottle, cfg.EarlyRefresh, cfg.NotFoundTTL, cfg.TTLJitter, cfg.Losers)
	if err != nil {
		return nil, err
	}
	if cfg.Fetch == nil && cfg.FetchMany == nil && (z.fresh < z.ttl || z.beta > 0) {
		// A refresh in the background has no caller to take a fetch from.
		return nil, fmt.Errorf("%w: FreshFor and EarlyRefresh refresh in the background and need Config.Fetch or FetchMany", ErrConfig)
	}
	kr, err := newKeyer(cfg.Namespace, n.cfg.MaxKeyBytes, cfg.Key)
	if err != nil {
		return nil, err
	}
	c := &Cache[K, V]{
		node:      n,
		ns:        cfg.Namespace,
		fetch:     cfg.Fetch,
		fetchMany: cfg.FetchMany,
		ttl:       z.ttl,
		l1TTL:     cfg.L1TTL,
		codec:     cfg.Codec,
		keys:      kr,
		groupFn:   cfg.Groups,
		nsGroup:   namespaceGroup(cfg.Namespace),
		known:     []string{fleetGroup, namespaceGroup(cfg.Namespace)},
		z:         z,
		onHit:     hitHook(n, cfg.Namespace, cfg.OnHit),
		onMiss:    missHook(n, cfg.Namespace, cfg.OnMiss),
		m:         newMeter(cfg.Namespace, n.rec),
	}
	if c.l1TTL == 0 {
		c.l1TTL = DefaultL1TTL
	}
	c.l1TTL = min(c.l1TTL, c.ttl)
	if c.codec == nil {
		c.codec = CBOR[V]{}
	}
	_, c.cbor = c.codec.(CBOR[V])
	slot, err := l1.NewSlot[entry[K, V]](n.l1)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err) // cannot happen: entry begins with l1.Entry
	}
	c.slot = slot
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
	return nsGroupPrefix + namespace
}

// nsGroupPrefix starts the name of every namespace's group.
const nsGroupPrefix = "\x00ns\x00"

// Get returns the value of key: from L1 if this node holds a valid copy,
// else from Redis, else from Fetch, caching what it fetched in both tiers.
//
// Concurrent Gets of one key on a node share one load; across the fleet,
// one fetch fills the cache while the others wait for its value (bounded by
// NodeConfig.FlagTTL and ctx, and as Config.Losers says) and then, if it
// has not come, fetch without caching. A fetch that began before an
// invalidation never fills either tier. If Redis fails, Get answers from
// Fetch without caching.
//
// With Config.FreshFor, MaxStale or Losers set, Get may answer with a
// permitted-stale value: ReadInfo.Stale says so, and a value past its TTL
// comes with an error wrapping ErrStale; so does a value served from L1
// while Redis is unreachable, in the degraded mode of
// NodeConfig.OutageMaxAge (the error also wraps ErrUnreachable). A fetched
// value that could not be cached (Groups or the Codec failed or panicked)
// comes with an error that says why. Every other error comes with the zero
// value.
//
// Errors: those of Fetch (wrapping ErrNotFound when it says so, or when a
// cached "not found" answers), ErrStale, ctx's, ErrFetchPanic, ErrEmptyKey,
// ErrKeyTooLarge, ErrClosed. An L1 hit does not consult ctx and allocates
// nothing. Options change one call; see GetOption.
func (c *Cache[K, V]) Get(ctx context.Context, key K, opts ...GetOption) (V, error) {
	return c.get(ctx, key, nil, opts)
}

// GetOrFetch is Get with fetch as the source of this call, in place of
// Config.Fetch: for a Cache whose callers each know how to load what they
// ask for (go-redis/cache's Once, FusionCache's GetOrSet). fetch is shared
// as Fetch is: concurrent Gets and GetOrFetches of key on this node share
// one load, whichever began it, and its claim and fence are Fetch's. An L1
// hit never calls fetch, and allocates nothing.
func (c *Cache[K, V]) GetOrFetch(ctx context.Context, key K, fetch func(ctx context.Context, key K) (V, error), opts ...GetOption) (V, error) {
	if fetch == nil {
		var zero V
		return zero, fmt.Errorf("tier get: %w: nil fetch", ErrConfig)
	}
	return c.get(ctx, key, fetch, opts)
}

// loaderKey is the context key of GetOrFetch's fetch, loaderFor its value.
type loaderKey[K comparable, V any] struct{}

type loaderFor[K comparable, V any] struct {
	owner *Cache[K, V]
	fetch func(context.Context, K) (V, error)
}

// withLoader returns ctx carrying fetch as c's source, if fetch is set.
func (c *Cache[K, V]) withLoader(ctx context.Context, fetch func(context.Context, K) (V, error)) context.Context {
	if fetch == nil {
		return ctx
	}
	return context.WithValue(ctx, loaderKey[K, V]{}, loaderFor[K, V]{owner: c, fetch: fetch})
}

// loader returns the source of a load in ctx: GetOrFetch's, else
// Config.Fetch, else Config.FetchMany for one key, else nil.
func (c *Cache[K, V]) loader(ctx context.Context) func(context.Context, K) (V, error) {
	if l, ok := ctx.Value(loaderKey[K, V]{}).(loaderFor[K, V]); ok && l.owner == c {
		return l.fetch
	}
	if c.fetch == nil && c.fetchMany != nil {
		return c.fetchOne
	}
	return c.fetch
}

// fetchOne reads one key through Config.FetchMany.
func (c *Cache[K, V]) fetchOne(ctx context.Context, key K) (V, error) {
	found, err := c.fetchMany(ctx, []K{key})
	var ke *KeyErrors[K]
	if errors.As(err, &ke) && err == error(ke) {
		if kerr, ok := ke.Errs[key]; ok {
			var zero V
			return zero, kerr
		}
		err = nil
	}
	if err != nil {
		var zero V
		return zero, err
	}
	v, ok := found[key]
	if !ok {
		return v, errNoAnswer
	}
	return v, nil
}

// get is Get, with fetch (if set) as the source of this call.
func (c *Cache[K, V]) get(ctx context.Context, key K, fetch func(context.Context, K) (V, error), opts []GetOption) (V, error) {
	var o getOptions
	start := c.m.start()
	if len(opts) == 0 {
		v, st, _ := c.fromL1(key)
		if st == l1Fresh {
			c.m.hitL1(start)
			if c.onHit != nil {
				if err := c.onHit(key, SourceL1); err != nil {
					var zero V
					return zero, err
				}
			}
			return v, nil
		}
		return c.getMissed(c.withLoader(ctx, fetch), key, v, st, o, start)
	}
	ctx = c.withLoader(ctx, fetch)
	for _, opt := range opts {
		if opt != nil {
			o = opt.applyGet(o)
		}
	}
	if o.bypass {
		ctx, end := c.startGet(ctx)
		r, err := c.bypass(ctx, key)
		end(r.ri, err)
		if herr := c.account(key, r.ri, err, start); herr != nil {
			var zero V
			r.v, err = zero, herr
		}
		if o.info != nil {
			*o.info = r.ri
		}
		return r.v, err
	}
	var (
		v  V
		st = l1Miss
	)
	if !o.refresh {
		v, st, _ = c.fromL1(key)
	}
	return c.getMissed(ctx, key, v, st, o, start)
}

// getMissed finishes a Get, begun at start, that L1 did not answer with a
// fresh value on its fast path.
func (c *Cache[K, V]) getMissed(ctx context.Context, key K, v V, st l1State, o getOptions, start time.Time) (V, error) {
	var (
		ri  ReadInfo
		err error
	)
	switch st {
	case l1Fresh:
		ri.Source = SourceL1
	case l1Stale:
		ri = ReadInfo{Source: SourceL1, Stale: true}
	case l1Negative:
		ri = ReadInfo{Source: SourceL1, Negative: true}
		err = errCachedNotFound
	default:
		mode := modeGet
		if o.refresh {
			mode = modeRefresh
		}
		ctx, end := c.startGet(ctx)
		v, ri, err = c.getSlow(ctx, key, mode)
		end(ri, err)
	}
	if herr := c.account(key, ri, err, start); herr != nil {
		var zero V
		v, err = zero, herr
	}
	if o.info != nil {
		*o.info = ri
	}
	return v, err
}

// startGet begins the span of a Get that L1 did not answer, if the node
// has a Tracer; the function it returns ends it.
func (c *Cache[K, V]) startGet(ctx context.Context) (context.Context, func(ReadInfo, error)) {
	t := c.node.tracer
	if t == nil {
		return ctx, endNothing
	}
	ctx, end := t.StartGet(ctx, c.ns, 1)
	return ctx, func(ri ReadInfo, err error) { end(answerOf(ri, err), err) }
}

// endNothing ends a Get that no tracer follows. A package-level func: a
// literal in a generic method would allocate for its dictionary.
func endNothing(ReadInfo, error) {}

// account counts the answer to a Get begun at start, and calls the hit and
// miss hooks; it returns the error of a hook that panicked.
func (c *Cache[K, V]) account(key K, ri ReadInfo, err error, start time.Time) error {
	c.m.answer(answerOf(ri, err), start)
	switch ri.Source {
	case SourceL1, SourceL2:
		if c.onHit != nil {
			return c.onHit(key, ri.Source)
		}
	case SourceFetch, SourceUncached:
		if c.onMiss != nil {
			return c.onMiss(key)
		}
	}
	return nil
}

// errCachedNotFound answers a Get from a cached "not found".
var errCachedNotFound = fmt.Errorf("tier get: %w (cached)", ErrNotFound)

// l1State is what L1 holds for a key.
type l1State uint8

const (
	l1Miss     l1State = iota
	l1Fresh            // a fresh value
	l1Stale            // a value past FreshFor, being refreshed
	l1Negative         // a cached "not found"
)

// fromL1 returns what this node's L1 holds for key, if its copy is valid:
// present, unexpired, leased, fenced, of this cache, of this key, in groups
// none of which was invalidated since; and the key's hash.
func (c *Cache[K, V]) fromL1(key K) (V, l1State, uint64) {
	var zero V
	if c.l1TTL <= 0 {
		return zero, l1Miss, 0
	}
	h, ok := c.keys.hash(key)
	if !ok {
		return zero, l1Miss, 0
	}
	e, found := c.slot.Get(h)
	if !found || e.key != key || !groupsValid(*e.groups) {
		return zero, l1Miss, h
	}
	switch {
	case e.negative():
		return zero, l1Negative, h
	case e.fresh != 0:
		return e.val, c.freshness(e, h), h
	}
	return e.val, l1Fresh, h
}

// freshness tells a fresh entry from a stale one, and starts a background
// refresh of a stale one, or of a fresh one that early refresh picks.
func (c *Cache[K, V]) freshness(e *entry[K, V], h uint64) l1State {
	left := e.fresh - c.node.now()
	if left <= 0 {
		c.refreshFrom(e, h, modeRevalidate)
		return l1Stale
	}
	if c.z.beta > 0 && c.earlyRefresh(left) {
		c.refreshFrom(e, h, modeRefresh)
	}
	return l1Fresh
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
// then those Config.Groups names, checked. A panic in Groups is an error
// wrapping ErrPanic.
func (c *Cache[K, V]) groupsOf(key K, v V) ([]string, error) {
	if c.groupFn == nil {
		return []string{fleetGroup, c.nsGroup}, nil
	}
	user, err := guarded(c.node, "Groups", c.ns, func() ([]string, error) { return c.groupFn(key, v), nil })
	if err != nil {
		return nil, err
	}
	if len(user) > MaxGroupsPerEntry {
		return nil, fmt.Errorf("%w: %d groups, limit %d", ErrBadGroup, len(user), MaxGroupsPerEntry)
	}
	out := make([]string, 0, 2+len(user))
	out = append(out, fleetGroup, c.nsGroup)
	for _, g := range user {
		if err := CheckGroup(g); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// CheckGroup says why g cannot name a group (empty, over 1024 bytes, or
// starting with NUL, which the library reserves), or returns nil. The error
// wraps ErrBadGroup.
func CheckGroup(g string) error {
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
// of truth was updated (write-through). In one atomic step, one round trip
// (two for the first write in a group, or after its stamp was evicted),
// the value is written, the key's flag cleared (a fill in progress is
// refused) and the change announced on the bus, so that every node evicts
// its L1 copy; this
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
	env, _, err := c.encode(s, value)
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
	op := bus.Op{Namespace: c.ns, Key: s, Payload: write{envelope: env, ttl: c.lifetime(), groups: gs}}
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
	if _, err := c.node.invalidate(ctx, []Target{KeysOf(c, keys...)}); err != nil {
		return fmt.Errorf("tier invalidate: %w", err)
	}
	return nil
}

// InvalidateAll makes every entry of this cache's namespace stale on every
// node, in constant time: every entry belongs to its namespace's group, and
// this invalidates that group (cacheme's invalid_all). Entries stay in Redis
// until they expire or are read (a read removes a stale one).
func (c *Cache[K, V]) InvalidateAll(ctx context.Context) error {
	if _, err := c.node.invalidate(ctx, []Target{Namespace(c.ns)}); err != nil {
		return fmt.Errorf("tier invalidate all: %w", err)
	}
	return nil
}

// publish hands ops to the node (see Node.publish) and counts them.
func (c *Cache[K, V]) publish(ctx context.Context, ops []bus.Op) error {
	c.m.published(ScopeKeys, len(ops))
	return c.node.publish(ctx, ops)
}

// meter returns the Cache's counters.
func (c *Cache[K, V]) meter() *meter { return c.m }

// evictLocal applies an invalidation of key s to this node: the L1 entry is
// evicted (and every fill ticket of its stripe invalidated) and the key's
// flight forgotten.
func (c *Cache[K, V]) evictLocal(s string, h uint64) {
	c.node.l1.Evict(h)
	c.node.present.clear(h)
	c.node.wakeKey(c.ns, s)
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
