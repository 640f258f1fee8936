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
// [Cache.Get] serves a valid L1 entry without allocating. Otherwise, a key
// that this node has seen in Redis (and no invalidation of which it has
// learnt since) is read with plain commands in the caller's goroutine: one
// MGET of the value and the stamps of its fleet's and namespace's groups,
// and its PTTL; a value that is there and current answers at about the cost
// of a GET (l2.Store.Peek, docs/RACES.md R54); concurrent such reads on a
// node share a round trip (on a cluster, per master: R57). Anything else,
// and every key of a Cache with Config.Groups, goes to a load that
// concurrent Gets of one key on a node share, which reads Redis in one
// round trip with the read script: the value if present, else a claim of
// the key's flag with a fresh random token. The claimant fetches from the
// source and fills Redis with a script that writes only if the flag still
// holds its token; the losers, on any node, wait for its value. L1 is
// filled under a fill-epoch ticket taken before Redis was read.
//
// # Stampedes and freshness
//
// Losers of a claim, on any node, wait for the claimant's value and are
// woken by a message when it fills, gives up or fails (or when the key is
// invalidated); Config.Losers can make them serve a kept stale value or
// fetch without caching instead. Config.FreshFor, MaxStale, EarlyRefresh,
// NotFoundTTL and TTLJitter add stale-while-revalidate, fail-safe
// (ErrStale), probabilistic early refresh, negative caching and jitter.
// Every freshness decision about a value in Redis is made from its
// remaining lifetime there (its PTTL, or for a batch its expiry against the
// same server's clock), never by comparing two machines' clocks.
// Every refresh is a claimed, fenced fill like any other, so an
// invalidation during a refresh wins (docs/RACES.md R34, R35). A stale value is
// only ever served within the window its Config allows, and is reported
// (ReadInfo.Stale, Counts.StaleServed). [Cache.GetMany] and [Cache.GetList]
// read many keys with one Redis round trip for all that L1 does not hold (two
// when some were seen in Redis and some not: one MGET, one pipeline of the
// read script).
// [Cache.GetOrFetch] names the source of one call, and [Memoize] caches a
// function of several arguments; either way the source is shared as Fetch
// is. "Not found" is [ErrNotFound] everywhere: Fetch returns it, FetchMany
// returns it per key in a [KeyErrors] ([Missing]).
//
// # Writing
//
// After writing the source, call [Cache.Invalidate] (or [Cache.Set] to write
// the new value through), or [Node.Invalidate] for keys, namespaces and
// groups together. Redis's value and flag go in one round trip; then this
// node's L1 entry is evicted, its fill epoch bumped and its flight
// forgotten, before the call returns.
//
// # Resources
//
// A [Resource] is a whole data set held in memory by every node and read
// without a lock or an allocation. One node loads it for the fleet (a claim
// in Redis), stores it in chunks under a new version and announces it on
// the bus; every node swaps it in whole, so no lookup sees half of two
// versions (R46). A failed load keeps the last good data set.
//
// # Observing
//
// [Node.Stats], [Cache.Stats] and [Node.CacheStats] count every event;
// NodeConfig.Recorder and NodeConfig.Tracer hand each to a metrics or
// tracing adapter (the module tierotel adapts OpenTelemetry), and cost
// nothing when unset. Warnings and errors go to NodeConfig.Logger.
//
// # Guarantee
//
// A fetch that began before an invalidation never fills either tier: its
// claim was deleted with the value (docs/RACES.md R01, R03, R04, R05), and its L1
// ticket is stale (R12, R13). A Get that begins after Invalidate or Set
// returned never returns the old value on that node (R20, R21), nor, from
// Redis, on any node; other nodes evict their L1 copies, and stop letting
// new Gets join loads of the key that began before (which may have read
// the old value), when the bus message arrives, and no node serves the old
// value, from L1 or from a load another Get began, longer than
// NodeConfig.LeaseTTL after the invalidation, whatever is lost or however
// long the process was paused (see package bus; docs/RACES.md R40, R42),
// unless NodeConfig.OutageMaxAge says otherwise while Redis is down. Every L1
// entry expires no later than the Redis entry it came from (R24). Groups
// (Config.Groups, Node.InvalidateGroup) extend all of this to every member
// of a group, in constant time.
//
// # Errors and bad input
//
// Errors wrap the package's sentinels ([ErrNotFound], [ErrConfig],
// [ErrEmptyKey], [ErrKeyTooLarge], [ErrValueTooLarge], [ErrBadGroup],
// [ErrFetchPanic], [ErrPanic], [ErrPending], [ErrNotReplicated], [ErrStale],
// [ErrUnreachable], [ErrClosed]) so that errors.Is tells them apart. Bytes in Redis that do
// not decode are a miss: removed, refetched and counted, never a panic. A
// callback of the caller's that panics (Fetch, Key, Groups, the Codec,
// OnHit, OnMiss) becomes an error wrapping [ErrPanic] for the calls
// concerned; a claim it held is released at once (R37).
//
// # When Redis fails
//
// Every Redis operation is bounded by NodeConfig.RedisTimeout and its
// caller's context; a circuit breaker per node sends reads straight to the
// source while Redis is unreachable (at once when a single server refuses
// connections, R41), and probes for its return. A write that cannot reach
// Redis applies locally, returns an error wrapping [ErrPending], and is
// queued and replayed to the fleet on recovery; until then the node never
// reads that key from Redis, and a write whose bytes reach Redis after its
// caller gave up lives at most LeaseTTL there (R44). L1 follows the bus
// lease; concurrent Gets of a key keep sharing one fetch (R42), and
// NodeConfig.OutageMaxAge turns on a degraded mode that answers from L1 as
// stale (R45). With NodeConfig.WaitReplicas, a write returns nil only once
// that many replicas have it, so that no failover undoes it (R52).
//
// # Deployments
//
// NewNode takes a client of one Redis server, of a Sentinel deployment
// (redis.NewFailoverClient) or of a Redis Cluster (redis.NewClusterClient,
// Redis 7 or later), with the same guarantees: on a cluster every slot
// keeps the group state of its own values, and the bus is one shard
// channel (see package l2, package bus, and docs/RACES.md R28, R49-R53).
//
// # Thread-safety
//
// Nodes and Caches are safe for concurrent use. Values returned by Get may
// be shared with other callers and with L1: treat them as immutable.
package tier
