package l1

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/tiercache/tiercache/consistency"
)

// DefaultMaxBytes is the budget a [Config] with MaxBytes zero gets: 64 MiB.
const DefaultMaxBytes = 64 << 20

// Tick is the resolution of the coarse clock (Cache.Now), which a ticker
// advances for callers' freshness hints. Lifetimes and the lease are checked
// against the monotonic clock at every hit; every lifetime is still rounded
// down by one Tick.
const Tick = 10 * time.Millisecond

// ErrConfig reports an invalid [Config].
var ErrConfig = errors.New("l1: invalid config")

// Config configures a [Cache].
type Config struct {
	// MaxBytes bounds the memory the cache accounts for, in bytes: the costs
	// passed to Fill plus ristretto's own per-entry overhead. Zero means
	// DefaultMaxBytes; negative is an error.
	MaxBytes int64
	// Epochs is the node's fill-epoch table, shared with whatever bumps it.
	// Nil means a private table.
	Epochs *consistency.Epochs
	// Hooks, when non-nil, is called around the ristretto Set of every fill,
	// to let tests drive R13's interleavings. Nil in production.
	Hooks *Hooks
	// Leased makes the cache serve only while a lease granted by Renew
	// runs: a node whose invalidation bus cannot prove it fresh serves
	// nothing from L1. False: the cache always serves.
	Leased bool
}

// Hooks are test-only interleaving points of [Cache.Fill].
type Hooks struct {
	// BeforeSet runs after the first ticket check and before the Set.
	BeforeSet func(h uint64)
	// AfterSet runs after the Set and before the second ticket check.
	AfterSet func(h uint64)
	// BeforePutBack runs on ristretto's goroutine when a fill of h that
	// ristretto refused is about to be put back, after the check that it is
	// later than the value held.
	BeforePutBack func(h uint64)
	// NoFence disables every ticket check: the negative control of R13.
	NoFence bool
	// CoarseLease checks the lease against the coarse clock, as the cache
	// once did: a process resumed after a pause serves entries under a
	// lease that ran out while it slept, until the ticker catches up. The
	// negative control of R40; also the baseline of the hit benchmark.
	CoarseLease bool
}

// Entry is what the cache keeps of a value besides the value itself: the
// fill ticket it was stored under, its lifetime, and its place in the order
// of fills. A value's type embeds Entry as its first field and is stored
// and read through a [Slot] of that type, so that an entry is one
// allocation, the caller's: ristretto holds a pointer to it (it copies
// values on every Get). The zero Entry is ready for Slot.Fill, which sets
// it; the caller must not copy an Entry once filled.
type Entry struct {
	ticket   consistency.Ticket
	filled   int64 // clock reading at the fill
	deadline int64 // clock reading at which it expires
	seq      uint64
	owner    *slotID // the Slot that filled it
	cost     uint32  // bytes, as given to Fill (capped)

	// Flags are the caller's: bits it sets and tests atomically, kept here
	// where they fill the Entry's last word.
	Flags atomic.Uint32
}

// slotID tells one Slot's entries from another's. It has a size, so that
// no two have one address.
type slotID struct{ _ byte }

// Slot stores values of one type T in a Cache, and reads back only those it
// stored: T is a struct whose first field is an embedded Entry (NewSlot
// checks). Each Slot's entries are its own; a Cache holds the entries of
// any number of Slots, under one budget, and Evict and EvictAll reach them
// all.
type Slot[T any] struct {
	c  *Cache
	id slotID
}

// ErrSlotType reports a type that NewSlot cannot store: not a struct whose
// first field is an embedded l1.Entry.
var ErrSlotType = errors.New("l1: a Slot's type must be a struct whose first field is an embedded l1.Entry")

// NewSlot returns a Slot of c for values of type T, or ErrSlotType.
func NewSlot[T any](c *Cache) (*Slot[T], error) {
	t := reflect.TypeFor[T]()
	if t.Kind() != reflect.Struct || t.NumField() == 0 {
		return nil, fmt.Errorf("%w: %v", ErrSlotType, t)
	}
	if f := t.Field(0); !f.Anonymous || f.Type != reflect.TypeFor[Entry]() || f.Offset != 0 {
		return nil, fmt.Errorf("%w: %v", ErrSlotType, t)
	}
	return &Slot[T]{c: c}, nil
}

