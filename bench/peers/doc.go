// Package peers benchmarks tiercache beside its peers, go-redis/cache
// v9.0.0 and rueidis v1.0.79's client-side caching, in the open. It has no
// API: everything is in its _test.go files. It is a module of its own, so
// that the peers never become dependencies of tiercache.
//
// Each benchmark starts one private redis-server (internal/redistest) and
// runs every library against it in the same run, one sub-benchmark after
// the other, beside a raw baseline where one means something. Read the
// ratios between the lines of one run, not the absolute numbers: they
// move with the machine and whatever else runs on it. Every library
// stores values of 200 bytes (strings: no codec cost for go-redis/cache;
// tiercache's CBOR envelope adds 13 bytes, and the header before it, the
// value's expiry and the stamps of its fleet's and namespace's groups,
// about 170 more), reads from 1024 keys, and has a local cache that keeps
// an entry for a minute (tiercache's Config.L1TTL default, go-redis/cache's
// TinyLFU ttl, rueidis's DoCache ttl).
//
// A sub-benchmark that times a library's local cache, and every tiercache
// one, starts its library afresh and warms it just before its timed loop,
// and closes it after: no local entry can reach its TTL within a loop
// however many times -count runs it, and no tiercache Node, whose lease
// sends Redis a GET, a PING, a SET and a TIME every 15 s here, runs during
// another library's loop, where that GET would count as the other's read.
//
// # What each benchmark measures
//
// BenchmarkL1Hit: a read answered by the library's local cache: a
// tiercache L1 hit, a go-redis/cache TinyLFU hit (which copies the bytes
// into a new string), a rueidis DoCache hit; the floor is a Get on a bare
// ristretto cache. Serial, and parallel with one goroutine per CPU, each
// on keys of its own. Afterwards each sub-benchmark checks, by the
// library's own account, that no read of its timed loop went to Redis.
//
// BenchmarkL2Hit: a read answered by Redis with the local cache out of the
// way, as fairly as each library allows: tiercache with Config.L1TTL < 0,
// of keys its node has already read (no script: a PTTL and one MGET of the
// value and the stamps of its fleet's and namespace's groups, pipelined;
// only a node's first read of a key, untimed here, runs the read script,
// one EVALSHA), go-redis/cache without a LocalCache (one GET), rueidis's
// Do of a GET on a client with DisableCache; the baseline is a bare
// go-redis GET. Serial, and parallel with 8 goroutines per CPU, each on
// keys of its own (so that no read can join another's, as tiercache's
// reads through its script do), which is where rueidis's pipelining of
// concurrent commands shows, and tiercache's joining of reads that
// overlap into one pipeline, every PTTL then one MGET (reads/MGET).
//
// BenchmarkBatch100: 100 keys in one call. From Redis: tiercache's GetMany
// with L1 off, of keys its node has already read (one pipeline of a TIME
// and a single MGET of the 100 values and the two stamps; keys it has not
// read would go to the read script, 100 EVALSHAs in one pipeline),
// go-redis/cache's 100 Gets one after another (v9.0.0 has no multi-get),
// rueidis's MGET and its DoMulti of 100 GETs, against a bare MGET and a
// bare pipeline of 100 GETs. From warm local caches: GetMany with L1 on,
// go-redis/cache's 100 Gets, rueidis's DoMultiCache, 100 ristretto Gets.
//
// BenchmarkFreshness: two nodes of each library (two clients or Nodes,
// each with its own local cache) against the same Redis. Each round takes
// a key never used before, seeds it with an old value, and reads it on
// both nodes until each answers it from its local cache; then node A
// writes a new value (tiercache: Cache.Set, or a source update and
// Cache.Invalidate; go-redis/cache: Set; rueidis: a SET through A), and a
// reader reads, pausing about 30µs between two reads (a nanosleep on a
// thread of its own, so that it neither spins a CPU away from the nodes
// nor waits on Go's millisecond timers), until a read returns the new
// value or 2 s have passed since the write returned. "other-node" reads on B, "same-node" on A, the writer.
// go-redis/cache tells no other node of a write: B serves the old value
// until its local TTL, so its rounds end at the cap.
//
// # Reading the numbers
//
// ns/op, B/op and allocs/op are the client side's, per read (or per batch,
// or per freshness round: write plus reads until fresh). redis-cmds/op is
// every command the server ran per operation, counting those a Lua script
// runs (none in these timed loops: a tiercache L2 hit is a PTTL and an
// MGET, or a PTTL and its share of an MGET, a batch a TIME and an MGET); redis-cpu-µs/op is the
// redis-server process's CPU time per operation, from INFO cpu, which
// matters because one Redis serves the whole fleet. Both are noise for
// local reads and for -benchtime=1x. value-B is the size of what the
// library stores in Redis for one value.
//
// fresh-p50-µs, fresh-p99-µs and fresh-max-µs are the delays from the
// return of the write to the return of the first read that answered the
// new value, over the rounds of a run; a round whose new value was not
// read within the cap counts as the cap (2,000,000 µs), and
// stale-at-cap/op says what fraction of the rounds did. stale-reads/op is
// the reads per round that answered the old value after the write had
// returned: its size depends on the pause between reads, so read it as
// zero or not zero. A delay is late by half a pause on average, and its
// tail is the scheduling of a busy machine as much as the library.
//
// CI runs every benchmark once (-benchtime=1x) so that they cannot rot;
// that checks the setup, not the speed. The tests in this package check
// the setup without the benchmarks: a local read of each library sends
// Redis none of its read commands, a Redis read sends exactly the commands
// it is said to (for tiercache: the read script for a key its node has not
// read yet, a PTTL and an MGET after), a freshness round sees what each
// library's mechanism implies.
package peers
