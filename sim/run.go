package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/tier"
)

// opTimeout bounds one operation of a worker, so that a protocol that
// hangs fails the run instead of hanging it.
const opTimeout = 30 * time.Second

// Progress is a snapshot of a running simulation.
type Progress struct {
	// Elapsed is the time since the run began.
	Elapsed time.Duration
	// Done and Total count operations; Total is zero for a timed run.
	Done, Total int64
	// Fraction is the run's progress, 0 to 1.
	Fraction float64
	// Phase is the active fault, or Steady.
	Phase string
}

// member is one node of the fleet, with its own Redis client and, if a
// fault targets it, its own fault proxy. In a run of node processes the
// parent holds only the proxies; each node process holds its node.
type member struct {
	node  *tier.Node
	cache *tier.Cache[int, Value]
	rdb   *redis.Client
	proxy *faultproxy.Proxy
}

// run is one simulation in progress; with Config.Procs, its parent side.
type run struct {
	cfg     Config
	backend Backend
	clock   *clock
	src     *source
	fleet   []member
	nodes   []*fleetNode // in one process only
	procs   *procs       // with Config.Procs only
	admin   *redis.Client
	prefix  string
	locks   []sync.Mutex // one per key: writes of a key are serialized
	applied []*seqWatch  // per node, for the publish-before-delete control
	leases  []leaseWatch // per node, for the negative controls' drives
	done    atomic.Int64 // operations finished
	writes  atomic.Int64 // key writes returned
	stopped atomic.Bool

	faultsLeft atomic.Int64 // fault windows not yet opened, or not yet closed (controller.loop)

	// The negative control's driver (drive.go), or the pause fault's
	// (procs.go): Result.Driven.
	gates       gates
	driven      atomic.Int64 // drives done
	driveWG     sync.WaitGroup
	driveMu     sync.Mutex // guards the fields below
	driveErr    error      // why the last drive gave up
	driveReads  []read
	driveWrites []write
}

// Run drives one simulation against backend and judges every read. It
// returns an error only if the fleet could not be set up, or (with
// Config.Procs) a node process died without being killed by a fault;
// violations are in the Result. It starts and stops its own nodes,
// clients, proxies and processes.
func Run(ctx context.Context, cfg Config, backend Backend) (*Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	r := &run{
		cfg:     cfg,
		backend: backend,
		clock:   newClock(),
		admin:   newClient(backend.Addr(), cfg),
		prefix:  "tcsim" + hex.EncodeToString(tag[:]),
		locks:   make([]sync.Mutex, cfg.keySpace()),
		applied: make([]*seqWatch, cfg.Nodes),
		leases:  make([]leaseWatch, cfg.Nodes),
	}
	for i := range r.applied {
		r.applied[i] = newSeqWatch()
	}
	defer r.admin.Close()
	r.src = newSource(cfg, r.clock)
	skips := r.probe(ctx)
	if err := r.startProxies(); err != nil {
		r.stopFleet()
		return nil, err
	}
	var h *history
	if cfg.Procs {
		h, err = r.runProcs(ctx, skips)
	} else {
		h, err = r.runHere(ctx, skips)
	}
	if err != nil {
		return nil, err
	}
	res := check(h, cfg)
	res.Backend = backend.Name()
	res.Elapsed = time.Duration(h.end)
	res.Ops = r.done.Load()
	res.Fleet = h.stats
	res.Driven = r.driven.Load()
	res.Short = r.short(ctx)
	res.Procs = h.procs
	return res, nil
}

