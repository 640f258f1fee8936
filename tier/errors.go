package tier

import (
	"errors"
	"fmt"

	"github.com/tiercache/tiercache/l2"
)

var (
	// ErrNotFound says that the source has no such object. Fetch wraps it
	// (or returns it) to say so; Get returns an error that wraps it.
	ErrNotFound = errors.New("tier: not found")
	// ErrConfig reports an invalid NodeConfig or Config.
	ErrConfig = errors.New("tier: invalid config")
	// ErrEmptyKey reports a key whose string form is empty.
	ErrEmptyKey = errors.New("tier: empty key")
	// ErrKeyTooLarge reports a key whose string form exceeds
	// NodeConfig.MaxKeyBytes.
	ErrKeyTooLarge = errors.New("tier: key too large")
	// ErrValueTooLarge reports a value whose stored form exceeds
	// NodeConfig.MaxValueBytes.
	ErrValueTooLarge = errors.New("tier: value too large")
	// ErrBadGroup reports a group name that is empty, longer than 1 KiB or
	// starts with NUL, or an entry in more than MaxGroupsPerEntry groups.
	ErrBadGroup = errors.New("tier: bad group")
	// ErrFetchPanic reports a Fetch or FetchMany that panicked; every caller
	// waiting on that fetch gets it. The panic value is in the message; the
	// error also wraps ErrPanic.
	ErrFetchPanic = errors.New("tier: fetch panicked")
	// ErrPanic reports a callback of the caller's that panicked: Fetch,
	// FetchMany, Config.Key, Config.Groups, the Codec, OnHit or OnMiss. The
	// call that ran it returns an error wrapping ErrPanic, with the panic
	// value in the message; a claim it held in Redis is released at once, so
	// that no other node waits for it, and the panic is logged with its
	// stack. A panic never crashes the process, whichever goroutine ran the
	// callback.
	ErrPanic = errors.New("tier: callback panicked")
	// ErrPending reports a write (Invalidate, Set, InvalidateGroup, Flush)
	// whose local effect applied but which could not reach Redis: it is
	// queued and will be replayed, and announced to the fleet, as soon as
	// Redis answers again. The error also wraps the cause.
	ErrPending = errors.New("tier: not yet propagated; queued for replay")
	// ErrNotReplicated comes with ErrPending from a write that Redis made
	// but that fewer replicas than NodeConfig.WaitReplicas acknowledged
	// within WaitTimeout: a failover could undo it, so it is queued and
	// replayed until enough replicas acknowledge it.
	ErrNotReplicated = l2.ErrNotReplicated
	// ErrStale comes with a value that is past its TTL but within
	// Config.MaxStale, served because Fetch failed or timed out (fail-safe),
	// or because the loser policy said so: the value is usable, and the
	// error also wraps the cause when there is one.
	ErrStale = errors.New("tier: stale value served")
	// ErrUnreachable comes with ErrStale with a value served from L1 in the
	// degraded mode of NodeConfig.OutageMaxAge: Redis could not be reached,
	// so the value could not be checked. The error also wraps the cause.
	ErrUnreachable = errors.New("tier: redis unreachable; value served from L1 unchecked")
	// ErrClosed reports a call on a closed Node.
	ErrClosed = errors.New("tier: node closed")
)

// errNoFetch answers a load of a Cache without Config.Fetch that no
// GetOrFetch gave a source.
var errNoFetch = fmt.Errorf("%w: the Cache has neither Fetch nor FetchMany; read it with GetOrFetch", ErrConfig)
