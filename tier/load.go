package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache/groups"
	"github.com/tiercache/tiercache/l2"
)

// loadMode says what a load is for.
type loadMode uint8

const (
	// modeGet: a caller waits; stale values are served as Config allows.
	modeGet loadMode = iota
	// modeRevalidate: in the background, after a stale L1 hit. It never
	// settles for a stale value: it refreshes, or waits for whoever does,
	// so that L1 gets the new value.
	modeRevalidate
	// modeRefresh: the Refresh option. It claims even a fresh value, and
	// waits for the claimant's value if someone else is fetching.
	modeRefresh
	// modeEarly: an early refresh in the background. It claims even a
	// fresh value, and gives up if someone else is fetching.
	modeEarly
)

// maxPoll bounds the interval between a waiting load's reads of a key that
// another claimant holds. Waiters are woken by a message when the claimant
// finishes (see wakers); polling covers a lost message and an expired flag.
const maxPoll = 64 * time.Millisecond

// staleValue is a value found in Redis that a load may serve as stale.
type staleValue[V any] struct {
	v      V
	size   int
	left   time.Duration // its remaining lifetime in Redis; <0: none
	groups []string
}

// errThrottled ends a background refresh of a key marked failing.
var errThrottled = errors.New("tier: key is failing; refresh throttled")

func (c *Cache[K, V]) getSlow(ctx context.Context, key K, mode loadMode) (V, ReadInfo, error) {
	var zero V
	s, h, err := c.keys.resolve(key)
	if err != nil {
		return zero, ReadInfo{}, fmt.Errorf("tier get: %w", err)
	}
	if mode == modeRefresh {
		// Never join a flight that began earlier: it may answer with the
		// very value being refreshed.
		if err := ctx.Err(); err != nil {
			return zero, ReadInfo{}, err
		}
		if c.node.isClosed() {
			return zero, ReadInfo{}, ErrClosed
		}
		r, err := c.load(ctx, key, s, h, mode)
		return r.v, r.ri, err
	}
	var peekErr error
	if c.peeks(ctx, h, mode) && !c.flights.has(s) {
		out, err, how := c.peek(ctx, key, s, h)
		switch how {
		case peekAnswered:
			return out.v, out.ri, err
		case peekFailed:
			peekErr = err
		}
	}
	r, shared, err := c.flights.do(ctx, c.node, s, func(ctx context.Context) (loaded[V], error) {
		if peekErr != nil {
			// Redis just failed this caller's read: do not wait for it
			// a second time.
			f := c.node.fence(h)
			return c.withoutRedis(ctx, key, s, h, f, nil, mode, peekErr)
		}
		return c.load(ctx, key, s, h, mode)
	})
	r.ri.Shared = shared
	return r.v, r.ri, err
}

// peeked is what peek leaves a Get to do.
type peeked uint8

const (
	// peekMissed: load, in a flight.
	peekMissed peeked = iota
	// peekAnswered: peek's answer is the Get's.
	peekAnswered
	// peekFailed: Redis failed (the error is recorded): answer without it.
	peekFailed
)

// peeks reports whether a Get of the key hashed h may try peek first: a
// plain Get (not a refresh) of a key that Redis likely holds (presence:
// else the read script claims in the same round trip), of a Cache without
// Config.Groups, whose entries are in the fleet's and the namespace's
// groups only, which peek reads with the value (an entry in groups of its
// own would cost a second round trip, where the read script costs one), by
// a caller that waits at least RedisTimeout. A caller that gives up sooner
// leaves its read to a flight, which runs it to the end and tells the
// breaker how it went.
func (c *Cache[K, V]) peeks(ctx context.Context, h uint64, mode loadMode) bool {
	if mode != modeGet || c.groupFn != nil || !c.node.present.has(h) || c.node.isClosed() {
		return false
	}
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > c.node.cfg.RedisTimeout
}

// peek answers a Get from Redis without a script or a flight, in the
// caller's goroutine, when Redis holds a value it can trust at once
// (l2.Store.Peek: a plain MGET of the value and the stamps of the fleet's
// and the namespace's groups). Anything else is left to a flight's load:
// a miss, a value that is stale, due for a refresh, corrupt, of an earlier
// version, or blocked by a pending write (peekMissed); an error of
// Redis's, returned with peekFailed.
func (c *Cache[K, V]) peek(ctx context.Context, key K, s string, h uint64) (loaded[V], error, peeked) {
	n := c.node
	// Taken before the read, as by load (R12, R13).
	f := n.fence(h)
	if n.pending.blocks(c.ns, s, nil) {
		return loaded[V]{}, nil, peekMissed
	}
	keys := l2.KeysFor(n.cfg.Prefix, c.ns, s)
	start := time.Now()
	r, hit, err := n.store.Peek(ctx, keys, c.known, l2.Claim{Below: c.z.below})
	if n.hooks != nil && n.hooks.AfterRead != nil {
		n.hooks.AfterRead(s)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return loaded[V]{}, ctx.Err(), peekAnswered
	case err != nil:
		n.redisFailed(c.ns, "read", err)
		return loaded[V]{}, err, peekFailed
	case !hit:
		return loaded[V]{}, nil, peekMissed
	}
	out, ok, err := c.settlePeeked(ctx, key, s, h, keys, f, r, start)
	if !ok {
		return loaded[V]{}, nil, peekMissed
	}
	return out, err, peekAnswered
}

