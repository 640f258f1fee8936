// Package groups holds a node's side of group invalidation: a bounded table
// of the groups it has seen, each with a version that the node bumps when it
// learns that the group was invalidated, so that every L1 entry filled in
// that group becomes invisible at once, whatever the number of members.
//
// # Mechanism
//
// An L1 entry keeps a [Ref] per group it belongs to: the group's state and
// the version it had when the entry was filled. [Ref.Valid] is one atomic
// load. [Table.Invalidate] bumps the versions of the named groups and the
// table's generation; a fill takes [Table.Gen] before it reads Redis and
// stores its entry only if the generation is unchanged after it took its
// refs, so an invalidation that arrives while it fills cannot be missed
// (docs/RACES.md R31).
//
// The table is bounded: when full, it forgets a group, and every entry that
// refers to a forgotten group is invalid from then on ("unknown", never
// assumed fresh); the next read checks Redis. Pinned groups (a namespace's
// own) are never forgotten.
//
// The Redis side of groups, the stamps, lives in package l2.
//
// # Thread-safety
//
// A Table is safe for concurrent use. Ref.Valid takes no lock.
package groups
