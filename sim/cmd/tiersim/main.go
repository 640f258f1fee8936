// Command tiersim runs the race simulation: a fleet of tiercache nodes
// against one Redis and a versioned source of truth, with faults injected
// on a seeded schedule, and every read judged.
//
//	go run ./sim/cmd/tiersim                      # 3 nodes, 10s, every fault class
//	go run ./sim/cmd/tiersim -scenario R15        # one docs/RACES.md scenario
//	go run ./sim/cmd/tiersim -nodes 8 -ops 1000000 -faults all
//	go run ./sim/cmd/tiersim -procs               # every node its own process, pause and node-kill too
//	go run ./sim/cmd/tiersim -cluster             # a private Redis Cluster, failover and reshard too
//
// It needs nothing installed: it starts a private redis-server when one is
// on PATH, and otherwise an embedded in-process Redis (miniredis), and says
// which; -redis ADDR uses a server you give it (never flushed nor
// restarted: those faults are then skipped). Faults a backend cannot inject
// are reported as skipped by the backend, never silently left out.
//
// With -cluster it starts a private Redis Cluster of three masters with one
// replica each (redis-server and redis-cli must be on PATH), and -redis
// with several addresses, A,B,C, uses a cluster you give it (never flushed,
// restarted, failed over nor resharded). Every node then has a cluster
// client of its own; the failover fault kills the master of a shard that
// holds keys and brings it back as a replica once its replica took over,
// and the reshard fault moves slots of hot keys (and the bus's) to another
// master while the nodes read and write them; the table counts the reads
// and writes of each shard, per phase. On a cluster every write waits for
// one replica's acknowledgement (-wait-replicas 1), without which a
// failover may undo an acknowledged invalidation.
//
// With -procs every node is its own process (this program started again):
// the pause fault stops one (SIGSTOP) while others write keys it holds, and
// continues it; node-kill kills one (SIGKILL) and starts it again.
//
// What it guarantees to measure: every event of every node, in every
// process, is stamped with one monotonic clock (CLOCK_MONOTONIC). A read's required version is the
// highest version of its key whose write's Invalidate, Set or
// InvalidateGroup had returned (nil) before the read began; on the writing
// node, writes that returned ErrPending count too. A read returning less is
// stale. A stale read on another node from its own state (its L1, or a load
// another of its Gets began) within the bound, LeaseTTL plus a slack, is
// counted as stale within bound; a permitted-stale value is counted apart;
// every other stale read is a violation: from Redis, from a fill, from L1
// or a shared load beyond the bound, or on the writing node after its own
// write (read-your-writes).
//
// Output: a progress line on stderr, a table on stdout (or JSON with
// -json), plots with -report DIR, and exit status 1 if any read was a
// violation (2 if the run could not be set up).
//
// -break NAME breaks the protocol on purpose, through test-only hooks, to
// show that the checker sees the bug: it is a negative control, not a mode
// to run anything with. Alone (with no workload flag) it runs the control's
// own workload and drives its race until it has been forced three times;
// a run its deadline cut short exits 2.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/sim"
	"github.com/tiercache/tiercache/tier"
)