// settlePeeked settles a hit that l2.Store.Peek read at start, as settle
// settles any hit, and reports whether that answers the read. What it
// cannot answer (a corrupt value, another key's, one of its groups pending)
// is left to the read script, which removes and counts a corrupt value:
// for settle, it is as if seen once already.
func (c *Cache[K, V]) settlePeeked(ctx context.Context, key K, s string, h uint64, keys l2.Keys, f fence, r l2.Read, start time.Time) (loaded[V], bool, error) {
	st := readState[V]{corrupt: true}
	next, out, err := c.settle(ctx, key, s, h, keys, "", f, r, start, modeGet, &st)
	return out, next == stepDone, err
}

// load reads L2 or claims, then fetches and fills, or waits for another
// claimant; with the freshness settings, it serves or refreshes stale
// values as mode allows.
func (c *Cache[K, V]) load(ctx context.Context, key K, s string, h uint64, mode loadMode) (loaded[V], error) {
	n := c.node
	// The ticket is taken before anything is read: an invalidation this
	// node learns of from here on refuses the L1 fill (R12, R13).
	f := n.fence(h)
	if n.pending.blocks(c.ns, s, nil) {
		// This node invalidated the key while Redis was unreachable, and
		// the invalidation has not landed yet: Redis may hold the old value.
		// What the degraded mode holds was fetched after the invalidation.
		return c.withoutRedis(ctx, key, s, h, f, nil, mode, errPendingWrite)
	}
	keys := l2.KeysFor(n.cfg.Prefix, c.ns, s)
	// Redis operations outlive the flight's waiters (each is bounded by
	// RedisTimeout): if callers give up before Redis answers, the outcome
	// still reaches the breaker, which otherwise would never learn that
	// Redis is unreachable from callers with short deadlines.
	rctx := context.WithoutCancel(ctx)
	claim := l2.Claim{Below: c.z.below, Always: mode == modeRefresh || mode == modeEarly}
	var (
		waitUntil time.Time
		backoff   = time.Millisecond
		st        readState[V]
	)
	for {
		token := n.token()
		start := time.Now()
		r, err := c.readOrClaim(rctx, keys, token, claim)
		if n.hooks != nil && n.hooks.AfterRead != nil {
			n.hooks.AfterRead(s)
		}
		if err != nil {
			if ctx.Err() != nil {
				return loaded[V]{}, ctx.Err()
			}
			n.redisFailed(c.ns, "read", err)
			return c.withoutRedis(ctx, key, s, h, f, st.old, mode, err)
		}
		next, out, err := c.settleHolding(ctx, key, s, h, keys, token, f, r, start, mode, &st)
		switch next {
		case stepDone:
			return out, err
		case stepFetch:
			return c.fetchAndFill(ctx, key, s, h, keys, token, r.Clock, f, st.fallback)
		case stepUncached:
			return c.fetchUncached(ctx, key, st.fallback)
		case stepAgain:
			continue
		}
		// Another claimant is fetching. Wait for its value (not for a
		// claim of our own: a Refresh takes the value it is fetching),
		// bounded by our flag TTL (if its flag expires we claim on the
		// next round: R08) and by ctx; then fetch without caching. Never a
		// second fill.
		claim.Always = false
		if waitUntil.IsZero() {
			c.m.waits.Add(1)
			waitUntil = start.Add(n.cfg.FlagTTL)
		}
		if !time.Now().Before(waitUntil) {
			c.m.waited(WakeGaveUp, waitUntil.Add(-n.cfg.FlagTTL))
			return c.fetchUncached(ctx, key, st.old)
		}
		// Registered before the hook, so that a test holding the claimant
		// until the hook runs knows this wait will see the wake.
		woken := n.wakers.add(keys.Value)
		if n.hooks != nil && n.hooks.OnBusy != nil {
			n.hooks.OnBusy(s)
		}
		d := min(backoff, time.Until(waitUntil))
		if n.hooks != nil && n.hooks.NoPoll {
			d = time.Until(waitUntil)
		}
		began := c.m.start()
		ok, err := n.wakers.wait(ctx, keys.Value, woken, d)
		switch {
		case err != nil:
			c.m.waited(WakeCanceled, began)
			return loaded[V]{}, err
		case ok:
			c.m.waited(WakeMessage, began)
		default:
			c.m.waited(WakePoll, began)
		}
		backoff = min(2*backoff, maxPoll)
	}
}

