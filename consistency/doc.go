// Package consistency holds the small pure primitives that make the tiers
// agree: claim tokens for the L2 flag protocol and striped fill epochs that
// fence L1 fills against invalidations. It does no I/O.
//
// # Claim tokens
//
// Every claim of an L2 flag carries a fresh random token ([NewToken]), never a
// constant: a fill is accepted only while the flag still holds the token of
// the claim that started it. With a constant flag (the original cachecow
// design) a fetcher whose claim was invalidated and re-claimed by another can
// still fill its old value (docs/RACES.md R03); with unique tokens it cannot.
//
// # Fill epochs
//
// [Epochs] is a table of monotone counters, one per stripe of the key-hash
// space, plus one global generation. Every invalidation a node learns of bumps
// the stripe of its key; losing track of invalidations altogether (a flush)
// bumps the generation. A fill takes a [Ticket] before it reads L2 and may
// store into L1 only while the ticket is still valid; an L1 entry keeps its
// ticket and is served only while the ticket is still valid, so an
// invalidation that lands at any moment after the ticket was taken makes the
// entry invisible (R12, R13, R21).
//
// Guarantee: if Bump(h) or BumpAll happens-before Valid(h, t) and t was taken
// before the bump, Valid reports false. Counters only grow, so a ticket can
// never become valid again. False positives are possible (keys sharing a
// stripe), false negatives are not. All methods are safe for concurrent use
// and allocate nothing.
package consistency
