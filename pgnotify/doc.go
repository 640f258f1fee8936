// Package pgnotify invalidates a tiercache fleet from PostgreSQL: a
// trigger on a table sends the keys and groups each write changes with
// NOTIFY, and a [Listener] applies them with tier's Node.Invalidate, so
// that a write made by any client (psql, a migration, another service)
// evicts the fleet's copies, as the program's own Invalidate would.
//
// # Mechanism
//
// [TriggerSQL] renders trigger.sql for a table: a row trigger, AFTER
// INSERT OR UPDATE OR DELETE, sends {"ns":..., "keys":[...],
// "groups":[...]} with the key and groups of the NEW row, the OLD row, or
// both on an UPDATE (so a changed key, or a row moved between groups,
// invalidates the old and the new); a statement trigger, AFTER TRUNCATE,
// sends {"ns":..., "all":true}. A key is its column's ::text, which must
// be its string form in the cache (tier.Config.Key; an integer's decimal
// form by default). PostgreSQL delivers a notification when, and only if,
// the write's transaction commits, in commit order. [ParsePayload] reads
// the format; [Notification.Encode] writes it, for a program that sends
// its own (pg_notify in the write's transaction).
//
// The Listener holds one connection of its own (not a pool's), LISTENs on
// Config.Channel and, for each notification, invalidates its keys
// (tier.Keys), groups (tier.Groups) or namespace (tier.Namespace) through
// Config.Node: one Invalidate call, one round trip to Redis and one bus
// message for all the notifications that arrived while the previous call
// ran. One Listener serves a whole fleet: the bus takes each invalidation
// to every node.
//
// # Guarantee
//
// While the Listener is connected, a write committed at time c is applied
// on its node, in Redis and on the bus by c + d, where d is the time the
// notification takes to reach the Listener and its Invalidate call to
// return, and on every other node within tier's bound after that: when its
// bus message arrives, and never later than NodeConfig.LeaseTTL.
//
// The Listener can vouch only for the notifications sent between a
// successful LISTEN and the loss of its connection. Writes committed
// outside that span (while it was disconnected, before it first started,
// or on a connection lost without a word, which a ping finds within
// Config.PingInterval + PingTimeout) are a gap. It closes the gap as the
// bus does for lost messages: after every LISTEN, the first one included
// (unless Config.SkipInitialInvalidation), it invalidates every namespace
// of Config.Namespaces and every group of Config.Groups, before Ready is
// closed and before it applies any notification. Between the loss and
// that invalidation the fleet may serve values older than writes
// committed since: the bound during a gap is the time until the Listener
// is back, and reconnection is retried at once, then with backoff
// (Config.MinBackoff, MaxBackoff) for as long as the database does not
// answer. For the gap to be closed, Config.Namespaces must list every
// namespace a notification on the channel can make stale: those the
// triggers name, and those of the entries in the groups they send. A
// notification naming another namespace is applied all the same, counted
// (Stats.UnknownNamespaces) and warned about.
//
// # Bad input
//
// A payload that does not parse (any client can NOTIFY the channel) is
// counted (Stats.Malformed), logged with the parse error and the first
// bytes of the payload, and answered by invalidating every configured
// namespace and group, since the Listener cannot know what changed. A
// notification the node refuses (a key longer than its MaxKeyBytes) is
// counted (Stats.Rejected) and answered by invalidating its namespace. A
// lost connection, a failed attempt, a failed invalidation, a panic in
// Config.Connect: each is counted in [Stats], logged, and followed by the
// next attempt; the Listener never stops before Close and never crashes
// the process. A Config.Logger whose handler panics loses its records,
// counted (Stats.LoggerPanics), and nothing else. A Connect or a Logger
// that ends the Listener's goroutine (runtime.Goexit, as t.FailNow does)
// costs an attempt or a connection, counted as a panic's is: a new
// goroutine takes over after the backoff, and its next connection closes
// the gap as any reconnection does. If Redis is unreachable, an invalidation applies on the
// Listener's node and is queued for the fleet by tier (tier.ErrPending,
// Stats.Pending), which is replayed when Redis answers.
//
// # Thread-safety and lifetime
//
// A Listener's methods are safe for concurrent use. [New] starts its one
// goroutine (and, while connected, one more that reads the connection);
// [Listener.Close] stops both, closes the connection and waits for them.
// Close the Listener before its Node.
package pgnotify