// entry returns v's Entry: its first field.
func entryOf[T any](v *T) *Entry { return (*Entry)(unsafe.Pointer(v)) }

// value returns the T whose Entry e is, if this Slot filled it. The check
// of the owner is what makes the conversion sound: only this Slot's Fill
// sets its id, and it fills values of type T only (NewSlot checked that T
// begins with an Entry, so e is the start of a T).
func (s *Slot[T]) value(e *Entry) (*T, bool) {
	if e.owner != &s.id {
		return nil, false
	}
	return (*T)(unsafe.Pointer(e)), true
}

// Cache is the in-process tier. It is safe for concurrent use.
type Cache struct {
	rc     *ristretto.Cache[uint64, *Entry]
	boxes  *Slot[boxed] // Fill's and Get's
	epochs *consistency.Epochs
	hooks  *Hooks

	start     time.Time     // origin of the coarse clock; monotonic
	now       atomic.Int64  // coarse clock: nanoseconds since start, at most Tick behind
	lease     atomic.Int64  // clock reading until which the cache may serve
	seq       atomic.Uint64 // numbers fills, so that the last of a key wins
	evictions atomic.Uint64 // entries the cost policy or expiry removed
	stop      chan struct{}
	done      sync.WaitGroup

	closed atomic.Bool
}

// New returns a Cache with the given config.
func New(cfg Config) (*Cache, error) {
	maxBytes := cfg.MaxBytes
	switch {
	case maxBytes < 0:
		return nil, fmt.Errorf("%w: MaxBytes %d is negative", ErrConfig, maxBytes)
	case maxBytes == 0:
		maxBytes = DefaultMaxBytes
	}
	// ristretto wants about ten counters per entry it will hold; assume
	// entries of 1 KiB on average, and keep the table between 16 Ki and
	// 16 Mi counters (a counter costs about 4 bits).
	counters := min(max(maxBytes/1024*10, 1<<14), 1<<24)
	c := &Cache{hooks: cfg.Hooks, start: time.Now(), stop: make(chan struct{})}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *Entry]{
		NumCounters: counters,
		MaxCost:     maxBytes,
		BufferItems: 64,
		// Keys are already 64-bit hashes; collisions are resolved by the
		// caller, which keeps the full key in the value.
		KeyToHash: func(k uint64) (uint64, uint64) { return k, 0 },
		// An entry is replaced only by a later fill, so that a fill put
		// back by onReject never undoes a newer one.
		ShouldUpdate: func(cur, prev *Entry) bool { return cur.seq > prev.seq },
		OnReject:     c.onReject,
		OnEvict:      func(*ristretto.Item[*Entry]) { c.evictions.Add(1) },
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.rc = rc
	c.boxes = &Slot[boxed]{c: c}
	epochs := cfg.Epochs
	if epochs == nil {
		epochs = consistency.NewEpochs(0)
	}
	c.epochs = epochs
	if !cfg.Leased {
		c.lease.Store(math.MaxInt64)
	}
	c.done.Add(1)
	go c.tick()
	return c, nil
}

// tick advances the coarse clock until Close.
func (c *Cache) tick() {
	defer c.done.Done()
	t := time.NewTicker(Tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.now.Store(int64(time.Since(c.start)))
		case <-c.stop:
			return
		}
	}
}

// Ticket returns the ticket a fill of h must take before it reads the value
// it will store.
func (c *Cache) Ticket(h uint64) consistency.Ticket {
	return c.epochs.Ticket(h)
}

// boxed is the entry of a value stored by Cache.Fill: any value, in an
// entry of its own.
type boxed struct {
	Entry
	v any
}

// Fill stores v under h as Slot.Fill does, in an entry of its own: one
// allocation more than a Slot's.
func (c *Cache) Fill(h uint64, v any, cost int64, ttl time.Duration, t consistency.Ticket) bool {
	return c.boxes.Fill(h, &boxed{v: v}, cost, ttl, t)
}

// Get returns the value that Fill stored under h, as Slot.Get does.
func (c *Cache) Get(h uint64) (any, bool) {
	if b, ok := c.boxes.Get(h); ok {
		return b.v, true
	}
	return nil, false
}

