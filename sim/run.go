package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
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
// fault targets it, its own fault proxy.
type member struct {
	node  *tier.Node
	cache *tier.Cache[int, Value]
	rdb   *redis.Client
	proxy *faultproxy.Proxy
}

// run is one simulation in progress.
type run struct {
	cfg     Config
	backend Backend
	clock   *clock
	src     *source
	fleet   []member
	admin   *redis.Client
	prefix  string
	locks   []sync.Mutex // one per key: writes of a key are serialized
	applied []*seqWatch  // per node, for the publish-before-delete control
	leases  []leaseWatch // per node, for the negative controls' drives
	done    atomic.Int64 // operations finished
	writes  atomic.Int64 // key writes returned
	stopped atomic.Bool

	// The negative control's driver (drive.go).
	gates       gates
	driven      atomic.Int64 // drives done
	driveWG     sync.WaitGroup
	driveMu     sync.Mutex // guards the fields below
	driveErr    error      // why the last drive gave up
	driveReads  []read
	driveWrites []write
}

// Run drives one simulation against backend and judges every read. It
// returns an error only if the fleet could not be set up; violations are in
// the Result. It starts and stops its own nodes, clients and proxies.
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
		clock:   &clock{t0: time.Now()},
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
	if err := r.startFleet(ctx); err != nil {
		r.stopFleet()
		return nil, err
	}
	r.clock.t0 = time.Now() // the run begins once the fleet is up

	workers := cfg.Nodes * cfg.Goroutines
	reads := make([][]read, workers)
	writes := make([][]write, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reads[i], writes[i] = r.work(ctx, i)
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
	end := r.clock.now()
	fs := r.fleetStats()
	r.stopFleet()

	h := &history{windows: ctl.windows, fetches: r.src.fetchTimes(), end: end}
	for i := range workers {
		h.reads = append(h.reads, reads[i]...)
		h.writes = append(h.writes, writes[i]...)
	}
	h.reads = append(h.reads, r.driveReads...)
	h.writes = append(h.writes, r.driveWrites...)
	res := check(h, cfg)
	res.Backend = backend.Name()
	res.Elapsed = time.Duration(end)
	res.Ops = r.done.Load()
	res.Fleet = fs
	res.Driven = r.driven.Load()
	res.Short = r.short(ctx)
	return res, nil
}

// over reports whether a timed run is over: its Duration has passed and
// its minima (MinWrites, Drives) are met, or its Deadline has passed.
func (r *run) over() bool {
	t := r.clock.now()
	return t >= int64(r.cfg.Deadline) ||
		t >= int64(r.cfg.Duration) && r.writes.Load() >= r.cfg.MinWrites && r.driven.Load() >= int64(r.cfg.Drives)
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
// checker saw.
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

func (r *run) fleetStats() FleetStats {
	var f FleetStats
	for _, m := range r.fleet {
		s := m.node.Stats()
		f.FillsLanded += s.FillsLanded
		f.FillsRefused += s.FillsRefused
		f.Waits += s.Waits
		f.UncachedFetches += s.UncachedFetches
		f.StaleServed += s.StaleServed
		f.NegativeHits += s.NegativeHits
		f.Refreshes += s.Refreshes
		f.FailSafe += s.FailSafe
	}
	return f
}

// newClient is a node's or the admin's go-redis client: bounded timeouts,
// context deadlines honoured (tier.NodeConfig.RedisTimeout relies on it).
func newClient(addr string, cfg Config) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                  addr,
		DialTimeout:           time.Second,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		ContextTimeoutEnabled: true,
		PoolSize:              cfg.Goroutines + 4,
	})
}

