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
// fault targets it, its own fault proxies. In a run of node processes the
// parent holds only the proxies; each node process holds its node.
type member struct {
	node    *tier.Node
	cache   *tier.Cache[int, Value]
	rdb     redis.UniversalClient
	proxies proxies
}

// proxies are one node's fault proxies, by the address of the server each
// stands in front of: the one server, or every member of a cluster.
type proxies map[string]*faultproxy.Proxy

func (ps proxies) blackhole() {
	for _, p := range ps {
		p.Blackhole()
	}
}

func (ps proxies) delay(d time.Duration) {
	for _, p := range ps {
		p.Delay(d)
	}
}

func (ps proxies) pass() {
	for _, p := range ps {
		p.Pass()
	}
}

// via maps each server's address to its proxy's, for target.Via.
func (ps proxies) via() map[string]string {
	if len(ps) == 0 {
		return nil
	}
	m := make(map[string]string, len(ps))
	for addr, p := range ps {
		m[addr] = p.Addr()
	}
	return m
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
	cluster *clusterRun  // on a ClusterBackend only
	admin   redis.UniversalClient
	prefix  string
	locks   []sync.Mutex // one per key: writes of a key are serialized
	applied []*seqWatch  // per node, for the publish-before-delete control
	leases  []leaseWatch // per node, for the negative controls' drives
	done    atomic.Int64 // operations finished
	writes  atomic.Int64 // key writes returned
	stopped atomic.Bool

	faultsLeft atomic.Int64 // fault windows not yet opened, or not yet closed (controller.loop)

	failMu sync.Mutex
	failed error // a fault that could not be carried out to its end

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
// returns an error only if the fleet could not be set up, a fault could
// not be carried out to its end (a cluster that did not fail over or
// settle), or (with Config.Procs) a node process died without being
// killed by a fault; violations are in the Result. It starts and stops its
// own nodes, clients, proxies and processes.
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
		prefix:  "tcsim" + hex.EncodeToString(tag[:]),
		locks:   make([]sync.Mutex, cfg.keySpace()),
		applied: make([]*seqWatch, cfg.Nodes),
		leases:  make([]leaseWatch, cfg.Nodes),
	}
	for i := range r.applied {
		r.applied[i] = newSeqWatch()
	}
	r.admin = r.target(-1).client(cfg, "")
	defer r.admin.Close()
	if cb, ok := backend.(ClusterBackend); ok {
		if r.cluster, err = newClusterRun(ctx, r, cb, r.admin.(*redis.ClusterClient)); err != nil {
			return nil, err
		}
	}
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
	if err == nil {
		err = r.failure()
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
	h := &history{windows: ctl.windows, fetches: r.src.fetchTimes(), end: r.clock.now(), cluster: r.cluster}
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
	return t >= int64(r.cfg.Deadline) || r.failure() != nil ||
		t >= int64(r.cfg.Duration) && r.writes.Load() >= r.cfg.MinWrites && r.driven.Load() >= int64(r.cfg.Drives) && r.faultsLeft.Load() == 0
}

// fail records a fault that could not be carried out to its end: the run
// stops, and Run returns the first such error.
func (r *run) fail(err error) {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	if r.failed == nil {
		r.failed = err
	}
}

