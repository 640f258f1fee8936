package sim

import (
	"slices"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// Scenario is a named run: the workload and faults that exercise one entry
// of docs/RACES.md in the randomized simulation, beside the deterministic test
// that drives its exact interleaving. Scenarios are short (about a second)
// so that the test suite runs every one.
type Scenario struct {
	// Name is the docs/RACES.md number, "R15"; a suffix names one variant of
	// an entry, "R10-fetch".
	Name string
	// About says what the run does to provoke the race.
	About string
	// Config is the run; its Faults are built by Schedule from Faults.
	Config Config
	// Faults are the fault classes of the run, spread by Schedule, or, if
	// Whole is set, each open for the whole run.
	Faults []FaultKind
	Whole  bool
	// RedisArgs are extra redis-server arguments (a private server only).
	RedisArgs []string
}

// Build returns the scenario's Config with the given seed and its faults
// scheduled.
func (s Scenario) Build(seed int64) Config {
	c := s.Config
	c.Seed = seed
	if c.Duration == 0 && c.Ops == 0 {
		c.Duration = time.Second
	}
	nodes := max(c.Nodes, 1)
	if c.Nodes == 0 {
		nodes = DefaultNodes
	}
	if s.Whole {
		c.Faults = nil
		for _, k := range s.Faults {
			c.Faults = append(c.Faults, Fault{Kind: k, Start: 0, End: 1})
		}
	} else if len(s.Faults) > 0 {
		c.Faults = Schedule(s.Faults, nodes, seed)
	}
	return c
}

// hot is a workload of few keys, frequent writes and fetches slow enough
// that writes land while they run: the shape of most flag-protocol races.
func hot(keys int, read, inv, set, group int, fetch Latency) Config {
	return Config{Keys: keys, Groups: 2, Mix: Mix{read, inv, set, group}, FetchLatency: fetch, Goroutines: 4}
}

var ms = time.Millisecond

// losers is R10's run with loser policy p: a herd on four hot keys whose
// values outlive their short TTL by MaxStale, and slow fetches, so that a
// Get past the TTL often finds a claimant fetching and a stale value to
// serve; writes are rare enough that values live to their TTL.
func losers(p tier.LoserPolicy) Config {
	return Config{Nodes: 4, Goroutines: 4, Keys: 4, Groups: 2, Mix: Mix{Read: 95, Invalidate: 3, Set: 2},
		FetchLatency: Latency{3 * ms, 8 * ms}, TTL: 10 * ms, MaxStale: 300 * ms, Losers: p}
}

// Scenarios are the named runs, one per docs/RACES.md entry that a deterministic
// test covers.
var Scenarios = []Scenario{
	{Name: "R01", About: "invalidations land while fetches of the same hot keys run; their fills must be refused",
		Config: hot(4, 70, 30, 0, 0, Latency{ms, 3 * ms})},
	{Name: "R02", About: "a herd: many workers on four nodes miss one key at once, while it is invalidated",
		Config: Config{Nodes: 4, Goroutines: 6, Keys: 1, Groups: 1, Mix: Mix{Read: 97, Invalidate: 3}, FetchLatency: Latency{2 * ms, 2 * ms}}},
	{Name: "R03", About: "flag ABA: fetches of varying length on two hot keys, so a slow fetch finishes after an invalidation and a newer claim",
		Config: hot(2, 60, 40, 0, 0, Latency{0, 4 * ms})},
	{Name: "R04", About: "one fetch in four outlasts the flag TTL for the whole run; its fill must be refused",
		Config: hot(8, 80, 20, 0, 0, Latency{0, ms}), Faults: []FaultKind{SlowFetch}, Whole: true},
	{Name: "R05", About: "slow fetches lose their flag to new claimants while writes continue",
		Config: hot(4, 60, 20, 20, 0, Latency{0, ms}), Faults: []FaultKind{SlowFetch}, Whole: true},
	{Name: "R06", About: "fetches that read the source after they claim, against frequent writes",
		Config: hot(8, 80, 20, 0, 0, Latency{ms, ms})},
	{Name: "R07", About: "fills and invalidations of two keys as close together as the machine allows",
		Config: hot(2, 50, 50, 0, 0, Latency{})},
	{Name: "R08", About: "claimants fail (fetch errors) or outlast their flag; waiters must neither hang nor fill twice",
		Config: hot(4, 80, 20, 0, 0, Latency{0, ms}), Faults: []FaultKind{FetchError, SlowFetch}, Whole: true},
	{Name: "R09", About: "every node writes one key, by Invalidate and Set, while all read it",
		Config: hot(1, 50, 25, 25, 0, Latency{0, ms})},
	{Name: "R10", About: "a herd past a short TTL, losers wait for the claimant (LoserWait): only the claimant fills",
		Config: losers(tier.LoserWait)},
	{Name: "R10-serve-stale", About: "R10 with LoserServeStale: losers answer with the kept stale value, counted as permitted-stale",
		Config: losers(tier.LoserServeStale)},
	{Name: "R10-fetch", About: "R10 with LoserFetch: losers fetch without caching",
		Config: losers(tier.LoserFetch)},
	{Name: "R11", About: "keys absent from the source until inserted, \"not found\" cached for a minute: an insert (Invalidate, Set or a group's invalidation) must end it",
		Config: Config{Keys: 256, Groups: 8, Mix: Mix{Read: 83, Invalidate: 8, Set: 6, Group: 3}, FetchLatency: Latency{0, ms},
			Absent: true, NotFoundTTL: time.Minute, Many: 20}},
	{Name: "R12", About: "four nodes read a few keys from Redis while others invalidate them: no fill lands after its message",
		Config: Config{Nodes: 4, Keys: 4, Groups: 2, Mix: Mix{Read: 80, Invalidate: 20}}},
	{Name: "R13", About: "many workers of two nodes fill and invalidate two keys: ristretto's buffered Set must not resurrect a value",
		Config: Config{Nodes: 2, Goroutines: 8, Keys: 2, Groups: 1, Mix: Mix{Read: 70, Invalidate: 30}}},
	{Name: "R14", About: "nodes hold hot keys in L1 while others invalidate: the message must not overtake the delete",
		Config: Config{Nodes: 4, Keys: 4, Groups: 2, Mix: Mix{Read: 90, Invalidate: 10}}},
	{Name: "R15", About: "subscriptions are killed (CLIENT KILL TYPE pubsub) while writes go on: nodes drop L1 and resubscribe",
		Config: Config{Keys: 32}, Faults: []FaultKind{SubCut}},
	{Name: "R16", About: "subscriptions are killed as Redis kills a slow subscriber: the same recovery as R15",
		Config: Config{Keys: 32, Mix: Mix{Read: 70, Invalidate: 30}}, Faults: []FaultKind{SubCut}},
	{Name: "R17", About: "a node cut off from Redis keeps writing: its invalidations apply locally, queue, and replay",
		Config: Config{Keys: 32, Mix: Mix{Read: 60, Invalidate: 20, Set: 20}}, Faults: []FaultKind{Partition}},
	{Name: "R18", About: "every node loses and regains its subscription (restart, kill): none serves L1 before it is confirmed",
		Config: Config{Keys: 32}, Faults: []FaultKind{Restart, SubCut}},
	{Name: "R19", About: "a storm of invalidations of one key from every node: duplicates and reorderings cost misses only",
		Config: hot(1, 40, 60, 0, 0, Latency{})},
	{Name: "R20", About: "slow fetches of two hot keys with many workers per node: a read after an invalidation never joins an older flight",
		Config: Config{Goroutines: 8, Keys: 2, Groups: 1, Mix: Mix{Read: 80, Invalidate: 20}, FetchLatency: Latency{2 * ms, 5 * ms}}},
	{Name: "R21", About: "nodes read right after their own writes (Invalidate and Set): read-your-writes is checked on every read",
		Config: hot(4, 50, 25, 25, 0, Latency{0, ms})},
	{Name: "R22", About: "reads on other nodes after a write: staleness within the bus delay, measured",
		Config: Config{Nodes: 4, Keys: 16, Mix: Mix{Read: 85, Invalidate: 15}}},
	{Name: "R23", About: "Redis restarts without persistence and is flushed: fills in flight refused, every node drops L1",
		Config: Config{Keys: 32}, Faults: []FaultKind{Restart, Flush}},
	{Name: "R24", About: "restarts with a short Redis TTL below L1's: no L1 entry outlives its Redis entry (resurrection from a snapshot is the unit test's)",
		Config: Config{Keys: 32, TTL: 300 * ms, L1TTL: time.Minute}, Faults: []FaultKind{Restart}},
	{Name: "R25", About: "a restart that loses the last writes, approximated by a restart without persistence under writes",
		Config: Config{Keys: 32, Mix: Mix{Read: 70, Invalidate: 15, Set: 15}}, Faults: []FaultKind{Restart}},
	{Name: "R26", About: "Redis under a small maxmemory evicts values, claims and stamps",
		Config:    Config{Keys: 2000, Groups: 100, ValueBytes: 2048, Mix: Mix{Read: 85, Invalidate: 5, Set: 5, Group: 5}},
		RedisArgs: []string{"--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"}},
	{Name: "R27", About: "a node is partitioned from Redis: L1 follows its lease, reads go to the source, writes queue",
		Config: Config{Keys: 32}, Faults: []FaultKind{Partition}},
	{Name: "R31", About: "group invalidations land while member fetches run",
		Config: hot(8, 70, 0, 0, 30, Latency{ms, 3 * ms})},
	{Name: "R32", About: "every key is in two groups; either group's invalidation must make it stale",
		Config: hot(12, 70, 0, 0, 30, Latency{0, ms})},
	{Name: "R33", About: "one group of 500 keys invalidated under reads: correct whatever the group's size",
		Config: Config{Keys: 500, Groups: 1, Mix: Mix{Read: 95, Invalidate: 3, Group: 2}}},
	{Name: "R34", About: "values go stale (FreshFor 20ms of TTL 40ms) and are kept 300ms more for fail-safe, while fetches fail or outlast FetchTimeout: stale answers are permitted, never older than a returned write beyond the bound",
		Config: Config{Keys: 16, Groups: 4, Mix: Mix{Read: 88, Invalidate: 5, Set: 5, Group: 2}, FetchLatency: Latency{0, 2 * ms},
			TTL: 40 * ms, FreshFor: 20 * ms, MaxStale: 300 * ms, FetchTimeout: 30 * ms, FailSafeThrottle: 20 * ms, Many: 10},
		Faults: []FaultKind{FetchError, SlowFetch}},
	{Name: "R35", About: "early refresh with a large EarlyRefresh (50) on a 200ms TTL, so hot keys refresh often, under writes",
		Config: Config{Keys: 8, Groups: 2, Mix: Mix{Read: 80, Invalidate: 10, Set: 8, Group: 2}, FetchLatency: Latency{ms, 2 * ms},
			TTL: 200 * ms, EarlyRefresh: 50, Many: 10}},
}

// ScenarioNamed returns the scenario called name.
func ScenarioNamed(name string) (Scenario, bool) {
	i := slices.IndexFunc(Scenarios, func(s Scenario) bool { return s.Name == name })
	if i < 0 {
		return Scenario{}, false
	}
	return Scenarios[i], true
}