func main() {
	sim.NodeProcess()             // -procs starts this program again as each node
	redis.SetLogger(quietRedis{}) // dial failures are the faults' doing
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// quietRedis drops go-redis's own log lines.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// clusterMix is the default mix on a cluster: no group invalidations. Each
// runs a script in every one of the 16,384 slots, which takes a local
// cluster 0.2-0.5s with every master busy meanwhile; one in a hundred
// operations would leave a run a few hundred operations a second.
const clusterMix = "90/6/4/0"

// flags are the command's workload flags.
type flags struct {
	nodes, workers, keys, groups    *int
	zipf                            *float64
	mix, fetch, faults, scenario    *string
	brk                             *string
	ops, seed                       *int64
	duration, lease, flagTTL, slack *time.Duration

	ttl, l1TTL, freshFor, maxStale, fetchTimeout *time.Duration
	throttle, notFoundTTL                        *time.Duration
	earlyRefresh                                 *float64
	losers                                       *string
	absent                                       *bool
	many, manyKeys                               *int
	procs                                        *bool
	pauseFor                                     *time.Duration
	waitReplicas                                 *int
	waitTimeout, redisTimeout                    *time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tiersim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fl := flags{
		nodes:    fs.Int("nodes", 3, "nodes in the fleet, each with its own Redis connections, L1 and subscription"),
		workers:  fs.Int("goroutines", 4, "workers per node"),
		keys:     fs.Int("keys", 100, "number of keys"),
		zipf:     fs.Float64("zipf", 0, "key popularity: 0 uniform, or a Zipf s above 1"),
		groups:   fs.Int("groups", 10, "groups per family (every key is in two groups)"),
		mix:      fs.String("mix", "90/6/3/1", "weights of read/invalidate/set/group-invalidate"),
		ops:      fs.Int64("ops", 0, "total operations (0: run for -duration)"),
		duration: fs.Duration("duration", 10*time.Second, "length of the run when -ops is 0"),
		fetch:    fs.String("fetch-latency", "0", "fetch latency, uniform: `MIN[-MAX]`, e.g. 1ms-5ms"),
		faults:   fs.String("faults", "all", "fault classes, comma-separated, spread over the run: "+strings.Join(kindNames(), ",")+", all (failover and reshard on a cluster only, pause and node-kill with -procs only) or none"),
		procs:    fs.Bool("procs", false, "every node its own OS process (this program started again); needed by the pause and node-kill faults; Linux"),
		pauseFor: fs.Duration("pause", 0, "how long the pause fault keeps a node stopped in each cycle (0: twice -lease, the least)"),
		seed:     fs.Int64("seed", 1, "seed of the operations and the fault schedule"),
		scenario: fs.String("scenario", "", "run a named docs/RACES.md scenario (R01..R35; \"list\" lists them); other flags given override it"),
		brk:      fs.String("break", "", "TEST-ONLY negative control: break the protocol on purpose to show the checker sees it: constant-flag, publish-before-delete, no-l1-fence, no-forget, coarse-lease (with -procs and the pause fault)"),
		lease:    fs.Duration("lease", sim.DefaultLeaseTTL, "NodeConfig.LeaseTTL: the staleness bound when messages are lost"),
		flagTTL:  fs.Duration("flag-ttl", sim.DefaultFlagTTL, "NodeConfig.FlagTTL (slow-fetch makes fetches outlast it)"),
		slack:    fs.Duration("slack", sim.DefaultSlack, "added to -lease to make the bound for stale L1 reads"),

		ttl:          fs.Duration("ttl", sim.DefaultTTL, "Config.TTL: a value's lifetime in Redis"),
		l1TTL:        fs.Duration("l1-ttl", sim.DefaultL1TTL, "Config.L1TTL: a value's lifetime in L1"),
		freshFor:     fs.Duration("fresh-for", 0, "Config.FreshFor: stale-while-revalidate between it and -ttl (0: off)"),
		maxStale:     fs.Duration("max-stale", 0, "Config.MaxStale: fail-safe keeps a value this long past -ttl (0: off)"),
		fetchTimeout: fs.Duration("fetch-timeout", 0, "Config.FetchTimeout: bound on a fetch with a stale value to fall back to"),
		throttle:     fs.Duration("fail-safe-throttle", 0, "Config.FailSafeThrottle (0: tier's default, 1s)"),
		notFoundTTL:  fs.Duration("not-found-ttl", 0, "Config.NotFoundTTL: negative caching (0: off); see -absent"),
		earlyRefresh: fs.Float64("early-refresh", 0, "Config.EarlyRefresh: XFetch's beta (0: off)"),
		losers:       fs.String("losers", "wait", "Config.Losers: wait, serve-stale or fetch"),
		absent:       fs.Bool("absent", false, "every key is absent from the source (not found) until its first write inserts it"),
		many:         fs.Int("many", 0, "percentage of reads done as one GetMany of -many-keys keys"),
		manyKeys:     fs.Int("many-keys", 4, "keys per GetMany"),
		waitReplicas: fs.Int("wait-replicas", 0, "NodeConfig.WaitReplicas: writes wait until this many replicas acknowledged them (default 1 on a cluster, else 0)"),
		waitTimeout:  fs.Duration("wait-timeout", 0, "NodeConfig.WaitTimeout (0: tier's default, the Redis timeout)"),
		redisTimeout: fs.Duration("redis-timeout", sim.DefaultRedisTimeout, "NodeConfig.RedisTimeout: the bound on every Redis operation"),
	}
	var (
		redisAddr = fs.String("redis", "", "use the Redis at `ADDR`, or the Redis Cluster at ADDR,ADDR,... (never flushed, restarted, failed over nor resharded); default: a private redis-server if on PATH, else embedded miniredis")
		cluster   = fs.Bool("cluster", false, "run on a private Redis Cluster of 3 masters with 1 replica each (redis-server and redis-cli on PATH), or with -redis on the cluster it names")
		embedded  = fs.Bool("embedded", false, "use the embedded miniredis even if redis-server is on PATH")
		asJSON    = fs.Bool("json", false, "write the result as JSON instead of a table")
		report    = fs.String("report", "", "write plots (PNG) to `DIR`")
		quiet     = fs.Bool("q", false, "no progress line")
	)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tiersim [flags]\n\nRuns a fleet of tiercache nodes against one Redis, or a Redis Cluster, with faults injected, judges every read, and exits 1 on any violation.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *fl.scenario == "list" {
		for _, s := range sim.Scenarios {
			fmt.Fprintf(stdout, "%s  %s\n", s.Name, s.About)
		}
		return 0
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	onCluster := *cluster || strings.Contains(*redisAddr, ",")
	cfg, redisArgs, err := configure(fl, given, onCluster, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "tiersim:", err)
		return 2
	}

	backend, stop, err := pickBackend(*redisAddr, onCluster, *embedded, redisArgs, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "tiersim:", err)
		return 2
	}
	defer stop()
	fmt.Fprintf(stderr, "tiersim: using %s\n", backend.Name())

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	if !*quiet {
		cfg.Progress = func(p sim.Progress) {
			total := ""
			if p.Total > 0 {
				total = "/" + strconv.FormatInt(p.Total, 10)
			}
			fmt.Fprintf(stderr, "\r%6.1fs  %d%s ops  %3.0f%%  phase %-12s", p.Elapsed.Seconds(), p.Done, total, 100*p.Fraction, p.Phase)
		}
	}
	res, err := sim.Run(ctx, cfg, backend)
	if !*quiet {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, "tiersim:", err)
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(stderr, "tiersim:", err)
			return 2
		}
	} else if err := res.WriteTable(stdout); err != nil {
		fmt.Fprintln(stderr, "tiersim:", err)
		return 2
	}
	if *report != "" {
		files, err := res.Plot(*report)
		if err != nil {
			fmt.Fprintln(stderr, "tiersim: report:", err)
			return 2
		}
		fmt.Fprintf(stderr, "tiersim: wrote %s\n", strings.Join(files, ", "))
	}
	if res.Short != "" {
		fmt.Fprintln(stderr, "tiersim: the run was cut short:", res.Short)
		return 2
	}
	if res.Violations() > 0 {
		return 1
	}
	return 0
}

