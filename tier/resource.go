package tier

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/l2"
)

// NoExpiry, as ResourceConfig.TTL, keeps a resource in Redis until a load
// replaces it. It is dangerous without alerting on failed loads
// (ResourceStats.LoadErrors, or the Recorder's load_error): if the source
// keeps failing, every node serves the last good data forever, and nobody
// notices.
const NoExpiry time.Duration = -1

// Defaults of ResourceConfig's zero fields.
const (
	DefaultResourceLoadTimeout = time.Minute
	DefaultResourceChunkBytes  = 512 << 10
	DefaultResourceMaxBytes    = 256 << 20
)

// maxResourceNameBytes bounds ResourceConfig.Name.
const maxResourceNameBytes = 256

// ResourceConfig configures a Resource: a whole data set, loaded at once.
type ResourceConfig[K comparable, V any] struct {
	// Name names the resource in Redis and on the bus: every node that
	// serves it uses the same name. Required; 1 to 256 bytes, without '{'
	// or '}'.
	Name string
	// Load reads the whole data set from the source. Required. One node
	// of the fleet calls it at a time (a claim in Redis, as for keys), at
	// most LoadTimeout long; the others take its result from Redis. A
	// panic is recovered and counted as a failed load; so is a call of
	// runtime.Goexit (t.FailNow), which ends the goroutine that called
	// Load (a new one takes over the background reloads).
	Load func(ctx context.Context) (map[K]V, error)
	// ReloadEvery is how often the data set is loaded again. Required.
	ReloadEvery time.Duration
	// TTL is how long a loaded data set lives in Redis: long past
	// ReloadEvery, so that nodes that start while the source fails still
	// find the last good data. Default 10 × ReloadEvery; NoExpiry keeps it
	// until replaced.
	TTL time.Duration
	// LoadTimeout bounds one Load, and the loader's claim. Default 1m.
	LoadTimeout time.Duration
	// Codec encodes the data set for Redis. Default CBOR.
	Codec Codec[map[K]V]
	// ChunkBytes is the largest Redis value the data set is split into.
	// Default 512 KiB.
	ChunkBytes int
	// MaxBytes bounds the encoded data set; a larger one is not stored
	// (the load fails with ErrValueTooLarge, and the last good data stays).
	// Default 256 MiB.
	MaxBytes int
	// RetryAfter is how long the fleet leaves the source alone after a
	// failed load. Default ReloadEvery/10, at least 100ms and at most 10s.
	RetryAfter time.Duration
	// AllowEmpty accepts a Load that returns no entries. By default such a
	// load is a failure (a truncated table, a query against the wrong
	// database), and the last good data set stays.
	AllowEmpty bool
}

// Resource is a whole data set (a table of currency rates, a list of
// airlines) that every node holds in memory and reads without a lock, an
// allocation or a round trip, loaded once for the fleet and reloaded every
// ReloadEvery.
//
// The fleet shares it through Redis: a node whose data set is due claims
// the load, calls Load, stores the result in chunks under a new version
// and announces the version on the bus; every other node reads the new
// version from Redis when it hears of it (or at its next check, every
// ReloadEvery/4, if it missed the message) and swaps it in whole, so that
// a reader never sees half of two versions. A load that fails keeps the
// last good data set, in memory and in Redis, and is counted; a node that
// starts while the source fails takes the last good one from Redis. If
// Redis is unreachable, each node loads from the source itself, at most
// once per ReloadEvery.
//
// After Refill (or Invalidate) returns, every node that reaches Redis
// serves the new data set as soon as it hears the announcement, and one
// that missed it (a lost message, a lapsed lease) reads the version from
// Redis as soon as it notices, as its L1 would stop serving keys; at the
// latest at its next check. Unlike keys, a node that cannot reach Redis
// keeps serving the data set it has, which is a Resource's purpose, and
// loads from the source itself once ReloadEvery has passed.
type Resource[K comparable, V any] struct {
	node  *Node
	cfg   ResourceConfig[K, V]
	keys  l2.ResourceKeys
	snap  atomic.Pointer[resourceSnapshot[K, V]]
	ready chan struct{}
	once  sync.Once
	kick  chan struct{}
	mu    sync.Mutex // one check or load at a time

	loads, loadErrors, redisErrors, fetched atomic.Uint64
}

