// Package sim is the race simulation: a fleet of tier.Nodes, each with its
// own Redis connections, L1 and bus subscription, against one Redis and a
// versioned source of truth. It drives a seeded workload, injects faults on
// a seeded schedule, records every read and write on one clock, and judges
// every read. Its command is sim/cmd/tiersim.
//
// The nodes run in one process, or (Config.Procs) each in its own: the
// program started again (NodeProcess), with its own Go runtime, scheduler
// and L1 clock, which is what the Pause fault needs (a stopped process
// resumes its readers before its ticker), and what NodeKill kills. The
// parent keeps the source and the row locks, which its nodes reach through
// their pipes, and streams back every read and write as it returns; a node
// dies with its parent.
//
// # The source and the workload
//
// The source holds one version per key, incremented by every write. A
// write updates the source, then tells the cache through the writing node
// (Cache.Invalidate, Cache.Set of the new version, or, for a group, writes
// every member and calls Node.InvalidateGroup), as an application does.
// With Config.Absent every key is absent (version 0, not found) until its
// first write inserts it.
// Writes of one key are serialized, as a row lock would serialize them.
// A fetch reads the key's current version, then takes its latency, so a
// slow fetch returns an old version late. Cached values carry their key and
// version, so every read's version is known. Workers draw keys (uniform or
// Zipf) and operations (Mix) from a generator seeded by Config.Seed and
// their index: the same seed gives every worker the same operations, and
// the same fault schedule; only the interleaving is the machine's. Every
// operation's context ends after a generous bound, except the reads of the
// odd workers of a run in one process: they read as a caller whose
// context cannot be cancelled does (context.Background's kind), whose
// flight runs its load in the caller's goroutine, and a watchdog ends the
// run if one of them does not return within that bound.
//
// # What the checker guarantees
//
// All events are stamped with one monotonic clock, the system's
// (CLOCK_MONOTONIC, one clock for every process of the machine), from the
// run's origin, so "returned before began" is exact across processes too
// (to within each process's anchor of the clock, well under a
// microsecond). An operation whose process was killed before it returned
// has no record: a write that never returned is required of nobody. For
// each read:
//
//   - The required version is the highest version of the key whose write
//     returned nil before the read began. On the node that wrote it (the
//     same process, if it was killed and started again since), a write
//     that returned ErrPending counts too: tier applies it locally before it
//     returns. For other nodes a pending write is not required (its
//     announcement waits for Redis, and a later successful write supersedes
//     it); a write that failed otherwise is required of nobody.
//   - A read of at least that version is fresh. An older one is stale, and
//     its age is the time from the return of the first newer write to the
//     read's start.
//   - A read that tier marked permitted-stale (ReadInfo.Stale, or an error
//     wrapping tier.ErrStale: past FreshFor, fail-safe, served to a loser)
//     is counted apart: the caller opted into its age. Its version is
//     judged all the same, by the rules below: an invalidation removes a
//     stale value too, so a permitted-stale read older than a returned
//     write is allowed only where any stale read would be (R34).
//   - A "not found" (Config.Absent, negative caching) is version 0, judged
//     like any other version (R11).
//   - A key of a GetMany (Config.Many) is judged like a read, but GetMany
//     does not say which tier answered it: a stale key within the bound
//     is in bound whatever its tier, beyond it a violation.
//   - On the writing node, any stale read is a read-your-writes violation
//     (R21).
//   - On another node, a stale read from the node's own state, its L1 or a
//     load that another Get on the node began and this one joined, is
//     within the bound if its age is at most LeaseTTL + Slack: the node had
//     not yet applied the message, and tier promises no more than that its
//     lease ends such a window (R15, R22). Slack (default 100ms) covers the
//     L1 clock's 10ms tick and a late timer on a loaded machine.
//   - Every other stale read is a violation: from Redis, from a fill or an
//     uncached fetch, from L1 or a shared load past the bound, or a value
//     of another key.
//
// It also counts new-old inversions (a worker sees a version older than one
// it had seen, after that one's write returned), and reports per fault
// phase (the fault window in which the read began, or steady) the fresh,
// in-bound, permitted and violating reads with staleness ages; and, for the
// run, hits and latency per answering tier and the herd factor (source
// reads per key write).
//
// # Faults and negative controls
//
// Faults (FaultKind) open and close by the run's progress: subscription
// cuts, a node partitioned from Redis through its own fault proxy, Redis
// restarts and FLUSHALL, fetches slower than the flag TTL, fetch errors
// and Redis latency; with node processes, a node paused (SIGSTOP for at
// least twice its lease, while the others write keys it holds in L1, then
// SIGCONT with reads racing its catching up) and a node killed (SIGKILL)
// and started again. A fault the backend cannot inject is reported as
// skipped by the backend. Breaks are negative controls: they break the
// protocol through tier's test-only hooks, and the tests assert that the
// checker then reports violations. So that a control shows its bug however
// loaded the machine is, a driver forces the bug's race through the same
// hooks (holding a node's Get before its fill, say, while the key is
// written and another node claims it), Config.Drives times, each on a key
// of its own; the run lasts until it has, and until Config.MinWrites key
// writes have returned, or fails loudly at Config.Deadline (Result.Short).
// The coarse-lease control's race is the Pause fault's: it pauses until a
// read its node began the moment it resumed was answered from L1 with a
// value other nodes overwrote meanwhile, Config.Drives times.
//
// # Redis Cluster
//
// On a ClusterBackend (LaunchCluster, a private cluster of three masters
// with one replica each; ExternalCluster) every node has a
// redis.ClusterClient of its own, which reloads its slot map every second
// (at go-redis's default, a minute, a node would send a failed-over
// shard's commands to the dead master that long). A node that a Partition
// or Latency fault targets has a fault proxy in front of every member, so
// that it is cut off from, or slowed to, the whole cluster; sub-cut kills
// the subscriptions on every member, flush empties every master, restart
// restarts every member without persistence. Two faults are the cluster's
// own: Failover kills a master and waits for its replica's promotion
// before it brings it back as a replica, and Reshard moves slots, of hot
// keys and of the bus, between masters while the nodes use them (see
// FaultKind). A failover undoes acknowledged writes that its replica had
// not yet received unless writes wait for a replica (Config.WaitReplicas).
//
// The run takes the shards as it finds them when it begins (the slots of
// each master, ordered by the lowest), and the checker counts every read
// and write for the shard that served its key's Redis name when it began
// (Result.Shards), per phase: a failed-over shard keeps its index under
// its new master, and a slot that a reshard moved counts for its new shard
// from the end of the move.
//
// Run is safe to call from several goroutines with different backends;
// each run owns its nodes, clients, proxies and node processes and closes
// (or kills) them before it returns, on every way out.
package sim
