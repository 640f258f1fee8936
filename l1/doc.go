// Package l1 is the in-process tier: a cost-bounded ristretto cache whose
// entries carry the fill-epoch ticket they were filled under.
//
// # Mechanism
//
// ristretto applies the Set of a new key asynchronously, through a buffer, so
// a Set issued before a concurrent Del can become visible after it (docs/RACES.md
// R13). l1 therefore never trusts what ristretto holds: [Cache.Get] serves an
// entry only while the ticket it was stored with is still valid in the
// node's [consistency.Epochs]. [Cache.Evict] bumps the key's epoch before it
// deletes (only what ristretto holds), so whatever a buffered Set makes
// visible later is already dead.
// [Cache.Fill] also refuses a fill whose ticket is stale before and after the
// Set, and deletes what it stored in the second case, only to free memory.
//
// # Entries
//
// An entry is one allocation: a caller's value type embeds [Entry] as its
// first field (the ticket, the lifetime, the order of fills) and stores and
// reads values through a [Slot] of that type, which reads back only what it
// stored. [Cache.Fill] and [Cache.Get] store any value, in an entry of
// their own.
//
// # Guarantee
//
// Once Evict(h) (or EvictAll) has returned, Get(h) returns no value that was
// filled with a ticket taken before that Evict began, whatever the order in
// which ristretto applies its buffered writes. The hit path takes no lock of
// its own and allocates nothing beyond what ristretto's Get does (nothing,
// in steady state); it reads the monotonic clock once, and checks both the
// entry's lifetime and the cache's lease against it, so a wall-clock step
// changes nothing (docs/RACES.md R30), no entry outlives the lifetime it was
// given (R24), and a process resumed after a pause serves nothing under a
// lease that ran out while it was stopped (R40). A coarse clock advanced
// every [Tick] ([Cache.Now]) serves callers' freshness hints, never a
// bound.
//
// # Thread-safety
//
// All methods are safe for concurrent use. l1 knows nothing of Redis.
package l1