// resourceSnapshot is one version of a data set, as served.
type resourceSnapshot[K comparable, V any] struct {
	m       map[K]V
	version string // "" if loaded while Redis was unreachable
	at      time.Time
}

// resourceNS is the namespace of resource announcements on the bus: it
// starts with NUL, which user namespaces cannot.
const resourceNS = "\x00res"

// NewResource returns the resource cfg describes on node n, and starts
// loading it in the background: Get answers false until the first data set
// arrives (Wait waits for it). Closing the node stops it.
func NewResource[K comparable, V any](n *Node, cfg ResourceConfig[K, V]) (*Resource[K, V], error) {
	switch {
	case n == nil:
		return nil, fmt.Errorf("%w: nil Node", ErrConfig)
	case cfg.Name == "" || len(cfg.Name) > maxResourceNameBytes || strings.ContainsAny(cfg.Name, "{}"):
		return nil, fmt.Errorf("%w: resource name %q: 1 to %d bytes, without '{' or '}'", ErrConfig, cfg.Name, maxResourceNameBytes)
	case cfg.Load == nil:
		return nil, fmt.Errorf("%w: nil Load", ErrConfig)
	case cfg.ReloadEvery <= 0:
		return nil, fmt.Errorf("%w: ReloadEvery %v must be positive", ErrConfig, cfg.ReloadEvery)
	case cfg.TTL < 0 && cfg.TTL != NoExpiry, cfg.LoadTimeout < 0, cfg.ChunkBytes < 0, cfg.MaxBytes < 0, cfg.RetryAfter < 0:
		return nil, fmt.Errorf("%w: negative TTL, LoadTimeout, ChunkBytes, MaxBytes or RetryAfter", ErrConfig)
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = min(max(cfg.ReloadEvery/10, 100*time.Millisecond), 10*time.Second)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * cfg.ReloadEvery
	}
	if cfg.TTL != NoExpiry && cfg.TTL < cfg.ReloadEvery {
		return nil, fmt.Errorf("%w: TTL %v is shorter than ReloadEvery %v", ErrConfig, cfg.TTL, cfg.ReloadEvery)
	}
	if cfg.LoadTimeout == 0 {
		cfg.LoadTimeout = DefaultResourceLoadTimeout
	}
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = DefaultResourceChunkBytes
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultResourceMaxBytes
	}
	if cfg.Codec == nil {
		cfg.Codec = CBOR[map[K]V]{}
	}
	r := &Resource[K, V]{
		node:  n,
		cfg:   cfg,
		keys:  l2.ResourceKeysFor(n.cfg.Prefix, cfg.Name),
		ready: make(chan struct{}),
		kick:  make(chan struct{}, 1),
	}
	if err := n.registerResource(cfg.Name, r); err != nil {
		return nil, err
	}
	if !n.spawn(r.run) {
		return nil, ErrClosed
	}
	return r, nil
}

// Get returns the value of k in the current data set. It takes no lock,
// allocates nothing and never waits.
func (r *Resource[K, V]) Get(k K) (V, bool) {
	s := r.snap.Load()
	if s == nil {
		var zero V
		return zero, false
	}
	v, ok := s.m[k]
	return v, ok
}

// All iterates over the current data set: one version, whole, even if a
// newer one arrives meanwhile.
func (r *Resource[K, V]) All() iter.Seq2[K, V] {
	s := r.snap.Load()
	return func(yield func(K, V) bool) {
		if s == nil {
			return
		}
		for k, v := range s.m {
			if !yield(k, v) {
				return
			}
		}
	}
}

// Len returns the size of the current data set.
func (r *Resource[K, V]) Len() int {
	if s := r.snap.Load(); s != nil {
		return len(s.m)
	}
	return 0
}

