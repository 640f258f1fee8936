// Command tierctl is an operator's view of the Redis a tiercache fleet
// shares: it reads keys and the invalidation bus directly, and invalidates
// through the library's own protocol, without a running node.
//
//	go run ./cmd/tierctl -redis localhost:6379 inspect users 42
//	go run ./cmd/tierctl -redis localhost:6379 watch -n 100
//	go run ./cmd/tierctl -redis localhost:6379 stats -for 10s
//	go run ./cmd/tierctl -redis localhost:6379 invalidate -yes users 42 43
//	go run ./cmd/tierctl -redis localhost:6379 invalidate-group -yes author:200
//	go run ./cmd/tierctl -redis localhost:6379 flush -yes
//
// Commands:
//
//   - inspect NAMESPACE KEY: the key's state in Redis: whether a value is
//     present (its size, and the key its envelope names; the value itself
//     is left encoded, since its codec is the application's), its remaining
//     lifetime and freshness zone, whether it is a cached "not found", the
//     groups it was filled in and whether each stamp still matches (a
//     changed or vanished stamp means the next read refuses the value), the
//     flag (none, claimed by a fill in progress, or a failure mark) and
//     whether readers wait on it. KEY is the key's string form, as
//     Config.Key gives it (the decimal form for integers).
//   - watch: decodes the bus's messages as they are published, one line
//     each, and reports gaps in their sequence numbers and malformed
//     messages; until interrupted, or -n messages, or -for a duration.
//   - stats: listens to the bus for -for (default 5s), -n messages or until
//     interrupted, then prints its traffic per origin node and per
//     namespace.
//   - invalidate NAMESPACE KEY..., invalidate-group GROUP..., flush: act
//     through a tier.Node of their own, so that every node of the fleet
//     evicts, exactly as the application's own calls would. Without -yes
//     they say what they would do and exit with status 2.
//
// Flags, before or after the command: -redis ADDR (default: a private
// redis-server started for a demo if one is on PATH, else an embedded
// miniredis; said on stderr, and empty), -prefix (default "tc", as
// NodeConfig.Prefix), -json (JSON instead of text: one object for inspect,
// invalidate and stats, one object a line for watch).
//
// inspect reads the value, flag and meta list in one MULTI transaction and
// the group stamps just after, so a change between the two can show a group
// as stale that a read a moment earlier would have accepted; the freshness
// zone is computed from -ttl, -fresh-for and -max-stale, which must match
// the Cache's Config to be right (Redis stores only the remaining lifetime).
//
// Exit status: 0 on success, 1 on an error, 2 on bad usage or an action
// refused for want of -yes.
package main