// configure builds the run from the flags: a scenario's or the command's
// defaults, overridden by the flags given; -break alone (with no workload
// flag) takes the workload that shows its bug. On a cluster, "all" faults
// include the cluster's, and writes wait for one replica unless
// -wait-replicas says otherwise.
func configure(fl flags, given map[string]bool, onCluster bool, stderr io.Writer) (cfg sim.Config, redisArgs []string, err error) {
	set := maps.Clone(given)
	if *fl.scenario != "" {
		s, ok := sim.ScenarioNamed(*fl.scenario)
		if !ok {
			return cfg, nil, fmt.Errorf("no scenario %q (try -scenario list)", *fl.scenario)
		}
		cfg, redisArgs = s.Build(*fl.seed), s.RedisArgs
		fmt.Fprintf(stderr, "tiersim: scenario %s: %s\n", s.Name, s.About)
	} else {
		for _, name := range []string{"nodes", "goroutines", "keys", "groups", "mix", "duration", "faults"} {
			set[name] = true // the command's defaults apply
		}
	}
	ints := []struct {
		name string
		dst  *int
		src  *int
	}{{"nodes", &cfg.Nodes, fl.nodes}, {"goroutines", &cfg.Goroutines, fl.workers}, {"keys", &cfg.Keys, fl.keys}, {"groups", &cfg.Groups, fl.groups}}
	for _, f := range ints {
		if set[f.name] {
			*f.dst = *f.src
		}
	}
	durs := []struct {
		name string
		dst  *time.Duration
		src  *time.Duration
	}{{"lease", &cfg.LeaseTTL, fl.lease}, {"flag-ttl", &cfg.FlagTTL, fl.flagTTL}, {"slack", &cfg.Slack, fl.slack}, {"redis-timeout", &cfg.RedisTimeout, fl.redisTimeout},
		{"ttl", &cfg.TTL, fl.ttl}, {"l1-ttl", &cfg.L1TTL, fl.l1TTL}, {"fresh-for", &cfg.FreshFor, fl.freshFor},
		{"max-stale", &cfg.MaxStale, fl.maxStale}, {"fetch-timeout", &cfg.FetchTimeout, fl.fetchTimeout},
		{"fail-safe-throttle", &cfg.FailSafeThrottle, fl.throttle}, {"not-found-ttl", &cfg.NotFoundTTL, fl.notFoundTTL}}
	for _, f := range durs {
		if set[f.name] {
			*f.dst = *f.src
		}
	}
	if set["zipf"] {
		cfg.Zipf = *fl.zipf
	}
	if set["early-refresh"] {
		cfg.EarlyRefresh = *fl.earlyRefresh
	}
	if set["losers"] {
		if cfg.Losers, err = parseLosers(*fl.losers); err != nil {
			return cfg, nil, err
		}
	}
	if set["absent"] {
		cfg.Absent = *fl.absent
	}
	if set["many"] {
		cfg.Many = *fl.many
	}
	if set["many-keys"] {
		cfg.ManyKeys = *fl.manyKeys
	}
	if set["ops"] {
		cfg.Ops, cfg.Duration = *fl.ops, 0
	}
	if set["duration"] && cfg.Ops == 0 {
		cfg.Duration = *fl.duration
	}
	mix, groupless := *fl.mix, false
	if set["mix"] && onCluster && !given["mix"] {
		mix, groupless = clusterMix, true
	}
	if set["mix"] {
		if cfg.Mix, err = parseMix(mix); err != nil {
			return cfg, nil, err
		}
	}
	if set["fetch-latency"] {
		if cfg.FetchLatency, err = parseLatency(*fl.fetch); err != nil {
			return cfg, nil, err
		}
	}
	if set["procs"] {
		cfg.Procs = *fl.procs
	}
	if set["pause"] {
		cfg.PauseFor = *fl.pauseFor
	}
	if set["faults"] {
		kinds, err := sim.ParseFaults(*fl.faults, cfg.Procs, onCluster)
		if err != nil {
			return cfg, nil, err
		}
		cfg.Faults = sim.Schedule(kinds, cmp.Or(cfg.Nodes, sim.DefaultNodes), *fl.seed)
	}
	cfg.Seed = *fl.seed
	if *fl.brk != "" {
		b, err := sim.ParseBreak(*fl.brk)
		if err != nil {
			return cfg, nil, err
		}
		fmt.Fprintf(stderr, "tiersim: NEGATIVE CONTROL %q: the protocol is broken on purpose; violations are expected\n", b)
		workload := false
		for name := range given {
			switch name {
			case "break", "seed", "q", "json", "report", "redis", "embedded", "procs", "cluster":
			default:
				workload = true
			}
		}
		if !workload {
			cfg, groupless = sim.NegativeControl(b, *fl.seed), false
		}
		cfg.Break = b
	}
	if groupless {
		fmt.Fprintf(stderr, "tiersim: on a cluster every group invalidation runs a script in each of the 16,384 slots: -mix %s unless given (e.g. -mix 90/6/3/1 -redis-timeout 1s)\n", clusterMix)
	}
	switch {
	case given["wait-replicas"]:
		cfg.WaitReplicas = *fl.waitReplicas
	case onCluster:
		cfg.WaitReplicas = 1
	}
	if given["wait-timeout"] {
		cfg.WaitTimeout = *fl.waitTimeout
	}
	return cfg, redisArgs, nil
}