// fromHeld answers a Get that cannot reach Redis from the entry this
// node's L1 holds for key, in the degraded mode of NodeConfig.OutageMaxAge:
// an entry filled at most that long ago, which no invalidation this node
// learnt of has touched. Background refreshes never take it.
func (c *Cache[K, V]) fromHeld(key K, h uint64, mode loadMode) (loaded[V], bool) {
	n := c.node
	if n.cfg.OutageMaxAge <= 0 || mode != modeGet || c.l1TTL <= 0 {
		return loaded[V]{}, false
	}
	e, ok := c.slot.GetHeld(h, n.cfg.OutageMaxAge)
	if !ok || e.key != key || e.negative() || !groupsValid(*e.groups) {
		return loaded[V]{}, false
	}
	c.m.outageServed.Add(1)
	return loaded[V]{v: e.val, ri: ReadInfo{Source: SourceL1, Stale: true}}, true
}

// errPendingWrite is why a load of a key that this node invalidated while
// Redis was unreachable does not read Redis.
var errPendingWrite = errors.New("a write of this node's is not in Redis yet")

// withoutRedis answers a load that cannot use Redis (for cause): in the
// degraded mode of NodeConfig.OutageMaxAge from what L1 holds, as stale
// (fromHeld); else from the source, as fetchUncached, keeping what it
// fetched for fromHeld in that mode (see hold).
func (c *Cache[K, V]) withoutRedis(ctx context.Context, key K, s string, h uint64, f fence, old *staleValue[V], mode loadMode, cause error) (loaded[V], error) {
	if out, ok := c.fromHeld(key, h, mode); ok {
		return out, fmt.Errorf("%w: %w: %w", ErrStale, ErrUnreachable, cause)
	}
	out, err := c.fetchUncached(ctx, key, old)
	if err == nil && c.node.cfg.OutageMaxAge > 0 && mode == modeGet {
		out.v = c.hold(key, s, h, out.v, f)
	}
	return out, err
}

// hold keeps v, fetched from the source while Redis is unreachable, in L1
// for the degraded mode of NodeConfig.OutageMaxAge: Get does not serve it
// (the lease is off while Redis is unreachable, and its renewal evicts
// whatever was filled meanwhile), only fromHeld, so that an outage does
// not send every read of a key to the source. It returns v as the codec
// gives it back, the value every node serves (R39).
func (c *Cache[K, V]) hold(key K, s string, h uint64, v V, f fence) V {
	gs, err := c.groupsOf(key, v)
	if err != nil {
		return v
	}
	env, d, err := c.encodeCopy(s, v)
	if err != nil {
		return v
	}
	c.fillL1(h, key, d, len(env), c.l1TTL, 0, f, gs)
	// ristretto applies a new key's Set later, from a buffer; until then,
	// every read of the key would go to the source again. During an
	// outage, waiting for it costs far less than a fetch.
	c.node.l1.Wait()
	return d
}

// step is what one read of Redis leaves a load to do.
type step uint8

const (
	// stepDone: answered (a value, a cached "not found", or an error).
	stepDone step = iota
	// stepFetch: the key is claimed: fetch and fill, falling back on
	// readState.fallback if the fetch fails.
	stepFetch
	// stepUncached: fetch without caching, falling back on
	// readState.fallback if the fetch fails.
	stepUncached
	// stepWait: another claimant is fetching: wait, then read again.
	stepWait
	// stepAgain: a corrupt value was removed: read again at once.
	stepAgain
)

// readState is what a load carries from one read of Redis to the next.
type readState[V any] struct {
	corrupt  bool           // a corrupt value was removed once already
	old      *staleValue[V] // a value seen while waiting, for fail-safe
	fallback *staleValue[V] // for stepFetch and stepUncached
}

