package sim

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// Defaults of Config's zero fields. The protocol's timings are shortened
// from tier's defaults so that a fault's effects, and the recovery from it,
// fit in a run of seconds.
const (
	DefaultNodes        = 3
	DefaultGoroutines   = 4
	DefaultKeys         = 100
	DefaultGroups       = 10
	DefaultDuration     = 5 * time.Second
	DefaultLeaseTTL     = 500 * time.Millisecond
	DefaultFlagTTL      = 200 * time.Millisecond
	DefaultRedisTimeout = 100 * time.Millisecond
	DefaultBreakerPause = 200 * time.Millisecond
	DefaultSlack        = 100 * time.Millisecond
	DefaultL1TTL        = time.Minute
	DefaultTTL          = 10 * time.Minute
	DefaultFaultDelay   = 20 * time.Millisecond
	DefaultMaxWindow    = 3 * time.Second
	DefaultDeadline     = 2 * time.Minute
)

// Mix weighs the kinds of operation a worker draws. Zero everywhere means
// 90 reads, 6 invalidations, 3 Sets and 1 group invalidation per 100.
type Mix struct {
	// Read is the weight of Get.
	Read int
	// Invalidate is the weight of a write followed by Cache.Invalidate.
	Invalidate int
	// Set is the weight of a write followed by Cache.Set of the new value.
	Set int
	// Group is the weight of a write of every member of a group followed by
	// Node.InvalidateGroup.
	Group int
}

func (m Mix) total() int { return m.Read + m.Invalidate + m.Set + m.Group }

// Latency is a uniform distribution of delays in [Min, Max]. Zero is no
// delay; Max below Min means Min.
type Latency struct {
	Min, Max time.Duration
}