// Wait returns when the first data set has arrived, or ctx's error.
func (r *Resource[K, V]) Wait(ctx context.Context) error {
	select {
	case <-r.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Refill loads the data set from the source now, stores it and announces
// it to the fleet, and returns when this node serves it: for a periodic
// job, or after a write to the source (every node then reloads, with the
// bound of an invalidation: each swaps the new data set in as soon as it
// hears of it). If another node is loading, Refill waits for that load
// instead. A failed load is returned, and the last good data set stays.
func (r *Resource[K, V]) Refill(ctx context.Context) error {
	for {
		if r.node.isClosed() {
			return ErrClosed
		}
		err := r.update(ctx, true)
		if !errors.Is(err, errResourceBusy) {
			return err
		}
		// Another node holds the claim: poll until its load ends.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(maxPoll):
		}
	}
}

// Invalidate says that the source changed: it is Refill, for a write path.
func (r *Resource[K, V]) Invalidate(ctx context.Context) error { return r.Refill(ctx) }

// ResourceStats is a snapshot of a Resource's state and counters on this
// node.
type ResourceStats struct {
	// Name is the resource's.
	Name string
	// Version names the data set served ("" before the first, or for one
	// loaded while Redis was unreachable); Entries is its size; LoadedAt
	// is when this node swapped it in.
	Version  string
	Entries  int
	LoadedAt time.Time
	// Loads counts successful loads from the source on this node,
	// LoadErrors the failed ones, RedisErrors the Redis operations that
	// failed, Fetched the data sets taken from Redis.
	Loads, LoadErrors, RedisErrors, Fetched uint64
}

// Stats returns the resource's state and counters on this node.
func (r *Resource[K, V]) Stats() ResourceStats {
	st := ResourceStats{Name: r.cfg.Name, Loads: r.loads.Load(), LoadErrors: r.loadErrors.Load(), RedisErrors: r.redisErrors.Load(), Fetched: r.fetched.Load()}
	if s := r.snap.Load(); s != nil {
		st.Version, st.Entries, st.LoadedAt = s.version, len(s.m), s.at
	}
	return st
}

// notify asks the background loop to check the resource now.
func (r *Resource[K, V]) notify() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run checks the resource at once, then every ReloadEvery/4 (with jitter)
// and whenever the bus says it changed, until the node closes.
func (r *Resource[K, V]) run() { r.loop(0) }

// loop is run, its first check after first. A callback that ends the
// loop's goroutine (runtime.Goexit in Load or the Codec, as t.FailNow
// does), or a panic that gets past the callbacks' guards, does not end the
// resource's checks: unless the node is closing, a new loop takes over,
// its first check a period later, so that such a callback is not called in
// a tight loop.
func (r *Resource[K, V]) loop(first time.Duration) {
	n := r.node
	every := max(r.cfg.ReloadEvery/4, 10*time.Millisecond)
	exited := true
	defer func() { n.takeOver(exited, "reloads a resource", func() { r.loop(every) }, "resource", r.cfg.Name) }()
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-n.life.Done():
			exited = false
			return
		case <-t.C:
		case <-r.kick:
		}
		r.check()
		t.Reset(time.Duration(float64(every) * (0.9 + 0.2*rand.Float64())))
	}
}

// check is one check of loop's, bounded by the time a load and its Redis
// operations may take.
func (r *Resource[K, V]) check() {
	ctx, cancel := context.WithTimeout(r.node.life, r.cfg.LoadTimeout+4*r.node.cfg.RedisTimeout)
	defer cancel()
	_ = r.update(ctx, false)
}

// errResourceBusy says another node holds the resource's claim.
var errResourceBusy = errors.New("tier: another node is loading the resource")

// update brings the node's data set up to date: it takes a newer version
// from Redis, and loads from the source if the data set is due (or force),
// unless another node is loading it (errResourceBusy).
func (r *Resource[K, V]) update(ctx context.Context, force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.node
	st, err := n.store.ReadResourceState(ctx, r.keys)
	if err != nil {
		r.redisFailed("read", err)
		// Redis is unreachable: serve from the source, once a period.
		if s := r.snap.Load(); s == nil || force || time.Since(s.at) >= r.cfg.ReloadEvery {
			return r.loadLocal(ctx)
		}
		return err
	}
	if st.Err != nil {
		n.log.Warn("tiercache: resource meta in redis does not parse; loading again", "resource", r.cfg.Name, "reason", st.Err)
	}
	if cur := r.snap.Load(); st.Present && (cur == nil || cur.version != st.Meta.Version) {
		if err := r.fetch(ctx, st.Meta); err != nil && !errors.Is(err, l2.ErrResourceMoved) {
			return err
		}
	}
	switch {
	case st.Claimed:
		return errResourceBusy
	case st.Present && st.Fresh && !force:
		return nil
	}
	return r.loadAndStore(ctx, force)
}