func (r *run) failure() error {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	return r.failed
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

// startProxies gives every node that a Partition or RedisLatency fault
// targets fault proxies of its own, through which it reaches Redis: one in
// front of the server, or of each member of a cluster.
func (r *run) startProxies() error {
	r.fleet = make([]member, r.cfg.Nodes)
	servers := []string{r.backend.Addr()}
	if r.cluster != nil {
		servers = r.cluster.members
	}
	for _, f := range r.cfg.Faults {
		i := f.Node % r.cfg.Nodes
		if !proxiedKinds[f.Kind] || r.fleet[i].proxies != nil {
			continue
		}
		r.fleet[i].proxies = proxies{}
		for _, addr := range servers {
			p, err := faultproxy.New(addr)
			if err != nil {
				return err
			}
			r.fleet[i].proxies[addr] = p
		}
	}
	return nil
}

// target is how node i reaches Redis (through its proxies, if it has
// them), or the admin if i is -1.
func (r *run) target(i int) target {
	t := target{Addr: r.backend.Addr()}
	if cb, ok := r.backend.(ClusterBackend); ok {
		t.Cluster = cb.Seeds()
	}
	if i >= 0 {
		t.Via = r.fleet[i].proxies.via()
	}
	return t
}

// startFleet starts every node in this process, each with its own client.
func (r *run) startFleet(ctx context.Context) error {
	for i := range r.cfg.Nodes {
		m, err := openMember(ctx, r.cfg, r.prefix, r.target(i), "", r.breakPoints(i), r)
		if err != nil {
			return fmt.Errorf("sim: node %d: %w", i, err)
		}
		m.proxies = r.fleet[i].proxies
		r.fleet[i] = m
		r.nodes = append(r.nodes, &fleetNode{i: i, cfg: r.cfg, m: m, clock: r.clock, world: r, pad: r.src.pad})
	}
	return nil
}

// openMember opens a node: its Redis client (named name, if set), its
// tier.Node (with the hooks p, if any) and its Cache over the source w.
// On error, whatever it opened is closed.
func openMember(ctx context.Context, cfg Config, prefix string, to target, name string, p *hooks.Points, w world) (member, error) {
	m := member{rdb: to.client(cfg, name)}
	ncfg := tier.NodeConfig{
		Prefix:       prefix,
		L1MaxBytes:   16 << 20,
		Logger:       slog.New(slog.DiscardHandler),
		FlagTTL:      cfg.FlagTTL,
		LeaseTTL:     cfg.LeaseTTL,
		RedisTimeout: cfg.RedisTimeout,
		BreakerPause: cfg.BreakerPause,
		WaitReplicas: cfg.WaitReplicas,
		WaitTimeout:  cfg.WaitTimeout,
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
		Namespace:        namespace,
		Fetch:            w.fetch,
		TTL:              cfg.TTL,
		L1TTL:            cfg.L1TTL,
		FreshFor:         cfg.FreshFor,
		MaxStale:         cfg.MaxStale,
		FetchTimeout:     cfg.FetchTimeout,
		FailSafeThrottle: cfg.FailSafeThrottle,
		EarlyRefresh:     cfg.EarlyRefresh,
		NotFoundTTL:      cfg.NotFoundTTL,
		Losers:           cfg.Losers,
	}
	if cfg.Mix.Group > 0 {
		tc.Groups = cfg.groupsOf
	}
	// Without group invalidations in the mix, entries are in no group of
	// their own: a node reads the keys it has seen in Redis without the
	// read script (l2.Store.Peek, R54), which the run so judges too.
	if cfg.Many > 0 {
		tc.FetchMany = w.fetchMany
	}
	if m.cache, err = tier.New(m.node, tc); err != nil {
		m.close()
		return member{}, fmt.Errorf("cache: %w", err)
	}
	return m, nil
}

// close closes the member's node and client (not its proxies).
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
		m.proxies.pass() // let held closes through before closing
		for _, p := range m.proxies {
			_ = p.Close()
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
		if err := killSubscriptions(ctx, r.admin); err != nil {
			skips[SubCut] = "CLIENT KILL TYPE pubsub: " + err.Error()
		}
	}
	if !r.backend.Owned() {
		skips[Flush] = "will not FLUSHALL a server the simulation does not own"
		skips[Restart] = "will not restart a server the simulation does not own"
		skips[Failover] = "will not kill a master of a cluster the simulation does not own"
		skips[Reshard] = "will not move slots of a cluster the simulation does not own"
	}
	if r.cluster == nil {
		for _, k := range ClusterFaults {
			skips[k] = "needs a Redis Cluster (-cluster, or -redis with several addresses)"
		}
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