// Config is one run of the simulation: the fleet, the workload, the faults
// and the protocol's timings. The zero value is valid: every zero field
// takes the default named in its comment. The same Config (with its Seed)
// gives every worker the same sequence of operations and the same fault
// schedule; the interleaving of workers is the machine's.
type Config struct {
	// Nodes is the number of tier.Nodes, each with its own Redis clients,
	// L1 and bus subscription. Default 3.
	Nodes int
	// Goroutines is the number of workers per node. Default 4.
	Goroutines int
	// Keys is the number of keys, 0..Keys-1. Default 100.
	Keys int
	// Zipf is the skew of key popularity: 0 is uniform, a value above 1 is
	// the s parameter of a Zipf distribution (key 0 the most popular).
	Zipf float64
	// Groups sets the groups: key k belongs to group k mod Groups of one
	// family and to group k mod (Groups+1) of another, so every key is in
	// two groups (R32). Default 10.
	Groups int
	// Mix weighs the operations. Default 90/6/3/1 (read, invalidate, set,
	// group).
	Mix Mix
	// Ops is the total number of operations, shared evenly between workers.
	// Zero means the run lasts Duration instead.
	Ops int64
	// Duration is the length of a run when Ops is zero: the least, if
	// MinWrites or Drives hold the run open longer. Default 5s.
	Duration time.Duration
	// MinWrites holds a timed run open until at least this many key writes
	// have returned (whatever their outcome), so that a loaded machine
	// cannot end a run before its workload happened. Zero: no minimum.
	MinWrites int64
	// Drives holds a negative control's run open until its driver has
	// driven the race this many times (see Break); each drive is an exact
	// interleaving, forced through tier's hooks, on a key of its own that
	// no worker touches. For CoarseLease, a drive is a pause after which a
	// read the node began the moment it resumed was answered by the L1
	// entry it held before (the scheduler decides whether a reader runs
	// before the node catches up). Zero: no drives.
	Drives int
	// Deadline bounds a timed run that MinWrites or Drives hold open: at
	// Deadline it ends whatever it lacks, and Result.Short says what. A run
	// that reaches it proves nothing. Default 2m.
	Deadline time.Duration
	// FetchLatency is how long a fetch takes after it read the source's
	// version (so a slow fetch returns an old version late, which is what
	// the flag protocol must refuse). Default zero.
	FetchLatency Latency
	// ValueBytes pads every value to about this many bytes (for runs under
	// maxmemory). Default zero.
	ValueBytes int
	// Seed seeds the workers' operations and the fault schedule.
	Seed int64
	// Faults is the fault schedule. Default none.
	Faults []Fault
	// MaxWindow caps how long a fault window stays open, whatever its End:
	// a fault that slows the workload (slow fetches, latency) would
	// otherwise stretch a window measured in operations. Default 3s.
	MaxWindow time.Duration
	// FaultDelay is the delay the latency fault adds to a node's Redis
	// traffic, each way. Default 20ms.
	FaultDelay time.Duration
	// LeaseTTL is tier.NodeConfig.LeaseTTL: the bound on L1 staleness when
	// messages are lost. Default 500ms.
	LeaseTTL time.Duration
	// FlagTTL is tier.NodeConfig.FlagTTL; the slow-fetch fault makes
	// fetches outlast it. Default 200ms.
	FlagTTL time.Duration
	// RedisTimeout is tier.NodeConfig.RedisTimeout. Default 100ms.
	RedisTimeout time.Duration
	// BreakerPause is tier.NodeConfig.BreakerPause. Default 200ms.
	BreakerPause time.Duration
	// WaitReplicas and WaitTimeout are tier.NodeConfig.WaitReplicas and
	// WaitTimeout: every write that changes Redis waits until that many
	// replicas acknowledged it, or returns ErrPending. A run with the
	// Failover fault needs 1 (the private cluster has one replica per
	// master): without it, a failover can undo an acknowledged
	// invalidation, and the checker reports the old value the promoted
	// replica serves as a violation. Defaults 0 (no waiting) and tier's
	// (RedisTimeout).
	WaitReplicas int
	WaitTimeout  time.Duration
	// L1TTL and TTL are the Cache's lifetimes in L1 and Redis. Defaults 1m
	// and 10m.
	L1TTL, TTL time.Duration
	// FreshFor, MaxStale, FetchTimeout, FailSafeThrottle, EarlyRefresh,
	// NotFoundTTL and Losers are the Cache's freshness settings (the
	// tier.Config fields of the same names): stale-while-revalidate,
	// fail-safe, early refresh, negative caching and the loser policy.
	// Defaults are tier's: all off, LoserWait. A read tier marks
	// permitted-stale is counted apart, never a violation.
	FreshFor, MaxStale, FetchTimeout, FailSafeThrottle time.Duration
	EarlyRefresh                                       float64
	NotFoundTTL                                        time.Duration
	Losers                                             tier.LoserPolicy
	// Absent makes every key absent from the source until its first write
	// inserts it: a fetch of a key at version 0 returns tier.ErrNotFound,
	// and a read answered "not found" is a read of version 0, judged like
	// any other (R11). Default false: every key exists at version 0.
	Absent bool
	// Many is the percentage of reads done as one Cache.GetMany of
	// ManyKeys keys (read through Config.FetchMany), each key judged like
	// a read. GetMany does not say which tier answered each key, so a
	// stale key within the bound is counted in bound whatever its tier,
	// and beyond it is a violation. Default 0.
	Many int
	// ManyKeys is the number of keys of one GetMany. Default 4.
	ManyKeys int
	// Slack is added to LeaseTTL to make the bound within which a stale L1
	// read is not a violation: it covers the L1 clock's 10ms tick and the
	// lateness of the timer that ends a lease on a loaded machine.
	// Default 100ms.
	Slack time.Duration
	// Procs runs every node in its own OS process: this program, started
	// again, which must call NodeProcess first thing in main (a test
	// binary, in TestMain). Each node process has its own Go runtime,
	// scheduler, L1 clock and Redis connections; the source of truth and
	// the row locks stay in this process, which the nodes reach through
	// their standard input and output, and to which they stream every
	// read and write, stamped on CLOCK_MONOTONIC (one clock for every
	// process of the machine). A node process dies with this one. The
	// Pause and NodeKill faults need it. Linux only. Default false: every
	// node in this process.
	Procs bool
	// PauseFor is how long the Pause fault keeps a node stopped in each
	// cycle (and at least the bound past the last write made meanwhile).
	// Default and least 2*LeaseTTL.
	PauseFor time.Duration
	// Break breaks the protocol on purpose: a negative control, for tests
	// of the checker only. Default BreakNone.
	Break Break
	// Progress, if set, is called about every 200ms with a snapshot.
	Progress func(Progress) `json:"-"`
}

// Bound is the staleness bound the checker applies to L1 reads on nodes
// other than the writer: LeaseTTL plus Slack.
func (c Config) Bound() time.Duration { return c.LeaseTTL + c.Slack }