// startFleet starts the nodes, each with its own client; a node that a
// Partition or RedisLatency fault targets reaches Redis through its own
// fault proxy.
func (r *run) startFleet(ctx context.Context) error {
	proxied := map[int]bool{}
	for _, f := range r.cfg.Faults {
		if faultKinds[f.Kind] {
			proxied[f.Node%r.cfg.Nodes] = true
		}
	}
	ncfg := tier.NodeConfig{
		Prefix:       r.prefix,
		L1MaxBytes:   16 << 20,
		Logger:       slog.New(slog.DiscardHandler),
		FlagTTL:      r.cfg.FlagTTL,
		LeaseTTL:     r.cfg.LeaseTTL,
		RedisTimeout: r.cfg.RedisTimeout,
		BreakerPause: r.cfg.BreakerPause,
	}
	for i := range r.cfg.Nodes {
		var m member
		addr := r.backend.Addr()
		if proxied[i] {
			p, err := faultproxy.New(addr)
			if err != nil {
				return err
			}
			m.proxy, addr = p, p.Addr()
		}
		m.rdb = newClient(addr, r.cfg)
		r.fleet = append(r.fleet, m)
		n, err := r.newNode(ctx, i, m.rdb, ncfg)
		if err != nil {
			return fmt.Errorf("sim: node %d: %w", i, err)
		}
		r.fleet[i].node = n
		tc := tier.Config[int, Value]{
			Namespace:        "sim",
			Fetch:            r.src.fetch,
			TTL:              r.cfg.TTL,
			L1TTL:            r.cfg.L1TTL,
			Groups:           r.groupsOf,
			FreshFor:         r.cfg.FreshFor,
			MaxStale:         r.cfg.MaxStale,
			FetchTimeout:     r.cfg.FetchTimeout,
			FailSafeThrottle: r.cfg.FailSafeThrottle,
			EarlyRefresh:     r.cfg.EarlyRefresh,
			NotFoundTTL:      r.cfg.NotFoundTTL,
			Losers:           r.cfg.Losers,
		}
		if r.cfg.Many > 0 {
			tc.FetchMany = r.src.fetchMany
		}
		c, err := tier.New(n, tc)
		if err != nil {
			return fmt.Errorf("sim: cache on node %d: %w", i, err)
		}
		r.fleet[i].cache = c
	}
	return nil
}

// newNode builds node i, with the negative control's hooks if there is one.
func (r *run) newNode(ctx context.Context, i int, rdb *redis.Client, ncfg tier.NodeConfig) (*tier.Node, error) {
	p := r.breakPoints(i)
	if p == nil {
		return tier.NewNode(ctx, rdb, ncfg)
	}
	n, err := hooks.NewNode(ctx, rdb, ncfg, p)
	if err != nil {
		return nil, err
	}
	return n.(*tier.Node), nil
}

func (r *run) stopFleet() {
	for _, m := range r.fleet {

		if m.node != nil {
			_ = m.node.Close()
		}
		if m.proxy != nil {
			m.proxy.Pass() // let held closes through before closing
			_ = m.proxy.Close()
		}
		_ = m.rdb.Close()
	}
}

// groupsOf puts key k in two groups of two families, "g" (k mod Groups)
// and "h" (k mod Groups+1), so that the groups of a family partition the
// workers' keys and every such key is in groups of both (R32).
func (r *run) groupsOf(k int, _ Value) []string {
	if k >= r.cfg.Keys {
		return nil // a driver's key: no group invalidation may touch its drive
	}
	return []string{groupName(0, k%r.cfg.Groups), groupName(1, k%(r.cfg.Groups+1))}
}

func groupName(family, g int) string { return string("gh"[family]) + strconv.Itoa(g) }

// probe finds the faults the backend cannot inject.
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
	}
	if !r.backend.Owned() {
		skips[Restart] = "will not restart a server the simulation does not own"
	}
	return skips
}

// work is one worker: its own seeded sequence of operations on its node,
// each recorded on the run's clock.
func (r *run) work(ctx context.Context, id int) ([]read, []write) {
	cfg := r.cfg
	m := r.fleet[id/cfg.Goroutines]
	node := int16(id / cfg.Goroutines)
	rng := mrand.New(mrand.NewPCG(uint64(cfg.Seed), uint64(id)))
	var zipf *mrand.Zipf
	if cfg.Zipf > 1 {
		zipf = mrand.NewZipf(rng, cfg.Zipf, 1, uint64(cfg.Keys-1))
	}
	var share int64
	if cfg.Ops > 0 {
		workers := int64(cfg.Nodes * cfg.Goroutines)
		share = cfg.Ops / workers
		if int64(id) < cfg.Ops%workers {
			share++
		}
	}
	var rs []read
	var ws []write
	for i := int64(0); ; i++ {
		if ctx.Err() != nil || (cfg.Ops > 0 && i >= share) || (cfg.Ops == 0 && r.over()) {
			return rs, ws
		}
		draw := func() int {
			if zipf != nil {
				return int(zipf.Uint64())
			}
			return rng.IntN(cfg.Keys)
		}
		key := draw()
		op := rng.IntN(cfg.Mix.total())
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		switch {
		case op < cfg.Mix.Read && cfg.Many > 0 && rng.IntN(100) < cfg.Many:
			keys := []int{key}
			for len(keys) < cfg.ManyKeys {
				keys = append(keys, draw())
			}
			rs = append(rs, r.readMany(octx, m, node, int32(id), keys)...)
		case op < cfg.Mix.Read:
			rs = append(rs, r.read(octx, m, node, int32(id), key))
		case op < cfg.Mix.Read+cfg.Mix.Invalidate:
			ws = append(ws, r.write(octx, m, node, key, false))
		case op < cfg.Mix.Read+cfg.Mix.Invalidate+cfg.Mix.Set:
			ws = append(ws, r.write(octx, m, node, key, true))
		default:
			family := rng.IntN(2)
			ws = append(ws, r.writeGroup(octx, m, node, family, key%(cfg.Groups+family))...)
		}
		cancel()
		r.done.Add(1)
	}
}

