// Package tier is the public face of tiercache: a two-tier cache for fleets
// of identical processes, with an in-process L1 (ristretto) in each and a
// shared L2 in Redis.
//
// A [Node] is one process's membership in the fleet: its Redis client, its
// L1 (shared by all of its caches, bounded in bytes) and its background
// work. A [Cache] caches one kind of object: a namespace, a Fetch function
// that reads the source of truth, a codec and lifetimes.
//
// # Reading
//
// [Cache.Get] serves a valid L1 entry without allocating. Otherwise
// concurrent Gets of one key on a node share one load, which reads Redis in
// one round trip: the value if present, else a claim of the key's flag with
// a fresh random token. The claimant fetches from the source and fills Redis
// with a script that writes only if the flag still holds its token; the
// losers, on any node, wait for its value. L1 is filled under a fill-epoch
// ticket taken before Redis was read.
//
// # Writing
//
// After writing the source, call [Cache.Invalidate] (or [Cache.Set] to write
// the new value through). Redis's value and flag go in one round trip; then
// this node's L1 entry is evicted, its fill epoch bumped and its flight
// forgotten, before the call returns.
//
// # Guarantee
//
// A fetch that began before an invalidation never fills either tier: its
// claim was deleted with the value (RACES.md R01, R03, R04, R05), and its L1
// ticket is stale (R12, R13). A Get that begins after Invalidate or Set
// returned never returns the old value on that node (R20, R21), nor, from
// Redis, on any node; other nodes evict their L1 copies when the bus
// message arrives, and no node serves one longer than NodeConfig.LeaseTTL
// after the invalidation, whatever is lost (see package bus). Every L1
// entry expires no later than the Redis entry it came from (R24). Groups
// (Config.Groups, Node.InvalidateGroup) extend all of this to every member
// of a group, in constant time.
//
// # Errors and bad input
//
// Errors wrap the package's sentinels ([ErrNotFound], [ErrConfig],
// [ErrEmptyKey], [ErrKeyTooLarge], [ErrValueTooLarge], [ErrBadGroup],
// [ErrFetchPanic], [ErrPending], [ErrClosed]) so that errors.Is tells them
// apart. Bytes in Redis that do not decode are a miss: removed, refetched
// and counted, never a panic.
//
// # When Redis fails
//
// Every Redis operation is bounded by NodeConfig.RedisTimeout and its
// caller's context; a circuit breaker per node sends reads straight to the
// source while Redis is unreachable, and probes for its return. A write that
// cannot reach Redis applies locally, returns an error wrapping [ErrPending],
// and is queued and replayed to the fleet on recovery; until then the node
// never reads that key from Redis. L1 follows the bus lease.
//
// # Thread-safety
//
// Nodes and Caches are safe for concurrent use. Values returned by Get may
// be shared with other callers and with L1: treat them as immutable.
package tier