// runHere runs every node in this process.
func (r *run) runHere(ctx context.Context, skips map[FaultKind]string) (*history, error) {
	cfg := r.cfg
	if err := r.startFleet(ctx); err != nil {
		r.stopFleet()
		return nil, err
	}
	r.clock.t0 = monotonic() // the run begins once the fleet is up

	workers := cfg.Nodes * cfg.Goroutines
	recs := make([]sliceRecorder, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs[i].r = r
			r.nodes[i/cfg.Goroutines].work(ctx, i, 0, r.over, &recs[i])
		}()
	}
	if cfg.Drives > 0 {
		r.async(func() { r.drive(ctx) })
	}
	ctl := newController(r, skips)
	ctlDone := make(chan struct{})
	go func() {
		defer close(ctlDone)
		ctl.loop(ctx)
	}()
	wg.Wait()
	r.stopped.Store(true)
	r.driveWG.Wait()
	<-ctlDone
	h := &history{windows: ctl.windows, fetches: r.src.fetchTimes(), end: r.clock.now()}
	for _, m := range r.fleet {
		h.stats.add(m.node.Stats())
	}
	r.stopFleet()
	for i := range recs {
		h.reads = append(h.reads, recs[i].reads...)
		h.writes = append(h.writes, recs[i].writes...)
	}
	h.reads = append(h.reads, r.driveReads...)
	h.writes = append(h.writes, r.driveWrites...)
	return h, nil
}

// sliceRecorder keeps one worker's history in this process.
type sliceRecorder struct {
	r      *run
	reads  []read
	writes []write
}

func (s *sliceRecorder) read(rd read) { s.reads = append(s.reads, rd) }
func (s *sliceRecorder) write(w write) {
	s.writes = append(s.writes, w)
	s.r.writes.Add(1)
}
func (s *sliceRecorder) op(int32) { s.r.done.Add(1) }

// over reports whether a timed run is over: its Duration has passed, its
// minima (MinWrites, Drives) are met and its fault windows done, or its
// Deadline has passed.
func (r *run) over() bool {
	t := r.clock.now()
	return t >= int64(r.cfg.Deadline) ||
		t >= int64(r.cfg.Duration) && r.writes.Load() >= r.cfg.MinWrites && r.driven.Load() >= int64(r.cfg.Drives) && r.faultsLeft.Load() == 0
}

// short says what a timed run lacked when it ended, or "".
func (r *run) short(ctx context.Context) string {
	if r.cfg.Ops > 0 {
		return ""
	}
	var lack []string
	if w := r.writes.Load(); w < r.cfg.MinWrites {
		lack = append(lack, fmt.Sprintf("%d of %d key writes", w, r.cfg.MinWrites))
	}
	if d := r.driven.Load(); d < int64(r.cfg.Drives) {
		s := fmt.Sprintf("%d of %d drives", d, r.cfg.Drives)
		if r.driveErr != nil {
			s += " (" + r.driveErr.Error() + ")"
		}
		lack = append(lack, s)
	}
	if n := r.faultsLeft.Load(); n > 0 {
		lack = append(lack, fmt.Sprintf("%d fault windows not done", n))
	}
	if len(lack) == 0 {
		return ""
	}
	why := fmt.Sprintf("the deadline %s", r.cfg.Deadline)
	if ctx.Err() != nil {
		why = "cancellation"
	}
	return fmt.Sprintf("ended by %s with %s", why, strings.Join(lack, " and "))
}

// FleetStats are the nodes' own counters (tier.Stats), summed over the
// fleet at the end of the run: what tier says it did, beside what the
// checker saw. A node process killed by a fault takes its counters with
// it.
type FleetStats struct {
	// FillsLanded and FillsRefused count fills of Redis by claimants.
	FillsLanded  uint64 `json:"fills_landed"`
	FillsRefused uint64 `json:"fills_refused"`
	// Waits counts flights that waited for another claimant;
	// UncachedFetches fetches made without a claim.
	Waits           uint64 `json:"waits"`
	UncachedFetches uint64 `json:"uncached_fetches"`
	// StaleServed, NegativeHits, Refreshes and FailSafe count
	// permitted-stale answers, cached "not found" answers, background
	// refreshes (stale-while-revalidate and early refresh) and fail-safe
	// answers.
	StaleServed  uint64 `json:"stale_served"`
	NegativeHits uint64 `json:"negative_hits"`
	Refreshes    uint64 `json:"refreshes"`
	FailSafe     uint64 `json:"fail_safe"`
}

