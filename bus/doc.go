// Package bus carries invalidations between the nodes of a fleet over Redis
// pub/sub, and tells each node when it can no longer prove that its L1 is
// fresh. It delivers events to a [Handler] and knows nothing of L1 or L2.
//
// # Publishing
//
// A [Publisher] batches the changes of concurrent callers (group commit):
// while one batch is in flight, arriving ops gather into the next, so a lone
// Publish waits for at most the batch in flight and its own, never for a
// timer. Each batch is one call of the caller's [ExecFunc], which must apply
// the batch's writes to Redis, draw the next sequence number from a Redis
// counter and publish the message, in one atomic step (one Lua script): a
// message can never overtake the writes it announces (docs/RACES.md R14), and
// sequence numbers are published in order. At most one batch is in flight.
// A lone caller (nothing queued or in flight) whose context outlasts a batch
// (no deadline, or one past the Publisher's Timeout) runs its batch in its
// own goroutine, without a switch to the Publisher's; a caller whose
// deadline is sooner hands its ops over, and returns by its deadline.
//
// # Wire format
//
// Version 1, big-endian, lengths as uvarints (see message.go for the
// offsets): magic 'T', version 1, kind (keys or flush), the origin node's
// 16-byte random ID, the 8-byte sequence number, and for kind keys the keys
// grouped by namespace followed by the names of invalidated groups. A message is at most [MaxMessageBytes]; a key at
// most [MaxKeyBytes]. [Decode] rejects any other version, kind, length or
// trailing byte with [ErrMalformed], never panics, and allocates only in
// proportion to its input. A future version gets a new version byte; nodes
// ignore messages of versions they do not know, so a rolling upgrade must
// keep publishing the old version until every node reads the new one.
//
// # Subscribing and the lease
//
// A [Subscriber] holds one pub/sub connection. Pub/sub is at-most-once, so
// it drops L1 whenever it cannot prove it saw every message:
//
//   - the connection fails or is killed (including by Redis for a subscriber
//     past its output-buffer limit): drop and revoke the lease until the
//     resubscribed connection answers a ping (R15, R16, R18);
//   - a sequence number is skipped, repeated or out of order: drop (R15, R19);
//   - no ping is answered within the lease: drop and revoke (R27); a
//     connection silent for a lease while no lease runs (dead without
//     knowing it) is replaced by a new one (R43);
//   - the fleet epoch key is missing or changed (FLUSHALL, a restart without
//     persistence, which disconnect nobody): drop (R23).
//
// The lease: the subscriber pings its connection every LeaseTTL/4. A pong
// proves that every message published before its ping was sent has been
// received, and, since the handler applies messages in order before the
// pong is read, applied. That holds on the server that publishes; with
// SubscriberConfig.SeqKey the proof does not rest on it: the subscriber
// reads the sequence counter just before each ping, and renews from the
// pong only once it has received every message up to that number (R53). The handler's Renew(sentAt) then lets L1 serve until
// sentAt + LeaseTTL. Hence the staleness bound: no node serves a value from
// L1 more than LeaseTTL after the invalidation that removed it, whatever is
// lost or cut, as long as L1 checks the lease against the monotonic clock
// when it serves (it does: a paused process must not serve under a lease
// that ran out while it slept, R40).
//
// Each renewal also samples Redis's clock (TIME) in the round trip that
// checks the fleet epoch: [Subscriber.RedisClock] relates it to this
// process's monotonic clock, so that a write can tell, on Redis's own
// clock, whether it landed after its caller gave up (R44).
//
// A node's own messages are not applied again (it applied them before its
// publish returned) but count for gap detection.
//
// On a Redis Cluster the bus is one shard channel (SubscriberConfig.Sharded:
// SSUBSCRIBE, and SPUBLISH by the publishing script), in the slot of its
// sequence counter and the fleet epoch: its messages stay within that
// slot's shard, so the subscription, the pings of the lease and the
// sequence numbers all live on the one master that serves the slot, and
// the guarantees above hold as on one server. When that slot moves (a
// reshard) Redis ends the subscription with SUNSUBSCRIBE: the subscriber
// treats it as a lost connection, drops L1, and subscribes again where the
// slot went (R50); a failover of that master is a lost connection too.
//
// # Thread-safety
//
// Publisher and Subscriber are safe for concurrent use; Handler methods are
// called one at a time. Both stop their goroutines in Close. A Handler (or
// an ExecFunc) that ends the goroutine calling it (runtime.Goexit) does
// not stop either: the Publisher fails that batch and goes on; the
// Subscriber's goroutine is taken over by a new one after a pause, which,
// for the receiving goroutine, treats it as a lost connection (R37).
package bus