// settle decides what one read of Redis, r, means for key: a value to
// return (fresh, stale as mode and Config allow, or a cached "not found"),
// a claim to fetch under, a fetch without caching, a wait, or a read again.
// It fills L1 from a fresh value and starts background refreshes, but never
// calls the source itself, so that GetMany can batch what it leaves.
func (c *Cache[K, V]) settle(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, f fence, r l2.Read, start time.Time, mode loadMode, st *readState[V]) (step, loaded[V], error) {
	n := c.node
	st.fallback = nil
	if r.Stale {
		c.m.groupStale.Add(1)
	}
	claimed := holdsClaim(r)
	var (
		cur *staleValue[V] // the value Redis holds, if any, unless a Hit
		hit staleValue[V]  // the value of a Hit
	)
	if r.State == l2.Hit || r.State == l2.StaleClaimed || r.State == l2.StaleBusy {
		n.present.mark(h)
		if n.pending.blocksSince(f.landed, c.ns, s, r.Groups) {
			// One of its groups was invalidated here while Redis was
			// unreachable, and that had not landed when the read began.
			if claimed {
				c.release(ctx, keys, token)
			}
			return stepUncached, loaded[V]{}, nil
		}
		left := r.TTL
		if left >= 0 {
			// Measured from before the request, so that L1 never outlives
			// the L2 entry it came from (R24).
			left = max(left-time.Since(start), 0)
		}
		switch {
		case r.Negative && r.State == l2.Hit:
			c.fillNegativeL1(h, key, left, f, r.Groups)
			return stepDone, loaded[V]{ri: ReadInfo{Source: SourceL2, Negative: true}}, errCachedNotFound
		case r.Negative:
			// A refresh claimed a cached "not found": fetch as for a miss.
		default:
			v, size, err := c.decode(s, r.Value)
			switch {
			case err == nil:
				if r.State == l2.Hit {
					// Used here only: kept off the heap.
					hit = staleValue[V]{v: v, size: size, left: left, groups: r.Groups}
				} else {
					cur = &staleValue[V]{v: v, size: size, left: left, groups: r.Groups}
				}
			case errors.Is(err, errKeyMismatch):
				// Another long key with the same 128-bit hash owns the slot.
				if claimed {
					c.release(ctx, keys, token)
				}
				return stepUncached, loaded[V]{}, nil
			case claimed:
				// Ours to overwrite: fetch and fill as for a miss.
			case st.corrupt:
				// Corrupt again after one removal: do not loop.
				return stepUncached, loaded[V]{}, nil
			default:
				st.corrupt = true
				c.m.corrupt.Add(1)
				n.log.Warn("tiercache: undecodable value in redis; removing it", "namespace", c.ns, "err", err)
				if err := n.store.DeleteIfEqual(context.WithoutCancel(ctx), keys, r.Value); err != nil {
					n.redisFailed(c.ns, "delete corrupt", err)
					return stepUncached, loaded[V]{}, nil
				}
				return stepAgain, loaded[V]{}, nil
			}
		}
	}
	switch r.State {
	case l2.Hit:
		keep, fresh := c.l1Window(hit.left)
		c.fillL1(h, key, hit.v, hit.size, keep, fresh, f, hit.groups)
		if c.z.beta > 0 && mode == modeGet && c.earlyRefresh(hit.left-c.z.below) {
			c.refreshKey(key, s, h)
		}
		return stepDone, loaded[V]{v: hit.v, ri: ReadInfo{Source: SourceL2}}, nil
	case l2.Claimed, l2.StaleClaimed:
		if r.State == l2.StaleClaimed && cur != nil && mode == modeGet && c.z.servable(cur.left) {
			// Stale-while-revalidate (R34): answer now; refresh under our
			// claim in the background, a fill like any other.
			c.refreshClaimed(key, s, h, keys, token, r.Clock, f, cur)
			out, err := c.serveStale(cur, nil)
			return stepDone, out, err
		}
		st.fallback = cur
		return stepFetch, loaded[V]{}, nil
	case l2.StaleBusy:
		if cur != nil {
			st.old = cur
			switch {
			case mode == modeEarly:
				return stepDone, loaded[V]{}, nil // someone else refreshes it
			case mode != modeGet:
			case c.z.servable(cur.left):
				out, err := c.serveStale(cur, nil) // stale-while-revalidate
				return stepDone, out, err
			case r.Failing || c.z.losers == LoserServeStale:
				out, err := c.serveStale(cur, nil) // fail-safe, throttled
				return stepDone, out, err
			case c.z.losers == LoserFetch:
				st.fallback = cur
				return stepUncached, loaded[V]{}, nil
			}
		}
		if r.Failing {
			if mode != modeGet {
				return stepDone, loaded[V]{}, errThrottled
			}
			return stepUncached, loaded[V]{}, nil
		}
	case l2.Busy:
		switch {
		case mode == modeEarly:
			return stepDone, loaded[V]{}, nil
		case r.Failing && mode != modeGet:
			return stepDone, loaded[V]{}, errThrottled
		case r.Failing || c.z.losers == LoserFetch && mode == modeGet:
			st.fallback = st.old
			return stepUncached, loaded[V]{}, nil
		}
	}
	return stepWait, loaded[V]{}, nil
}

