package tier_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/tier"
)

// herd is a fleet of nodes with one cache each, whose loads and waits the
// test can count.
type herd struct {
	nodes   []*tier.Node
	caches  []*tier.Cache[string, string]
	flights atomic.Int64  // Gets registered with a flight, fleet-wide
	allIn   chan struct{} // closed when flights reaches the herd's size
	busy    chan int      // a node's load found the flag held
	waiting []atomic.Bool // per node: has waited at least once
}

// newHerd starts nodes whose Gets, once size of them have registered with
// flights, close allIn.
func newHerd(t *testing.T, f *fleet, src *source, nodes int, size int64, noPoll bool) *herd {
	t.Helper()
	h := &herd{allIn: make(chan struct{}), busy: make(chan int, 1<<16), waiting: make([]atomic.Bool, nodes)}
	for i := range nodes {
		hk := &hooks.Points{
			NoPoll: noPoll,
			Flight: func(string, bool) {
				if h.flights.Add(1) == size {
					close(h.allIn)
				}
			},
			OnBusy: func(string) {
				if h.waiting[i].CompareAndSwap(false, true) {
					h.busy <- i
				}
			},
		}
		n := f.node(tier.NodeConfig{}, hk)
		h.nodes = append(h.nodes, n)
		h.caches = append(h.caches, cache(t, n, src))
	}
	return h
}

// goGets starts per Gets of key on every node and returns their results.
func (h *herd) goGets(key string, per int) <-chan result {
	out := make(chan result, len(h.caches)*per)
	var wg sync.WaitGroup
	for _, c := range h.caches {
		for range per {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Get(context.Background(), key)
				out <- result{v, err}
			}()
		}
	}
	go func() { wg.Wait(); close(out) }()
	return out
}

// claimant returns the node whose fetch the source holds, once the test has
// taken that fetch with src.next (the node counted it before calling Fetch).
func (h *herd) claimant(t *testing.T) int {
	t.Helper()
	for i, n := range h.nodes {
		if n.Stats().Caches.Fetches == 1 {
			h.waiting[i].Store(true) // it does not wait: it fetches
			return i
		}
	}
	t.Fatal("no node is fetching")
	return -1
}

// awaitWaiting waits until every node but the claimant's has waited.
func (h *herd) awaitWaiting(t *testing.T, claimant int) {
	t.Helper()
	for i := range h.waiting {
		for i != claimant && !h.waiting[i].Load() {
			wait(t, h.busy, "every other node to wait for the claimant")
		}
	}
}

func (h *herd) wakeups() (n uint64) {
	for _, nd := range h.nodes {
		n += nd.Stats().Caches.Wakeups
	}
	return n
}

// R02: 10 nodes x 100 goroutines miss one cold key at once. The fetch is
// held until every Get has joined its node's flight and every other node is
// waiting on the flag: the source is read exactly once, and the waiters are
// woken by the claimant's message (they do not poll here).
func TestRace_R02_FleetHerd(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	h := newHerd(t, f, src, 10, 1000, true)
	results := h.goGets("k", 100)
	held := src.next(t)
	wait(t, h.allIn, "every Get to join its node's flight")
	h.awaitWaiting(t, h.claimant(t))
	close(held.release)
	n := 0
	for r := range results {
		if r.err != nil || r.v != "v1" {
			t.Fatalf("Get = %q, %v", r.v, r.err)
		}
		n++
	}
	if n != 1000 {
		t.Fatalf("%d results", n)
	}
	if reads := src.reads.Load(); reads != 1 {
		t.Fatalf("source reads = %d; want 1 for the whole fleet", reads)
	}
	if w := h.wakeups(); w < 9 {
		t.Fatalf("wakeups = %d; want one per waiting node (9)", w)
	}
}

// R02 with an invalidation landing while the herd waits: the claimant's
// fill is refused, the waiters are woken and one claims again, and no Get
// that began after the invalidation returned gets the old value: on the
// writer's node at once (read-your-writes), on every other node once the
// bus has delivered the invalidation there. Before that, a node's own
// flight, like its L1, may still answer with the old value: the bus bound
// that the simulation measures. The source is read twice: once per version.
func TestRace_R02_FleetHerdInvalidated(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	h := newHerd(t, f, src, 10, 1000, true)
	nw := f.node(tier.NodeConfig{}, nil)
	w := cache(t, nw, src)
	old := h.goGets("k", 100)
	held := src.next(t)
	if held.val != "v1" {
		t.Fatalf("first fetch read %q", held.val)
	}
	wait(t, h.allIn, "every Get to join its node's flight")
	h.awaitWaiting(t, h.claimant(t))

	applied := make([]uint64, len(h.nodes))
	for i, n := range h.nodes {
		applied[i] = n.Stats().BusApplied
	}
	src.set("k", "v2")
	if err := w.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	mine := goGet(context.Background(), w, "k")
	for i, n := range h.nodes {
		awaitStats(t, n, "the invalidation to reach every node", func(st tier.Stats) bool { return st.BusApplied > applied[i] })
	}
	late := h.goGets("k", 10) // every one began after the invalidation reached its node
	second := src.next(t)
	if second.val != "v2" {
		t.Fatalf("second fetch read %q", second.val)
	}
	close(held.release)
	close(second.release)
	if r := await(t, mine); r.err != nil || r.v != "v2" {
		t.Fatalf("the writer's Get after its invalidation = %q, %v; want v2", r.v, r.err)
	}
	for r := range late {
		if r.err != nil || r.v != "v2" {
			t.Fatalf("a Get that began after the invalidation = %q, %v; want v2", r.v, r.err)
		}
	}
	for r := range old {
		if r.err != nil || (r.v != "v1" && r.v != "v2") {
			t.Fatalf("a Get that overlapped the invalidation = %q, %v", r.v, r.err)
		}
	}
	if reads := src.reads.Load(); reads != 2 {
		t.Fatalf("source reads = %d; want 2", reads)
	}
	if s := f.stored("k"); s != "v2" {
		t.Fatalf("L2 = %q; want v2", s)
	}
}

// R08 across the fleet: the claimant's caller gives up and its node closes
// (its process dies) mid-fetch. The waiters on the other nodes recover (the
// claim is released, or expires within the flag TTL), one of them fetches,
// and the source is read at most twice.
func TestRace_R08_ClaimantDiesInHerd(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	h := newHerd(t, f, src, 10, 901, false)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan result, 1)
	go func() {
		v, err := h.caches[0].Get(ctx, "k")
		first <- result{v, err}
	}()
	held := src.next(t)
	dead := h.claimant(t)
	results := make(chan result, 900)
	var wg sync.WaitGroup
	for _, c := range h.caches[1:] {
		for range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Get(context.Background(), "k")
				results <- result{v, err}
			}()
		}
	}
	wait(t, h.allIn, "every Get to join its node's flight")
	h.awaitWaiting(t, dead)
	src.gated.Store(false)
	cancel()
	if r := await(t, first); r.err == nil {
		t.Fatalf("the dead claimant's caller got %q", r.v)
	}
	_ = h.nodes[dead].Close()
	<-held.ctx.Done()
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil || r.v != "v1" {
			t.Fatalf("a waiter got %q, %v", r.v, r.err)
		}
	}
	if reads := src.reads.Load(); reads > 2 {
		t.Fatalf("source reads = %d; want at most 2", reads)
	}
}