// withDefaults fills in zero fields and checks the rest.
func (c Config) withDefaults() (Config, error) {
	def := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	defD := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	def(&c.Nodes, DefaultNodes)
	def(&c.Goroutines, DefaultGoroutines)
	def(&c.Keys, DefaultKeys)
	def(&c.Groups, DefaultGroups)
	if c.Mix == (Mix{}) {
		c.Mix = Mix{Read: 90, Invalidate: 6, Set: 3, Group: 1}
	}
	if c.Ops == 0 {
		defD(&c.Duration, DefaultDuration)
	}
	defD(&c.FaultDelay, DefaultFaultDelay)
	defD(&c.MaxWindow, DefaultMaxWindow)
	defD(&c.LeaseTTL, DefaultLeaseTTL)
	defD(&c.FlagTTL, DefaultFlagTTL)
	defD(&c.RedisTimeout, DefaultRedisTimeout)
	defD(&c.BreakerPause, DefaultBreakerPause)
	defD(&c.L1TTL, DefaultL1TTL)
	defD(&c.TTL, DefaultTTL)
	defD(&c.Slack, DefaultSlack)
	def(&c.ManyKeys, 4)
	defD(&c.Deadline, DefaultDeadline)
	defD(&c.PauseFor, 2*c.LeaseTTL)
	switch {
	case c.Nodes < 1 || c.Goroutines < 1 || c.Keys < 1 || c.Groups < 1:
		return c, errors.New("sim: Nodes, Goroutines, Keys and Groups must be positive")
	case c.Nodes > 1000 || c.Goroutines > 10000:
		return c, errors.New("sim: at most 1000 nodes of 10000 workers")
	case c.Mix.Read < 0 || c.Mix.Invalidate < 0 || c.Mix.Set < 0 || c.Mix.Group < 0 || c.Mix.total() == 0:
		return c, fmt.Errorf("sim: bad mix %+v", c.Mix)
	case c.Zipf != 0 && c.Zipf <= 1:
		return c, fmt.Errorf("sim: Zipf %v must be 0 (uniform) or above 1", c.Zipf)
	case c.Many < 0 || c.Many > 100 || c.ManyKeys < 1:
		return c, fmt.Errorf("sim: Many %d must be a percentage and ManyKeys %d positive", c.Many, c.ManyKeys)
	case c.WaitReplicas < 0 || c.WaitTimeout < 0:
		return c, errors.New("sim: WaitReplicas and WaitTimeout may not be negative")
	case c.Ops < 0 || c.Duration < 0 || c.MinWrites < 0 || c.Drives < 0 || c.Deadline < 0:
		return c, errors.New("sim: Ops, Duration, MinWrites, Drives and Deadline may not be negative")
	case c.Drives > 0 && drivers[c.Break] == nil && c.Break != CoarseLease:
		return c, fmt.Errorf("sim: Drives needs a negative control with a driver, not %q", c.Break)
	case c.PauseFor < 2*c.LeaseTTL:
		return c, fmt.Errorf("sim: PauseFor %s is under twice the lease, %s", c.PauseFor, 2*c.LeaseTTL)
	case c.Procs && !procsSupported:
		return c, errors.New("sim: Procs needs Linux (parent-death signals, SIGSTOP)")
	case c.Procs && c.Break != BreakNone && c.Break != CoarseLease:
		return c, fmt.Errorf("sim: the %s control drives its race across nodes in one process; it cannot run with Procs", c.Break)
	case !c.Procs && c.Break == CoarseLease:
		return c, fmt.Errorf("sim: the %s control pauses node processes; it needs Procs", c.Break)
	}
	for i, f := range c.Faults {
		if _, ok := faultKinds[f.Kind]; !ok {
			return c, fmt.Errorf("sim: unknown fault %q", f.Kind)
		}
		if f.Start < 0 || f.End > 1 || f.End <= f.Start {
			return c, fmt.Errorf("sim: fault %s window [%v, %v) is not inside [0, 1]", f.Kind, f.Start, f.End)
		}
		for _, g := range c.Faults[:i] {
			if slices.Contains(ProcFaults, f.Kind) && slices.Contains(ProcFaults, g.Kind) && f.Start < g.End && g.Start < f.End {
				return c, fmt.Errorf("sim: the windows of %s and %s overlap: a node process is paused or killed at a time", g.Kind, f.Kind)
			}
			if slices.Contains(ClusterFaults, f.Kind) && slices.Contains(ClusterFaults, g.Kind) && f.Start < g.End && g.Start < f.End {
				return c, fmt.Errorf("sim: the windows of %s and %s overlap: a cluster is failed over or resharded one change at a time", g.Kind, f.Kind)
			}
		}
	}
	if _, ok := breaks[c.Break]; !ok {
		return c, fmt.Errorf("sim: unknown break %q", c.Break)
	}
	return c, nil
}