// readOrClaim reads keys, or claims them under token. If the read does not
// return (a hook of the Redis client ends the goroutine inside it,
// runtime.Goexit, as t.FailNow does), the token is released on the way
// out, so that a claim the script took is not left to lapse after
// FlagTTL; releasing a token the read did not take changes nothing.
func (c *Cache[K, V]) readOrClaim(ctx context.Context, keys l2.Keys, token string, claim l2.Claim) (l2.Read, error) {
	returned := false
	defer func() {
		if !returned {
			c.release(ctx, keys, token)
		}
	}()
	r, err := c.node.store.ReadOrClaimWith(ctx, keys, token, c.node.cfg.FlagTTL, claim)
	returned = true
	return r, err
}

// settleHolding is settle for a read that may have claimed the key: if a
// callback ends the goroutine before settle returns (runtime.Goexit in the
// Codec, decoding the value Redis holds), the claim is given up on the way
// out rather than left to lapse after FlagTTL.
func (c *Cache[K, V]) settleHolding(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, f fence, r l2.Read, start time.Time, mode loadMode, st *readState[V]) (step, loaded[V], error) {
	returned := false
	defer func() {
		if !returned && holdsClaim(r) {
			c.release(ctx, keys, token)
		}
	}()
	next, out, err := c.settle(ctx, key, s, h, keys, token, f, r, start, mode, st)
	returned = true
	return next, out, err
}

// holdsClaim reports whether the read r claimed its key for us.
func holdsClaim(r l2.Read) bool { return r.State == l2.Claimed || r.State == l2.StaleClaimed }

// serveStale answers with a value past its freshness: without an error
// within its servable window (stale-while-revalidate), with ErrStale past
// it or when cause (a failed fetch) says the refresh failed.
func (c *Cache[K, V]) serveStale(sv *staleValue[V], cause error) (loaded[V], error) {
	r := loaded[V]{v: sv.v, ri: ReadInfo{Source: SourceL2, Stale: true}}
	switch {
	case cause != nil:
		return r, fmt.Errorf("%w: %w", ErrStale, cause)
	case c.z.servable(sv.left):
		return r, nil
	}
	return r, ErrStale
}

// refreshClaimed refreshes key in the background under the claim token
// that a stale read took.
func (c *Cache[K, V]) refreshClaimed(key K, s string, h uint64, keys l2.Keys, token string, clock string, f fence, cur *staleValue[V]) {
	n := c.node
	c.m.refreshes.Add(1)
	if !n.spawn(func() { _, _ = c.fetchAndFill(n.life, key, s, h, keys, token, clock, f, cur) }) {
		c.release(context.Background(), keys, token)
	}
}

// refreshFrom refreshes e's key in the background, one refresh per entry at
// a time: after a stale hit (modeRevalidate) or an early-refresh draw
// (modeEarly).
func (c *Cache[K, V]) refreshFrom(e *entry[K, V], h uint64, mode loadMode) {
	if e.Flags.Or(entryRefreshing)&entryRefreshing != 0 {
		return // a refresh from this entry runs
	}
	// Cleared again unless a refresh starts, however this call ends: a Key
	// that ends the goroutine (runtime.Goexit) must not leave the entry
	// marked for good, never to be refreshed (R37).
	started := false
	defer func() {
		if !started {
			e.Flags.And(^entryRefreshing)
		}
	}()
	s, _, err := c.keys.resolve(e.key)
	if err != nil {
		return // cannot happen: the entry was filled under this key
	}
	n := c.node
	c.m.refreshes.Add(1)
	started = n.spawn(func() {
		defer e.Flags.And(^entryRefreshing)
		_, _ = c.load(n.life, e.key, s, h, mode)
	})
}

// refreshKey refreshes key early in the background after an L2 hit, one
// refresh per key on this node at a time.
func (c *Cache[K, V]) refreshKey(key K, s string, h uint64) {
	c.bgMu.Lock()
	if _, ok := c.bg[s]; ok {
		c.bgMu.Unlock()
		return
	}
	if c.bg == nil {
		c.bg = make(map[string]struct{})
	}
	c.bg[s] = struct{}{}
	c.bgMu.Unlock()
	done := func() {
		c.bgMu.Lock()
		delete(c.bg, s)
		c.bgMu.Unlock()
	}
	n := c.node
	c.m.refreshes.Add(1)
	if !n.spawn(func() {
		defer done()
		_, _ = c.load(n.life, key, s, h, modeEarly)
	}) {
		done()
	}
}