// read is one Get of key. A "not found" (Config.Absent) is a read of
// version 0.
func (r *run) read(ctx context.Context, m member, node int16, worker int32, key int) read {
	var ri tier.ReadInfo
	start := r.clock.now()
	v, err := m.cache.Get(ctx, key, tier.Info(&ri))
	rd := read{Start: start, End: r.clock.now(), Key: int32(key), Node: node, Worker: worker, Source: ri.Source, Shared: ri.Shared, Version: v.Version}
	found := true
	switch {
	case isPermittedStale(ri, err):
		rd.Permitted = true
		found = !errors.Is(err, tier.ErrNotFound)
	case errors.Is(err, tier.ErrNotFound):
		rd.Version, found, rd.NotFound = 0, false, true
	case err != nil:
		rd.Err = true
	}
	rd.WrongKey = !rd.Err && found && v.Key != key
	return rd
}

// readMany is one GetMany of keys, judged as one read per distinct key,
// all with the call's span. GetMany does not say which tier answered a
// key; a key missing from its map without an error is "not found",
// version 0, and a key's error wrapping tier.ErrStale is a permitted-stale
// value.
func (r *run) readMany(ctx context.Context, m member, node int16, worker int32, keys []int) []read {
	start := r.clock.now()
	vals, err := m.cache.GetMany(ctx, keys)
	end := r.clock.now()
	var kerrs *tier.KeyErrors[int]
	whole := err != nil && !errors.As(err, &kerrs)
	rs := make([]read, 0, len(keys))
	seen := make(map[int]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		rd := read{Start: start, End: end, Key: int32(k), Node: node, Worker: worker, Many: true}
		v, ok := vals[k]
		var kerr error
		if kerrs != nil {
			kerr = kerrs.Errs[k]
		}
		switch {
		case whole:
			rd.Err = true
		case kerr != nil && errors.Is(kerr, tier.ErrStale):
			rd.Permitted, rd.Version = true, v.Version
		case kerr != nil:
			rd.Err = true
		case ok:
			rd.Version = v.Version
		default:
			rd.NotFound = true
		}
		rd.WrongKey = !rd.Err && ok && v.Key != k
		rs = append(rs, rd)
	}
	return rs
}

// write updates the source, then tells the cache through node m, as an
// application does. Writes of one key are serialized, as a row lock would
// serialize them: two concurrent Sets of one key race at Redis in any
// cache (the last to arrive wins, whichever version it carries).
func (r *run) write(ctx context.Context, m member, node int16, key int, set bool) write {
	r.locks[key].Lock()
	defer r.locks[key].Unlock()
	start := r.clock.now()
	v := r.src.bump(key)
	var err error
	if set {
		err = m.cache.Set(ctx, key, Value{Key: key, Version: v, Pad: r.src.pad})
	} else {
		err = m.cache.Invalidate(ctx, key)
	}
	w := write{Start: start, End: r.clock.now(), Version: v, Key: int32(key), Node: node, Outcome: outcomeOf(err)}
	r.writes.Add(1)
	if set {
		w.Kind = bySet
	}
	return w
}

// writeGroup writes every member of group g of a family in the source,
// then invalidates the group through node m.
func (r *run) writeGroup(ctx context.Context, m member, node int16, family, g int) []write {
	var keys []int
	for k := g; k < r.cfg.Keys; k += r.cfg.Groups + family {
		keys = append(keys, k)
		r.locks[k].Lock() // in key order: no deadlock with other groups
	}
	defer func() {
		for _, k := range keys {
			r.locks[k].Unlock()
		}
	}()
	start := r.clock.now()
	ws := make([]write, len(keys))
	for i, k := range keys {
		ws[i] = write{Start: start, Version: r.src.bump(k), Key: int32(k), Node: node, Kind: byGroup}
	}
	err := m.node.InvalidateGroup(ctx, groupName(family, g))
	end, o := r.clock.now(), outcomeOf(err)
	for i := range ws {
		ws[i].End, ws[i].Outcome = end, o
	}
	r.writes.Add(int64(len(ws)))
	return ws
}

func outcomeOf(err error) outcome {
	switch {
	case err == nil:
		return wroteOK
	case errors.Is(err, tier.ErrPending):
		return wrotePending
	}
	return wroteFailed
}

// fraction is the run's progress, 0 to 1.
func (r *run) fraction() float64 {
	if r.cfg.Ops > 0 {
		return float64(r.done.Load()) / float64(r.cfg.Ops)
	}
	return float64(r.clock.now()) / float64(r.cfg.Duration)
}