// GetHeld returns the value that Fill stored under h, as Slot.GetHeld does.
func (c *Cache) GetHeld(h uint64, maxAge time.Duration) (any, bool) {
	if b, ok := c.boxes.GetHeld(h, maxAge); ok {
		return b.v, true
	}
	return nil, false
}

// Get returns the value this Slot stored under h if the cache's lease
// runs, and the entry is present, unexpired, and was filled under a ticket
// that is still valid.
//
// The lease is checked against the monotonic clock read now, not the coarse
// clock: after the process was paused (SIGSTOP, a stalled VM), readers run
// before the ticker does, and a coarse reading from before the pause would
// let them serve entries invalidated while the process slept (R40).
func (s *Slot[T]) Get(h uint64) (*T, bool) {
	c := s.c
	e, ok := c.rc.Get(h)
	if !ok {
		return nil, false
	}
	if now := c.clock(); now >= e.deadline || now >= c.lease.Load() {
		return nil, false
	}
	if c.epochs.Ticket(h) != e.ticket && !c.noFence() {
		return nil, false
	}
	return s.value(e)
}

// GetHeld returns the value this Slot stored under h, whatever the lease
// and the entry's lifetime, if it was filled at most maxAge ago under a
// ticket that is still valid: no invalidation this node learnt of has
// touched it since. It serves a node that cannot reach Redis and chose to
// answer from what it holds rather than from the source (a degraded mode):
// the caller must report the value as stale.
func (s *Slot[T]) GetHeld(h uint64, maxAge time.Duration) (*T, bool) {
	c := s.c
	e, ok := c.rc.Get(h)
	if !ok || c.clock()-e.filled > int64(maxAge) || !c.valid(h, e.ticket) {
		return nil, false
	}
	return s.value(e)
}

// Fill stores v under h for at most ttl, with the given cost in bytes, if t
// is still valid. It reports whether the value was stored and still valid
// after the Set; ristretto's admission policy may still drop it later. A ttl
// of one Tick or less stores nothing. v's Entry is the Slot's from here on:
// v must not be filled again.
func (s *Slot[T]) Fill(h uint64, v *T, cost int64, ttl time.Duration, t consistency.Ticket) bool {
	c := s.c
	// The coarse clock lags the real one by up to a Tick: give up a Tick of
	// lifetime so that the entry does not outlive ttl.
	if ttl <= Tick || !c.valid(h, t) {
		return false
	}
	now := int64(time.Since(c.start))
	e := entryOf(v)
	e.ticket, e.filled, e.deadline = t, now, now+int64(ttl-Tick)
	e.seq, e.owner, e.cost = c.seq.Add(1), &s.id, uint32(min(max(cost, 0), math.MaxUint32))
	if c.hooks != nil && c.hooks.BeforeSet != nil {
		c.hooks.BeforeSet(h)
	}
	// No ristretto TTL: its Get would read the system clock on every hit.
	// An expired entry is refused by Get and replaced by the next fill.
	c.rc.Set(h, e, cost)
	if c.hooks != nil && c.hooks.AfterSet != nil {
		c.hooks.AfterSet(h)
	}
	if !c.valid(h, t) {
		// An invalidation landed while we stored: Get already refuses the
		// entry (its ticket is stale); delete it to free the memory now. Our
		// Del is queued after our Set, so it cannot be overtaken by it.
		c.rc.Del(h)
		return false
	}
	return true
}

// onReject runs on ristretto's goroutine for each Set its policy refused.
// ristretto applies the Set of a key it does not hold later, from a buffer,
// and refuses a second such Set of the key made before it applied the
// first, which would leave the older value in place. Such a refused fill is
// put back here as a replacement of the value now held; ShouldUpdate keeps
// it from replacing a later fill. A fill refused for want of room finds
// nothing held and stays refused.
func (c *Cache) onReject(it *ristretto.Item[*Entry]) {
	cur, held := c.rc.Get(it.Key)
	if !held || it.Value == nil || cur.seq >= it.Value.seq {
		return
	}
	if c.hooks != nil && c.hooks.BeforePutBack != nil {
		c.hooks.BeforePutBack(it.Key)
	}
	c.rc.Set(it.Key, it.Value, int64(it.Value.cost))
}