// fetchAndFill runs Fetch under our claim and settles its result (see
// fetched). If a callback ends the goroutine instead (runtime.Goexit, as
// t.FailNow does), the claim is released on the way out (with no fail-safe
// mark), rather than left to lapse after FlagTTL.
func (c *Cache[K, V]) fetchAndFill(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, clock string, f fence, fallback *staleValue[V]) (l loaded[V], err error) {
	fctx, cancel := c.fetchContext(ctx, fallback != nil)
	defer cancel()
	returned := false
	defer func() {
		if !returned {
			c.release(ctx, keys, token)
		}
	}()
	v, err := c.callFetch(fctx, key)
	l, err = c.fetched(ctx, key, s, h, keys, token, clock, f, fallback, v, err)
	returned = true
	return l, err
}

// fetched settles what a fetch under our claim returned: a value fills both
// tiers if the claim still holds; "not found" is cached (NotFoundTTL) or
// the claim released; and with a fallback (the value being refreshed), any
// other failure serves the fallback with ErrStale and marks the key failing
// for FailSafeThrottle (fail-safe, R34).
func (c *Cache[K, V]) fetched(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, clock string, f fence, fallback *staleValue[V], v V, err error) (loaded[V], error) {
	if err == nil {
		return c.fill(ctx, key, s, h, keys, token, clock, f, v)
	}
	switch {
	case errors.Is(err, ErrNotFound) && c.z.notFound > 0:
		c.fillNegative(ctx, h, key, keys, token, clock, f)
	case errors.Is(err, ErrNotFound) || fallback == nil || ctx.Err() != nil:
		c.release(ctx, keys, token)
	default:
		// The old value, and the fleet leaves the source alone a while.
		c.m.failSafe.Add(1)
		c.markFailing(ctx, keys, token)
		return c.serveStale(fallback, err)
	}
	return loaded[V]{ri: ReadInfo{Source: SourceFetch}}, err
}

// fill offers v, fetched under our claim, to both tiers: L2 takes it if the
// claim still holds and none of its groups changed since; L1 if the fence
// still holds. What it returns, and keeps in L1, is v as the codec decodes
// it from the bytes that go to Redis, the very value every other node
// serves (R39). If v cannot be cached (its groups break the rules, Groups
// or the Codec fails or panics), the claim is released at once and v comes
// back with an error that says why; a value too large to cache comes back
// without one (it is counted and logged).
func (c *Cache[K, V]) fill(ctx context.Context, key K, s string, h uint64, keys l2.Keys, token string, clock string, f fence, v V) (loaded[V], error) {
	n := c.node
	out := loaded[V]{v: v, ri: ReadInfo{Source: SourceFetch}}
	gs, err := c.groupsOf(key, v)
	if err != nil {
		c.release(ctx, keys, token)
		c.m.fill(FillUncacheable)
		n.log.Warn("tiercache: not caching an entry whose groups cannot be known", "namespace", c.ns, "key_hash", h, "reason", err)
		return out, fmt.Errorf("tier get: value not cached: %w", err)
	}
	env, copied, err := c.encodeCopy(s, v)
	if err != nil {
		c.release(ctx, keys, token)
		if errors.Is(err, ErrValueTooLarge) {
			c.m.fill(FillOversize)
			n.log.Warn("tiercache: value too large to cache", "namespace", c.ns, "key_hash", h, "reason", err)
			return out, nil
		}
		c.m.fill(FillUncacheable)
		return out, fmt.Errorf("tier get: value not cached: %w", err)
	}
	out.v = copied
	if n.hooks != nil && n.hooks.BeforeFill != nil {
		n.hooks.BeforeFill(s)
	}
	life := c.lifetime()
	start := time.Now()
	landed, err := n.store.FillInGroups(context.WithoutCancel(ctx), keys, token, env, life, gs, clock)
	switch {
	case err != nil:
		n.redisFailed(c.ns, "fill", err)
		c.m.fill(FillFailed)
		c.release(ctx, keys, token) // if the flag is still ours, let others claim now
		return out, nil
	case !landed:
		// Invalidated, expired or taken over since we claimed, or one of
		// its groups was invalidated meanwhile (R01, R03, R04, R05, R31).
		// Our caller may still have v: its read overlapped the write.
		// Neither tier keeps it.
		c.m.fill(FillRefused)
		return out, nil
	}
	c.m.fill(FillLanded)
	n.present.mark(h)
	keep, fresh := c.l1Window(life - time.Since(start))
	c.fillL1(h, key, copied, len(env), keep, fresh, f, gs)
	return out, nil
}