// pickBackend chooses the Redis: the given address (a cluster's if
// onCluster), else a private cluster if onCluster, else a private
// redis-server if one is on PATH, else the embedded miniredis.
func pickBackend(addr string, onCluster, embedded bool, redisArgs []string, stderr io.Writer) (sim.Backend, func(), error) {
	switch {
	case onCluster && addr != "":
		return sim.ExternalCluster(strings.Split(addr, ",")), func() {}, nil
	case addr != "":
		return sim.External(addr), func() {}, nil
	case onCluster && embedded:
		return nil, nil, errors.New("-cluster and -embedded: the embedded Redis is no cluster")
	case onCluster:
		b, stop, err := sim.LaunchCluster(redisArgs...)
		if err != nil {
			return nil, nil, fmt.Errorf("-cluster: %w", err)
		}
		return b, stop, nil
	}
	if !embedded {
		if _, err := exec.LookPath("redis-server"); err == nil {
			return sim.LaunchRedis(redisArgs...)
		}
		fmt.Fprintln(stderr, "tiersim: redis-server is not on PATH; using the embedded miniredis (install redis-server for the real thing)")
	}
	if len(redisArgs) > 0 {
		fmt.Fprintf(stderr, "tiersim: the embedded Redis ignores the scenario's server arguments %v\n", redisArgs)
	}
	return sim.StartEmbedded()
}