// Stats is a snapshot of a Cache's occupancy.
type Stats struct {
	// Cost is what the entries held now cost, of MaxCost. New entries are
	// applied from a buffer, so Cost lags fills a little.
	Cost, MaxCost int64
	// Evictions counts entries removed to make room or because they
	// expired; not those evicted by invalidation.
	Evictions uint64
}

// Stats returns the cache's occupancy.
func (c *Cache) Stats() Stats {
	limit := c.rc.MaxCost()
	return Stats{Cost: limit - c.rc.RemainingCost(), MaxCost: limit, Evictions: c.evictions.Load()}
}

// Evict makes every value filled under a ticket of h's stripe taken so far
// invisible, and deletes the entry at h if ristretto holds one.
func (c *Cache) Evict(h uint64) {
	// Bump first: from here on, whatever a buffered Set makes visible is
	// already refused by Get and GetHeld (R13). The Del only frees memory,
	// so it is skipped for an entry ristretto does not hold: most
	// invalidations a node hears are of keys it does not hold, and a Del
	// costs ristretto a buffered item and a wake of its worker. A Set still
	// buffered lands dead, and its memory goes when the key is filled again
	// or the cost policy evicts it, as after EvictAll. GetTTL looks the key
	// up without counting a read in the admission policy, as Get would.
	c.epochs.Bump(h)
	if _, held := c.rc.GetTTL(h); held {
		c.rc.Del(h)
	}
}

// EvictAll makes every value filled so far invisible, in O(1). The entries
// stay in ristretto, never served, until a fill of the same key replaces
// them or the cost policy evicts them: ristretto's Clear would stop its
// worker and zero its whole sketch, too costly for every loss of the bus.
func (c *Cache) EvictAll() {
	c.epochs.BumpAll()
}

// Renew lets a leased cache serve until ttl after sentAt, less one Tick:
// the moment a ping was sent that has since been answered, proving that
// every invalidation published before it has been applied. If the lease had
// run out (or never ran), everything filled meanwhile is evicted first:
// fills made while the node could not prove itself fresh never serve.
// It reports whether it evicted.
func (c *Cache) Renew(sentAt time.Time, ttl time.Duration) (evicted bool) {
	until := int64(sentAt.Sub(c.start) + ttl - Tick)
	if c.clock() >= c.lease.Load() {
		c.EvictAll()
		evicted = true
	}
	if until > c.lease.Load() {
		c.lease.Store(until)
	}
	return evicted
}

// Revoke ends the lease at once: Get serves nothing until Renew, which
// first evicts everything filled so far. The entries stay valid for
// GetHeld, which a node may serve from while it cannot reach Redis.
func (c *Cache) Revoke() {
	c.lease.Store(0)
}

// Now reads the coarse clock: the time since the cache started, at most a
// Tick behind the monotonic clock. Reading it costs one atomic load.
func (c *Cache) Now() time.Duration { return time.Duration(c.now.Load()) }

// TTL returns the remaining lifetime of the entry at h, whether or not its
// ticket is still valid, and false if there is none or it has expired.
func (c *Cache) TTL(h uint64) (time.Duration, bool) {
	e, ok := c.rc.Get(h)
	if !ok {
		return 0, false
	}
	left := time.Duration(e.deadline) - time.Since(c.start)
	return left, left > 0
}

// Wait blocks until ristretto has applied every buffered write. For tests.
func (c *Cache) Wait() { c.rc.Wait() }

// Close stops the cache's goroutines and ristretto's. The Cache must not be
// used afterwards.
func (c *Cache) Close() {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	close(c.stop)
	c.done.Wait()
	c.rc.Close()
}

// clock reads the clock that lifetimes and the lease are checked against:
// the monotonic clock, in nanoseconds since the cache started.
func (c *Cache) clock() int64 {
	if c.hooks != nil && c.hooks.CoarseLease {
		return c.now.Load()
	}
	return int64(time.Since(c.start))
}

func (c *Cache) valid(h uint64, t consistency.Ticket) bool {
	return c.noFence() || c.epochs.Valid(h, t)
}

func (c *Cache) noFence() bool { return c.hooks != nil && c.hooks.NoFence }