// fetch takes version m of the data set from Redis.
func (r *Resource[K, V]) fetch(ctx context.Context, m l2.ResourceMeta) error {
	start := time.Now()
	b, err := r.node.store.ReadResource(ctx, r.keys, m)
	if err != nil {
		if !errors.Is(err, l2.ErrResourceMoved) {
			r.redisFailed("read", err)
		}
		return err
	}
	data, err := r.decode(b)
	if err != nil {
		r.node.log.Warn("tiercache: resource in redis does not decode; loading again", "resource", r.cfg.Name, "reason", err)
		return l2.ErrResourceMoved
	}
	r.fetched.Add(1)
	r.swap(data, m.Version)
	r.record(ResourceFetched, time.Since(start))
	return nil
}

// loadAndStore claims the load, loads from the source, stores the result
// under a new version and announces it. Unless force, a data set another
// node stored between this node's read of the state and its claim is taken
// instead of loading again.
func (r *Resource[K, V]) loadAndStore(ctx context.Context, force bool) error {
	n := r.node
	token := n.token()
	ok, err := n.store.ClaimResource(ctx, r.keys, token, r.cfg.LoadTimeout+n.cfg.RedisTimeout)
	switch {
	case err != nil:
		r.redisFailed("claim", err)
		return r.loadLocal(ctx)
	case !ok:
		return errResourceBusy
	}
	returned := false
	defer func() {
		if !returned {
			// A callback ended the goroutine: give the claim up, as a failed
			// load does, rather than leave the fleet waiting for it to lapse.
			r.release(ctx, token, r.cfg.RetryAfter)
		}
	}()
	err = r.loadClaimed(ctx, token, force)
	returned = true
	return err
}

// release gives up the resource's claim, for after to come (0: at once).
func (r *Resource[K, V]) release(ctx context.Context, token string, after time.Duration) {
	if err := r.node.store.ReleaseResource(context.WithoutCancel(ctx), r.keys, token, after); err != nil {
		r.redisFailed("release", err)
	}
}

// loadClaimed is loadAndStore once the claim, token, is this node's.
func (r *Resource[K, V]) loadClaimed(ctx context.Context, token string, force bool) error {
	n := r.node
	if !force {
		if st, err := n.store.ReadResourceState(ctx, r.keys); err == nil && st.Present && st.Fresh {
			r.release(ctx, token, 0)
			if cur := r.snap.Load(); cur == nil || cur.version != st.Meta.Version {
				return r.fetch(ctx, st.Meta)
			}
			return nil
		}
	}
	start := time.Now()
	data, b, err := r.loadEncoded(ctx)
	if err != nil {
		r.failed(err, start)
		// The fleet leaves the source alone a while.
		r.release(ctx, token, r.cfg.RetryAfter)
		return err
	}
	ttl := r.cfg.TTL
	if ttl == NoExpiry {
		ttl = 0
	}
	m, stored, err := n.store.StoreResource(context.WithoutCancel(ctx), r.keys, token, b, r.cfg.ChunkBytes, ttl, r.cfg.ReloadEvery)
	r.loads.Add(1)
	r.swap(data, m.Version)
	r.record(ResourceLoaded, time.Since(start))
	switch {
	case err != nil:
		r.redisFailed("store", err)
		return err
	case stored:
		// Every node reads it when it hears of it.
		if err := n.publish(ctx, []bus.Op{{Namespace: resourceNS, Key: r.cfg.Name}}); err != nil {
			r.redisFailed("announce", err)
		}
	}
	return nil
}

// loadLocal loads from the source for this node alone: Redis is
// unreachable.
func (r *Resource[K, V]) loadLocal(ctx context.Context) error {
	start := time.Now()
	data, _, err := r.loadEncoded(ctx)
	if err != nil {
		r.failed(err, start)
		return err
	}
	r.loads.Add(1)
	r.swap(data, "")
	r.record(ResourceLoaded, time.Since(start))
	return nil
}