func kindNames() []string {
	var out []string
	for _, k := range slices.Concat(sim.AllFaults, sim.ClusterFaults, sim.ProcFaults) {
		out = append(out, string(k))
	}
	return out
}

func parseLosers(s string) (tier.LoserPolicy, error) {
	for _, p := range []tier.LoserPolicy{tier.LoserWait, tier.LoserServeStale, tier.LoserFetch} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("-losers %q: want wait, serve-stale or fetch", s)
}

func parseMix(s string) (sim.Mix, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 4 {
		return sim.Mix{}, fmt.Errorf("-mix %q: want read/invalidate/set/group, e.g. 90/6/3/1", s)
	}
	var n [4]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return sim.Mix{}, fmt.Errorf("-mix %q: %q is not a weight", s, p)
		}
		n[i] = v
	}
	return sim.Mix{Read: n[0], Invalidate: n[1], Set: n[2], Group: n[3]}, nil
}

func parseLatency(s string) (sim.Latency, error) {
	lo, hi, found := strings.Cut(s, "-")
	min, err := time.ParseDuration(lo)
	if err != nil && lo != "0" {
		return sim.Latency{}, fmt.Errorf("-fetch-latency %q: %w", s, err)
	}
	max := min
	if found {
		if max, err = time.ParseDuration(hi); err != nil {
			return sim.Latency{}, fmt.Errorf("-fetch-latency %q: %w", s, err)
		}
	}
	if max < min {
		return sim.Latency{}, errors.New("-fetch-latency: MAX below MIN")
	}
	return sim.Latency{Min: min, Max: max}, nil
}