// fillNegative caches "not found" for key under our claim, for NotFoundTTL,
// in the groups Config.Groups gives for the key and the zero value, so that
// invalidating a group the key would be in clears it (R11). If Groups fails
// or panics on the zero value, nothing is cached.
func (c *Cache[K, V]) fillNegative(ctx context.Context, h uint64, key K, keys l2.Keys, token string, clock string, f fence) {
	n := c.node
	gs, err := c.negativeGroups(key)
	if err != nil {
		c.release(ctx, keys, token)
		c.m.fill(FillUncacheable)
		n.log.Warn("tiercache: not caching a \"not found\" whose groups cannot be known", "namespace", c.ns, "key_hash", h, "reason", err)
		return
	}
	start := time.Now()
	landed, err := n.store.FillEntry(context.WithoutCancel(ctx), keys, token, l2.Entry{TTL: c.z.notFound, Groups: gs, Negative: true}, clock)
	switch {
	case err != nil:
		n.redisFailed(c.ns, "fill", err)
		c.m.fill(FillFailed)
		c.release(ctx, keys, token)
	case !landed:
		c.m.fill(FillRefused)
	default:
		c.m.fill(FillLanded)
		n.present.mark(h)
		c.fillNegativeL1(h, key, c.z.notFound-time.Since(start), f, gs)
	}
}

// negativeGroups returns the groups of a cached "not found" of key: those of
// the key with the zero value.
func (c *Cache[K, V]) negativeGroups(key K) ([]string, error) {
	var zero V
	return c.groupsOf(key, zero)
}

// markFailing turns our claim into a failure mark for FailSafeThrottle.
func (c *Cache[K, V]) markFailing(ctx context.Context, keys l2.Keys, token string) {
	rctx, cancel := c.node.cleanupContext(ctx)
	defer cancel()
	if err := c.node.store.MarkFailing(rctx, keys, token, c.z.throttle); err != nil {
		c.node.redisFailed(c.ns, "mark failing", err)
	}
}

// bypass answers from the source without reading or filling either tier.
func (c *Cache[K, V]) bypass(ctx context.Context, key K) (loaded[V], error) {
	if _, _, err := c.keys.resolve(key); err != nil {
		return loaded[V]{}, fmt.Errorf("tier get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return loaded[V]{}, err
	}
	return c.fetchUncached(ctx, key, nil)
}

// fetchUncached answers from the source and caches nothing. With old (a
// value seen in Redis), a failed Fetch serves it with ErrStale instead.
func (c *Cache[K, V]) fetchUncached(ctx context.Context, key K, old *staleValue[V]) (loaded[V], error) {
	c.m.uncached.Add(1)
	fctx, cancel := c.fetchContext(ctx, old != nil)
	defer cancel()
	v, err := c.callFetch(fctx, key)
	if err != nil && old != nil && ctx.Err() == nil && !errors.Is(err, ErrNotFound) {
		c.m.failSafe.Add(1)
		return c.serveStale(old, err)
	}
	return loaded[V]{v: v, ri: ReadInfo{Source: SourceUncached}}, err
}

// fetchContext bounds a Fetch by FetchTimeout when it has a stale value to
// fall back to.
func (c *Cache[K, V]) fetchContext(ctx context.Context, fallback bool) (context.Context, context.CancelFunc) {
	if fallback && c.z.fetchTimeout > 0 {
		return context.WithTimeout(ctx, c.z.fetchTimeout)
	}
	return ctx, func() {}
}

// callFetch calls Fetch, turning a panic into ErrFetchPanic, and notes how
// long it took.
func (c *Cache[K, V]) callFetch(ctx context.Context, key K) (v V, err error) {
	start := c.m.fetching()
	fetch := c.loader(ctx)
	ctx, end := c.startFetch(ctx, 1)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (%w)", ErrFetchPanic, c.node.panicked("Fetch", c.ns, r))
		}
		c.noteFetchTime(time.Since(start))
		c.m.fetched(err, 1, start)
		end(err)
	}()
	if fetch == nil {
		return v, errNoFetch
	}
	// Until fetch returns: a Fetch that ends the goroutine (runtime.Goexit)
	// is counted, recorded and traced as a failed fetch, not a success.
	err = errLoadExited
	return fetch(ctx, key)
}

// fillL1 stores v, in groups, in L1 for keep, fresh for the first fresh of
// it (0: all of it), if nothing the node learnt since the fence was taken
// invalidates it.
func (c *Cache[K, V]) fillL1(h uint64, key K, v V, size int, keep, fresh time.Duration, f fence, groupNames []string) {
	if c.l1TTL <= 0 || keep <= 0 {
		return
	}
	e := &entry[K, V]{key: key, val: v, groups: c.refs(groupNames)}
	if fresh > 0 {
		e.fresh = max(c.node.now()+fresh, 1)
	}
	c.storeL1(h, e, size, keep, f)
}