// add adds one node's counters.
func (f *FleetStats) add(s tier.Stats) {
	f.sum(FleetStats{FillsLanded: s.Caches.FillsLanded, FillsRefused: s.Caches.FillsRefused, Waits: s.Caches.Waits, UncachedFetches: s.Caches.UncachedFetches,
		StaleServed: s.Caches.StaleServed, NegativeHits: s.Caches.NegativeHits, Refreshes: s.Caches.Refreshes, FailSafe: s.Caches.FailSafe})
}

func (f *FleetStats) sum(g FleetStats) {
	f.FillsLanded += g.FillsLanded
	f.FillsRefused += g.FillsRefused
	f.Waits += g.Waits
	f.UncachedFetches += g.UncachedFetches
	f.StaleServed += g.StaleServed
	f.NegativeHits += g.NegativeHits
	f.Refreshes += g.Refreshes
	f.FailSafe += g.FailSafe
}

// newClient is a node's or the admin's go-redis client: bounded timeouts,
// context deadlines honoured (tier.NodeConfig.RedisTimeout relies on it).
// name, if set, names its connections (CLIENT SETNAME).
func newClient(addr string, cfg Config, name ...string) *redis.Client {
	o := &redis.Options{
		Addr:                  addr,
		DialTimeout:           time.Second,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		ContextTimeoutEnabled: true,
		PoolSize:              cfg.Goroutines + 4,
	}
	if len(name) > 0 {
		o.ClientName = name[0]
	}
	return redis.NewClient(o)
}

// startProxies gives every node that a Partition or RedisLatency fault
// targets a fault proxy of its own, through which it reaches Redis.
func (r *run) startProxies() error {
	r.fleet = make([]member, r.cfg.Nodes)
	for _, f := range r.cfg.Faults {
		i := f.Node % r.cfg.Nodes
		if !proxiedKinds[f.Kind] || r.fleet[i].proxy != nil {
			continue
		}
		p, err := faultproxy.New(r.backend.Addr())
		if err != nil {
			return err
		}
		r.fleet[i].proxy = p
	}
	return nil
}

// addr is the Redis address node i dials: its proxy's, if it has one.
func (r *run) addr(i int) string {
	if p := r.fleet[i].proxy; p != nil {
		return p.Addr()
	}
	return r.backend.Addr()
}

// startFleet starts every node in this process, each with its own client.
func (r *run) startFleet(ctx context.Context) error {
	for i := range r.cfg.Nodes {
		m, err := openMember(ctx, r.cfg, r.prefix, r.addr(i), "", r.breakPoints(i), r)
		if err != nil {
			return fmt.Errorf("sim: node %d: %w", i, err)
		}
		m.proxy = r.fleet[i].proxy
		r.fleet[i] = m
		r.nodes = append(r.nodes, &fleetNode{i: i, cfg: r.cfg, m: m, clock: r.clock, world: r, pad: r.src.pad})
	}
	return nil
}

// openMember opens a node: its Redis client (named name, if set), its
// tier.Node (with the hooks p, if any) and its Cache over the source w.
// On error, whatever it opened is closed.
func openMember(ctx context.Context, cfg Config, prefix, addr, name string, p *hooks.Points, w world) (member, error) {
	m := member{rdb: newClient(addr, cfg, name)}
	ncfg := tier.NodeConfig{
		Prefix:       prefix,
		L1MaxBytes:   16 << 20,
		Logger:       slog.New(slog.DiscardHandler),
		FlagTTL:      cfg.FlagTTL,
		LeaseTTL:     cfg.LeaseTTL,
		RedisTimeout: cfg.RedisTimeout,
		BreakerPause: cfg.BreakerPause,
	}
	var err error
	if p == nil {
		m.node, err = tier.NewNode(ctx, m.rdb, ncfg)
	} else {
		var n any
		if n, err = hooks.NewNode(ctx, m.rdb, ncfg, p); err == nil {
			m.node = n.(*tier.Node)
		}
	}
	if err != nil {
		_ = m.rdb.Close()
		return member{}, err
	}
	tc := tier.Config[int, Value]{
		Namespace:        "sim",
		Fetch:            w.fetch,
		TTL:              cfg.TTL,
		L1TTL:            cfg.L1TTL,
		Groups:           cfg.groupsOf,
		FreshFor:         cfg.FreshFor,
		MaxStale:         cfg.MaxStale,
		FetchTimeout:     cfg.FetchTimeout,
		FailSafeThrottle: cfg.FailSafeThrottle,
		EarlyRefresh:     cfg.EarlyRefresh,
		NotFoundTTL:      cfg.NotFoundTTL,
		Losers:           cfg.Losers,
	}
	if cfg.Many > 0 {
		tc.FetchMany = w.fetchMany
	}
	if m.cache, err = tier.New(m.node, tc); err != nil {
		m.close()
		return member{}, fmt.Errorf("cache: %w", err)
	}
	return m, nil
}

