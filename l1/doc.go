// Package l1 is the in-process tier: a cost-bounded ristretto cache whose
// entries carry the fill-epoch ticket they were filled under.
//
// # Mechanism
//
// ristretto applies the Set of a new key asynchronously, through a buffer, so
// a Set issued before a concurrent Del can become visible after it (RACES.md
// R13). l1 therefore never trusts what ristretto holds: [Cache.Get] serves an
// entry only while the ticket it was stored with is still valid in the
// node's [consistency.Epochs]. [Cache.Evict] bumps the key's epoch before it
// deletes, so whatever a buffered Set makes visible later is already dead.
// [Cache.Fill] also refuses a fill whose ticket is stale before and after the
// Set, and deletes what it stored in the second case, only to free memory.
//
// # Guarantee
//
// Once Evict(h) (or EvictAll) has returned, Get(h) returns no value that was
// filled with a ticket taken before that Evict began, whatever the order in
// which ristretto applies its buffered writes. The hit path takes no lock of
// its own, reads no clock and allocates nothing beyond what ristretto's Get
// does (nothing, in steady state). Lifetimes are kept on a coarse monotonic
// clock advanced every [Tick] and rounded down by one Tick, so a wall-clock
// step changes nothing (RACES.md R30) and no entry outlives the lifetime it was
// given (R24), as long as the ticker runs on time: a process starved of CPU
// for longer than a Tick can serve an entry that much past its lifetime.
//
// # Thread-safety
//
// All methods are safe for concurrent use. l1 knows nothing of Redis.
package l1