// loadEncoded calls Load (bounded by LoadTimeout; a panic an error) and
// encodes its result: the data set as the codec gives it back, the very
// one every node serves (R39), and its bytes.
func (r *Resource[K, V]) loadEncoded(ctx context.Context) (map[K]V, []byte, error) {
	lctx, cancel := context.WithTimeout(ctx, r.cfg.LoadTimeout)
	defer cancel()
	start, returned := time.Now(), false
	defer func() {
		if !returned { // a callback ended the goroutine: a failed load
			r.failed(errLoadExited, start)
		}
	}()
	data, b, err := r.loadEncodedOnce(lctx)
	returned = true
	return data, b, err
}

// loadEncodedOnce is loadEncoded under lctx, LoadTimeout's bound.
func (r *Resource[K, V]) loadEncodedOnce(lctx context.Context) (map[K]V, []byte, error) {
	data, err := guarded(r.node, "Resource.Load", r.cfg.Name, func() (map[K]V, error) { return r.cfg.Load(lctx) })
	if err != nil {
		return nil, nil, err
	}
	if len(data) == 0 && !r.cfg.AllowEmpty {
		return nil, nil, fmt.Errorf("tier: resource %q: Load returned no entries (ResourceConfig.AllowEmpty accepts that)", r.cfg.Name)
	}
	if data == nil {
		data = map[K]V{}
	}
	b, err := guarded(r.node, "Resource Codec.Encode", r.cfg.Name, func() ([]byte, error) { return r.cfg.Codec.Encode(data) })
	if err != nil {
		return nil, nil, err
	}
	if len(b) > r.cfg.MaxBytes {
		return nil, nil, fmt.Errorf("%w: resource %q encodes to %d bytes, limit %d (ResourceConfig.MaxBytes)", ErrValueTooLarge, r.cfg.Name, len(b), r.cfg.MaxBytes)
	}
	decoded, err := r.decode(b)
	if err != nil {
		return nil, nil, err
	}
	return decoded, b, nil
}

// decode decodes a stored data set; a panic is an error.
func (r *Resource[K, V]) decode(b []byte) (map[K]V, error) {
	m, err := guarded(r.node, "Resource Codec.Decode", r.cfg.Name, func() (map[K]V, error) { return r.cfg.Codec.Decode(b) })
	if err == nil && m == nil {
		m = map[K]V{}
	}
	return m, err
}

// swap serves data as the current data set.
func (r *Resource[K, V]) swap(data map[K]V, version string) {
	r.snap.Store(&resourceSnapshot[K, V]{m: data, version: version, at: time.Now()})
	r.once.Do(func() { close(r.ready) })
}

// failed counts and logs a failed load.
func (r *Resource[K, V]) failed(err error, start time.Time) {
	r.loadErrors.Add(1)
	r.record(ResourceLoadError, time.Since(start))
	r.node.log.Warn("tiercache: resource load failed; serving the last good data", "resource", r.cfg.Name, "reason", err)
}

// redisFailed counts a failed Redis operation of the resource.
func (r *Resource[K, V]) redisFailed(op string, err error) {
	r.redisErrors.Add(1)
	r.record(ResourceRedisError, 0)
	r.node.redisFailed("", "resource "+op, err)
}

func (r *Resource[K, V]) record(e ResourceEvent, d time.Duration) {
	if rec := r.node.rec; rec != nil {
		rec.Resource(r.cfg.Name, e, d)
	}
}

// resourcer is the part of a Resource that the node drives.
type resourcer interface {
	notify()
	Refill(ctx context.Context) error
}

// registerResource registers r under name: one Resource per name.
func (n *Node) registerResource(name string, r resourcer) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.resources[name] != nil {
		return fmt.Errorf("%w: resource %q already exists on this node", ErrConfig, name)
	}
	if n.resources == nil {
		n.resources = make(map[string]resourcer)
	}
	n.resources[name] = r
	return nil
}

// notifyResources asks resources to check themselves now: name's, or every
// one if name is "".
func (n *Node) notifyResources(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for rn, r := range n.resources {
		if name == "" || rn == name {
			r.notify()
		}
	}
}

// RefillResources refills every Resource of the node (see
// Resource.Refill), for a periodic job; it returns their errors joined.
func (n *Node) RefillResources(ctx context.Context) error {
	n.mu.Lock()
	rs := make([]resourcer, 0, len(n.resources))
	for _, r := range n.resources {
		rs = append(rs, r)
	}
	n.mu.Unlock()
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Refill(ctx))
	}
	return errors.Join(errs...)
}