// close closes the member's node and client (not its proxy).
func (m member) close() {
	if m.node != nil {
		_ = m.node.Close()
	}
	if m.rdb != nil {
		_ = m.rdb.Close()
	}
}

func (r *run) stopFleet() {
	for _, m := range r.fleet {
		m.close()
		if m.proxy != nil {
			m.proxy.Pass() // let held closes through before closing
			_ = m.proxy.Close()
		}
	}
}

// begin, end, fetch and fetchMany make the run the world of its nodes in
// this process, and the parent's side of the world of node processes.
func (r *run) begin(_ context.Context, keys []int) ([]int64, error) {
	vs := make([]int64, len(keys))
	for i, k := range keys {
		r.locks[k].Lock() // in key order: no deadlock with other groups
		vs[i] = r.src.bump(k)
	}
	return vs, nil
}

func (r *run) end(keys []int) {
	for _, k := range keys {
		r.locks[k].Unlock()
	}
}

func (r *run) fetch(ctx context.Context, key int) (Value, error) { return r.src.fetch(ctx, key) }
func (r *run) fetchMany(ctx context.Context, keys []int) (map[int]Value, error) {
	return r.src.fetchMany(ctx, keys)
}

// groupsOf puts key k in two groups of two families, "g" (k mod Groups)
// and "h" (k mod Groups+1), so that the groups of a family partition the
// workers' keys and every such key is in groups of both (R32).
func (c Config) groupsOf(k int, _ Value) []string {
	if k >= c.Keys {
		return nil // a driver's key: no group invalidation may touch its drive
	}
	return []string{groupName(0, k%c.Groups), groupName(1, k%(c.Groups+1))}
}

func groupName(family, g int) string { return string("gh"[family]) + strconv.Itoa(g) }

// probe finds the faults the backend, or the run's mode, cannot inject.
func (r *run) probe(ctx context.Context) map[FaultKind]string {
	skips := map[FaultKind]string{}
	want := map[FaultKind]bool{}
	for _, f := range r.cfg.Faults {
		want[f.Kind] = true
	}
	if want[SubCut] {
		if err := r.admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			skips[SubCut] = "CLIENT KILL TYPE pubsub: " + err.Error()
		}
	}
	if !r.backend.Owned() {
		skips[Flush] = "will not FLUSHALL a server the simulation does not own"
		skips[Restart] = "will not restart a server the simulation does not own"
	}
	for _, k := range ProcFaults {
		switch {
		case !r.cfg.Procs:
			skips[k] = "needs every node in its own process (Config.Procs, -procs)"
		case r.cfg.Nodes < 2 && k == Pause:
			skips[k] = "needs a second node to write while the first is paused"
		}
	}
	return skips
}

// fraction is the run's progress, 0 to 1.
func (r *run) fraction() float64 {
	if r.cfg.Ops > 0 {
		return float64(r.done.Load()) / float64(r.cfg.Ops)
	}
	return float64(r.clock.now()) / float64(r.cfg.Duration)
}
