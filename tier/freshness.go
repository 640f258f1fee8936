package tier

import (
	"fmt"
	"math"
	"time"
)

// LoserPolicy says what a Get does when another claimant in the fleet is
// fetching a key that has no fresh value (docs/RACES.md R10). Every policy
// leaves L2 correct: only the claimant fills.
type LoserPolicy uint8

const (
	// LoserWait waits for the claimant's value, woken when it lands,
	// bounded by NodeConfig.FlagTTL and ctx, then fetches without caching.
	// If the claimant gives up, one waiter claims in its place (R08).
	LoserWait LoserPolicy = iota
	// LoserServeStale answers at once with the stale value if one is still
	// kept (within Config.MaxStale: ReadInfo.Stale and ErrStale), and waits
	// otherwise.
	LoserServeStale
	// LoserFetch fetches at once without caching: no waiting, at the cost
	// of one source read per loser.
	LoserFetch
)

func (p LoserPolicy) String() string {
	switch p {
	case LoserWait:
		return "wait"
	case LoserServeStale:
		return "serve-stale"
	case LoserFetch:
		return "fetch"
	}
	return fmt.Sprintf("LoserPolicy(%d)", int(p))
}

// DefaultFailSafeThrottle is Config.FailSafeThrottle's default.
const DefaultFailSafeThrottle = time.Second

// zones are a Cache's freshness settings, in the terms Redis measures: a
// value's remaining lifetime there (PTTL), so that no node's clock is
// compared with another's (R29). A value lives ttl+maxStale in Redis (less
// its jitter); it is fresh while its remaining lifetime is above below,
// servable (stale-while-revalidate) while it is above maxStale, and kept
// for fail-safe until it expires.
type zones struct {
	ttl          time.Duration
	fresh        time.Duration
	maxStale     time.Duration
	below        time.Duration // maxStale + ttl - fresh; 0: a present value is always fresh
	fetchTimeout time.Duration
	throttle     time.Duration
	beta         float64
	notFound     time.Duration
	jitter       float64
	losers       LoserPolicy
}

func newZones(ttl, fresh, maxStale, fetchTimeout, throttle time.Duration, beta float64, notFound time.Duration, jitter float64, losers LoserPolicy) (zones, error) {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	switch {
	case fresh < 0 || fresh > ttl:
		return zones{}, fmt.Errorf("%w: FreshFor %v must be within TTL %v", ErrConfig, fresh, ttl)
	case maxStale < 0 || maxStale > maxTTL-ttl:
		return zones{}, fmt.Errorf("%w: MaxStale %v is negative or too large", ErrConfig, maxStale)
	case fetchTimeout < 0:
		return zones{}, fmt.Errorf("%w: FetchTimeout %v is negative", ErrConfig, fetchTimeout)
	case throttle < 0 || (throttle > 0 && throttle < time.Millisecond):
		return zones{}, fmt.Errorf("%w: FailSafeThrottle %v must be at least 1ms", ErrConfig, throttle)
	case beta < 0 || math.IsNaN(beta) || math.IsInf(beta, 0):
		return zones{}, fmt.Errorf("%w: EarlyRefresh %v must be a finite number, 0 or more", ErrConfig, beta)
	case notFound < 0 || notFound > maxTTL:
		return zones{}, fmt.Errorf("%w: NotFoundTTL %v is negative or too large", ErrConfig, notFound)
	case !(jitter >= 0 && jitter < 1):
		return zones{}, fmt.Errorf("%w: TTLJitter %v must be in [0, 1)", ErrConfig, jitter)
	case losers > LoserFetch:
		return zones{}, fmt.Errorf("%w: unknown %v", ErrConfig, losers)
	}
	if fresh == 0 {
		fresh = ttl
	}
	if throttle == 0 {
		throttle = DefaultFailSafeThrottle
	}
	return zones{
		ttl: ttl, fresh: fresh, maxStale: maxStale, below: maxStale + ttl - fresh,
		fetchTimeout: fetchTimeout, throttle: throttle, beta: beta,
		notFound: notFound, jitter: jitter, losers: losers,
	}, nil
}

// servable reports whether a value with left of its Redis lifetime may be
// served without ErrStale: fresh, or stale-while-revalidate.
func (z *zones) servable(left time.Duration) bool {
	return left < 0 || left > z.maxStale
}

// lifetime returns the Redis lifetime of a value filled or Set now: TTL
// plus MaxStale, shortened by its jitter, a random fraction of FreshFor up
// to TTLJitter (so that it is never born stale).
func (c *Cache[K, V]) lifetime() time.Duration {
	z := &c.z
	d := z.ttl + z.maxStale
	if z.jitter > 0 {
		d -= time.Duration(c.node.rand01() * z.jitter * float64(z.fresh))
	}
	return max(d, time.Millisecond)
}

// l1Window returns, for a fresh value with left of its Redis lifetime, how
// long L1 may keep it (never past the end of its servable window, R24) and
// how long of that it is fresh (0: all of it, no freshness check on hits).
func (c *Cache[K, V]) l1Window(left time.Duration) (keep, fresh time.Duration) {
	z := &c.z
	if left < 0 {
		// No expiry in Redis (not written by this library).
		return c.l1TTL, 0
	}
	keep = min(c.l1TTL, left-z.maxStale)
	fresh = left - z.below
	if fresh <= 0 {
		return 0, 0
	}
	if fresh >= keep && z.beta == 0 {
		return keep, 0
	}
	return keep, min(fresh, keep)
}

// earlyRefresh draws whether a fresh hit with left of freshness refreshes
// now: XFetch's test, −δ·β·ln(U) ≥ left, with δ this node's recent Fetch
// time for the cache.
func (c *Cache[K, V]) earlyRefresh(left time.Duration) bool {
	delta := float64(c.fetchTime.Load())
	if delta <= 0 {
		return false
	}
	u := 1 - c.node.rand01() // (0, 1]
	return -delta*c.z.beta*math.Log(u) >= float64(left)
}

// noteFetchTime folds one Fetch duration into the cache's moving average
// (weight 1/4), the δ of early refresh.
func (c *Cache[K, V]) noteFetchTime(d time.Duration) {
	for {
		old := c.fetchTime.Load()
		next := int64(d)
		if old > 0 {
			next = old + (int64(d)-old)/4
		}
		if c.fetchTime.CompareAndSwap(old, next) {
			return
		}
	}
}