// fillNegativeL1 stores a cached "not found" in L1 for at most left.
func (c *Cache[K, V]) fillNegativeL1(h uint64, key K, left time.Duration, f fence, groupNames []string) {
	if c.l1TTL <= 0 || left <= 0 {
		return
	}
	e := &entry[K, V]{key: key, groups: c.refs(groupNames)}
	e.Flags.Store(entryNegative)
	c.storeL1(h, e, 64, left, f)
}

// refs returns refs to the named groups at their current versions. Those
// of the fleet's and the namespace's groups alone, the groups of every
// entry of a Cache without Config.Groups, are shared by the entries filled
// while both groups are unchanged: one slice for all of them, instead of
// one each. Refs are never changed once taken.
func (c *Cache[K, V]) refs(names []string) *[]groups.Ref {
	if len(names) != 2 || names[0] != fleetGroup || names[1] != c.nsGroup {
		refs := c.node.groups.Refs(names)
		return &refs
	}
	if p := c.baseRefs.Load(); p != nil && groupsValid(*p) {
		return p
	}
	refs := c.node.groups.Refs(names)
	c.baseRefs.Store(&refs)
	return &refs
}

// storeL1 stores e in L1 unless the fence says an invalidation came since.
func (c *Cache[K, V]) storeL1(h uint64, e *entry[K, V], size int, keep time.Duration, f fence) {
	// After taking the refs: a group invalidation applied before this check
	// moved the generation; one applied after it invalidates the refs.
	if c.node.groups.Gen() != f.gen || !c.slot.Fill(h, e, int64(size), min(keep, c.l1TTL), f.ticket) {
		c.m.fill(FillFenced)
	}
}

var errKeyMismatch = errors.New("tier: stored value belongs to another key")

// decode returns the value stored in envelope b for key s, with the size
// that L1 accounts for it.
func (c *Cache[K, V]) decode(s string, b []byte) (V, int, error) {
	var zero V
	key, data, err := l2.SplitEnvelope(b)
	if err != nil {
		return zero, 0, err
	}
	if string(key) != s {
		return zero, 0, errKeyMismatch
	}
	v, err := c.decodeData(data)
	if err != nil {
		return zero, 0, err
	}
	return v, len(b), nil
}

// decodeData calls Codec.Decode, a panic being an error wrapping ErrPanic.
func (c *Cache[K, V]) decodeData(data []byte) (V, error) {
	if !c.cbor {
		// data may be the bytes of a Redis reply that the client holds as
		// a string (a peeked value, l2.Read.Value): a codec of the
		// caller's may keep what it is given, or change it, so it gets
		// bytes of its own. CBOR copies what it keeps.
		data = bytes.Clone(data)
	}
	return guarded(c.node, "Codec.Decode", c.ns, func() (V, error) { return c.codec.Decode(data) })
}

// encodeData calls Codec.Encode, a panic being an error wrapping ErrPanic.
func (c *Cache[K, V]) encodeData(v V) ([]byte, error) {
	return guarded(c.node, "Codec.Encode", c.ns, func() ([]byte, error) { return c.codec.Encode(v) })
}

// encodeCopy returns the envelope of v under key s, and v as the codec gives
// it back from those bytes: the value every node serves (R39).
func (c *Cache[K, V]) encodeCopy(s string, v V) (env []byte, copied V, err error) {
	env, data, err := c.encode(s, v)
	if err != nil {
		return nil, copied, err
	}
	copied, err = c.decodeData(data)
	return env, copied, err
}

// release gives up our claim so that waiters elsewhere need not wait for it
// to expire. It runs even if ctx was cancelled.
func (c *Cache[K, V]) release(ctx context.Context, keys l2.Keys, token string) {
	rctx, cancel := c.node.cleanupContext(ctx)
	defer cancel()
	if err := c.node.store.Release(rctx, keys, token); err != nil {
		c.node.redisFailed(c.ns, "release", err)
	}
}

// encode returns the envelope of v under key s and the codec's bytes of v
// in it, or ErrValueTooLarge.
func (c *Cache[K, V]) encode(s string, v V) (env, data []byte, err error) {
	data, err = c.encodeData(v)
	if err != nil {
		return nil, nil, err
	}
	limit := c.node.cfg.MaxValueBytes
	if len(data)+len(s) > limit {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(data)+len(s), limit)
	}
	env, err = l2.EncodeEnvelope(s, data)
	if err != nil {
		return nil, nil, err
	}
	if len(env) > limit {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(env), limit)
	}
	return env, data, nil
}
