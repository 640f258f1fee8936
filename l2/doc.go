// Package l2 is the Redis tier: key naming, the stored envelope, and the Lua
// scripts of the flag protocol. It knows nothing of L1.
//
// # Key naming
//
// Every key the library writes starts with a prefix ("tc" by default) and a
// kind letter, followed by a Redis Cluster hash tag that holds the namespace
// (length-prefixed) and the user key:
//
//	<prefix>:v:{<len(ns)>:<ns>:=<key>}     value of a key up to RawKeyMax bytes
//	<prefix>:f:{<len(ns)>:<ns>:=<key>}     its flag
//	<prefix>:v:{<len(ns)>:<ns>:#<hash>}    value of a longer key (128-bit xxhash, hex)
//	<prefix>:m:{...}                        an earlier version's meta list (see Envelope); deleted with the value
//	<prefix>:g:{<len(group)>:<group>}       a group's stamp: "<clock>:<random token>"
//	<prefix>:gseq                           the group clock, "<seq>/<id>": seq is bumped by every group
//	                                        invalidation; id names the clock's incarnation (R36)
//
// The namespace's length prefix and the '=' / '#' marker make the mapping
// from (namespace, key) to Redis key injective whatever bytes either holds
// (':', '{', '}', NUL): the name can be parsed back unambiguously from both
// ends. Long keys are hashed; the envelope keeps the full key, so a hash
// collision reads as a miss, never as another key's value. A value and its
// flag have the same text after the first '{', hence the same hash tag and
// the same cluster slot (docs/RACES.md R28).
//
// # Envelope
//
// A stored value is a header, then an envelope (value.go, [ParseStored]).
// The header, written by the scripts, says whether the entry is a stored
// "not found", when it expires (on the clock of the server that holds it),
// and the groups it was filled in with the stamp each had then; so a plain
// GET brings everything needed to trust a value, and no eviction can part
// a value from its groups. The envelope is a CBOR array [version, key,
// data]: the format version (currently 1), the full user key, and the
// bytes of the value as its codec encoded them. Bytes that do not decode as
// a version-1 envelope are reported as [ErrCorrupt]; the caller treats them
// as a miss. A value written by an earlier version of the package, an
// envelope without a header whose groups are in the meta list, is still
// read, by the read script, while a fleet upgrades.
//
// # Reads without a script
//
// [Store.Peek] and [Store.PeekMany] read values with plain commands: one
// MGET of the values and the current stamps of the groups every value is
// in (the caller names them), and the lifetime (PTTL for one key, TIME and
// the header's expiry for a batch). They answer only what the read script
// would answer as a plain hit, and leave everything else (a miss, a stale
// value, one due for a refresh, an earlier version's, a slot that moved)
// to [Store.ReadOrClaimWith], which decides atomically and claims
// (docs/RACES.md R54). A hit so costs about a GET: no script runs. On one
// server, one-key peeks that begin while another is in flight go out
// together in the next round trip, each key's PTTL and one MGET of every
// value and stamp, and each answers as it would have alone (R57); on a
// cluster, per master, through its client, with one MGET per slot.
//
// # Flag protocol
//
// A miss claims the key's flag with a fresh random token in the same script
// that found the value absent ([Store.ReadOrClaim]: one round trip). The
// claimant fetches from the source and fills with [Store.Fill], a script that
// writes the value only if the flag still holds its token and clears the
// flag: check and write are one atomic step (R07). Invalidation deletes value
// and flag together ([Store.Invalidate]), so a fetch that began before it can
// never fill afterwards (R01, R03); a flag that expired looks the same (R04,
// R05). Losers of the claim wait for the winner's value.
//
// # Groups
//
// A group invalidation gives the group a new stamp, "<clock>:<token>" with
// the clock advanced by one and a random token, so that no restart or flush
// can make an old stamp valid again. A value's header records the stamps
// its groups had when it was filled; [Store.ReadOrClaim] compares them with
// the current stamps in the same script that reads the value, and removes a
// value whose stamps changed or vanished (a vanished stamp is unknown, never
// fresh: R26), so the cost of a read does not depend on whether groups come
// from the key or the value. [Store.Peek] compares them too, with the
// stamps it reads in the same MGET as the value. The claim returns the group clock, and
// [Store.FillInGroups] refuses a fill if any of its groups was invalidated
// after that (R31): a fetch that began before a group invalidation never
// lands as fresh. Invalidating a group writes one key, whatever its size
// (R33).
//
// The clock, "<seq>/<id>", is the one key of the protocol without a TTL, so
// an allkeys eviction policy may evict it. Its id names its incarnation: a
// clock created afresh (after an eviction, a flush or a restart) gets a new
// random id, and a fill whose claim saw another incarnation is refused,
// since which groups changed meanwhile cannot be known (R36). Sequence
// numbers of two incarnations are never compared.

// # Redis Cluster
//
// On a cluster (the Store's client is a *redis.ClusterClient) a script may
// touch keys of one slot only. Every slot therefore keeps the group state
// of the values it holds beside them, named with the slot's tag
// ([SlotTag]: a short text whose slot is that slot):
//
//	<prefix>:gseq:{<slot tag>}                the slot's group clock, "<seq>/<id>"
//	<prefix>:g:{<slot tag>}:<len(group)>:<group>  the group's stamp in that slot
//
// A read, a fill and a key's change are each one script in the key's slot,
// as on one server, with the same checks against the slot's clock and
// stamps (R26, R31, R36 hold per slot). A group invalidation runs in every
// slot (16,384 scripts, pipelined to the masters: constant time, whatever
// the group's size): it advances the slot's clock and replaces the group's
// stamp where the slot has one; a slot without one holds no value filled in
// the group, and a fill claimed before the invalidation that finds the
// stamp missing is refused because the slot's clock moved (R49).
//
// [Store.Apply] makes the changes first, slot by slot, and only when every
// one succeeded draws the sequence number and publishes the announcement
// (SPUBLISH on the bus's shard channel, see [BusKeysFor]) in a second
// script: a message never overtakes the changes it announces (R14), but the
// two are not one atomic step. A writer that dies between them announced
// nothing, as one that died before calling; one whose announcement fails
// gets an error and queues the whole change for replay (R51).
//
// On one server the group state is the server's: <prefix>:gseq and
// <prefix>:g:{<len(group)>:<group>}, named inside the scripts, and a
// change and its announcement are one script.
//
// # Thread-safety
//
// A [Store] is safe for concurrent use; it holds no state beyond the client.
package l2
