package tier_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// rates is a source of a whole data set whose loads the test counts,
// changes and breaks.
type rates struct {
	mu      sync.Mutex
	version int
	size    int
	fail    error
	panics  bool
	loads   atomic.Int64
	gate    chan struct{} // if set, each load waits for it
}

func (s *rates) load(ctx context.Context) (map[string]string, error) {
	s.loads.Add(1)
	s.mu.Lock()
	gate, fail, panics, version, size := s.gate, s.fail, s.panics, s.version, s.size
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if panics {
		panic("bad load")
	}
	if fail != nil {
		return nil, fail
	}
	if size < 0 {
		return map[string]string{}, nil
	}
	out := make(map[string]string, max(size, 3))
	for i := range max(size, 3) {
		out[fmt.Sprint("c", i)] = fmt.Sprint("v", version)
	}
	return out, nil
}

func (s *rates) set(f func(*rates)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func newResource(t *testing.T, n *tier.Node, src *rates, cfg tier.ResourceConfig[string, string]) *tier.Resource[string, string] {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "rates"
	}
	cfg.Load = src.load
	if cfg.ReloadEvery == 0 {
		cfg.ReloadEvery = time.Hour // no periodic reload during a test
	}
	r, err := tier.NewResource(n, cfg)
	if err != nil {
		t.Fatalf("NewResource: %v", err)
	}
	return r
}

func waitReady(t *testing.T, r *tier.Resource[string, string]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := r.Wait(ctx); err != nil {
		t.Fatalf("the resource did not arrive: %v", err)
	}
}

// awaitVersion waits until r serves the data set whose values are want.
func awaitVersion(t *testing.T, r *tier.Resource[string, string], want string) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		if v, ok := r.Get("c0"); ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			v, _ := r.Get("c0")
			t.Fatalf("the resource serves %q, want %q; stats %+v", v, want, r.Stats())
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by the guard
	}
}

// Three nodes starting together load the data set once for the fleet: one
// claims and loads, the others take its result from Redis.
func TestResourceLoadsOnceForTheFleet(t *testing.T) {
	f := newFleet(t)
	resourceLoadsOnce(t, func() *tier.Node { return f.node(tier.NodeConfig{}, nil) })
}

// resourceLoadsOnce is TestResourceLoadsOnceForTheFleet on the nodes that
// node starts.
func resourceLoadsOnce(t *testing.T, node func() *tier.Node) {
	src := &rates{gate: make(chan struct{})}
	var rs []*tier.Resource[string, string]
	for range 3 {
		rs = append(rs, newResource(t, node(), src, tier.ResourceConfig[string, string]{}))
	}
	deadline := time.Now().Add(guard)
	for src.loads.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no node loaded")
		}
		time.Sleep(time.Millisecond) // polling a condition, bounded by the guard
	}
	close(src.gate)
	var loads, fetched uint64
	for _, r := range rs {
		waitReady(t, r)
		if v, ok := r.Get("c1"); !ok || v != "v0" || r.Len() != 3 {
			t.Fatalf("Get = %q, %v, %d entries", v, ok, r.Len())
		}
		st := r.Stats()
		loads += st.Loads
		fetched += st.Fetched
	}
	if src.loads.Load() != 1 || loads != 1 || fetched != 2 {
		t.Fatalf("%d source loads (%d counted), %d fetched; want 1 load, 2 nodes fetching", src.loads.Load(), loads, fetched)
	}
}

// A Refill on one node reaches every node over the bus, and each swaps the
// data set whole: a reader never sees entries of two versions.
func TestResourceRefillSwapsWholeEverywhere(t *testing.T) {
	f := newFleet(t)
	src := &rates{size: 1000}
	rec := newTally()
	a := newResource(t, f.node(tier.NodeConfig{Recorder: rec}, nil), src, tier.ResourceConfig[string, string]{})
	b := newResource(t, f.node(tier.NodeConfig{}, nil), src, tier.ResourceConfig[string, string]{})
	waitReady(t, a)
	waitReady(t, b)

	stop := make(chan struct{})
	torn := make(chan string, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			seen := ""
			for k, v := range b.All() {
				if seen == "" {
					seen = v
				} else if v != seen {
					select {
					case torn <- fmt.Sprintf("%s = %s beside %s", k, v, seen):
					default:
					}
					return
				}
			}
		}
	})
	for i := 1; i <= 5; i++ {
		src.set(func(s *rates) { s.version = i })
		if err := a.Refill(context.Background()); err != nil {
			t.Fatalf("Refill: %v", err)
		}
		if v, _ := a.Get("c0"); v != fmt.Sprint("v", i) {
			t.Fatalf("after Refill, the refilling node serves %q", v)
		}
		awaitVersion(t, b, fmt.Sprint("v", i))
	}
	close(stop)
	wg.Wait()
	select {
	case s := <-torn:
		t.Fatalf("a reader saw two versions at once: %s", s)
	default:
	}
	if got := rec.count("resource rates success"); got != int(a.Stats().Loads) || got < 5 {
		t.Fatalf("recorded %d loads, stats say %d", got, a.Stats().Loads)
	}
}

// A failing load, or one that panics, keeps the last good data set,
// counted; a node that starts meanwhile takes the last good data set from
// Redis.
func TestResourceFailingLoadKeepsLastGood(t *testing.T) {
	f := newFleet(t)
	src := &rates{}
	cfg := tier.ResourceConfig[string, string]{RetryAfter: 20 * time.Millisecond}
	a := newResource(t, f.node(tier.NodeConfig{}, nil), src, cfg)
	waitReady(t, a)
	boom := errors.New("database down")
	src.set(func(s *rates) { s.fail, s.version = boom, 1 })
	if err := a.Refill(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Refill with a failing source = %v", err)
	}
	src.set(func(s *rates) { s.fail, s.panics = nil, true })
	awaitFree(t, f, "rates")
	if err := a.Refill(context.Background()); !errors.Is(err, tier.ErrPanic) {
		t.Fatalf("Refill with a panicking source = %v; want ErrPanic", err)
	}
	src.set(func(s *rates) { s.panics, s.size = false, -1 })
	awaitFree(t, f, "rates")
	if err := a.Refill(context.Background()); err == nil || !strings.Contains(err.Error(), "no entries") {
		t.Fatalf("Refill with an empty source = %v; want an error", err)
	}
	if v, ok := a.Get("c0"); !ok || v != "v0" {
		t.Fatalf("after failed loads, Get = %q, %v; want the last good v0", v, ok)
	}
	if st := a.Stats(); st.LoadErrors != 3 || st.Loads != 1 {
		t.Fatalf("stats %+v; want 1 load, 3 load errors", st)
	}
	late := newResource(t, f.node(tier.NodeConfig{}, nil), src, cfg)
	waitReady(t, late)
	if v, _ := late.Get("c0"); v != "v0" || late.Stats().Fetched != 1 {
		t.Fatalf("a node started while the source fails serves %q (stats %+v); want v0 from Redis", v, late.Stats())
	}
}

// A Load that ends its goroutine (runtime.Goexit, as t.FailNow in it does)
// is a failed load: its claim is given up, as a failed load's is, and a
// new background loop takes over the reloads, so that the resource still
// arrives. A claim left to lapse would hold past the test's guard
// (LoadTimeout is an hour), and so would a loop that ended for good.
func TestResourceLoadThatEndsItsGoroutine(t *testing.T) {
	f := newFleet(t)
	var calls atomic.Int64
	r, err := tier.NewResource(f.node(tier.NodeConfig{}, nil), tier.ResourceConfig[string, string]{
		Name:        "exits",
		ReloadEvery: 40 * time.Millisecond,
		LoadTimeout: time.Hour,
		RetryAfter:  10 * time.Millisecond,
		Load: func(context.Context) (map[string]string, error) {
			if calls.Add(1) == 1 {
				runtime.Goexit()
			}
			return map[string]string{"c0": "v0"}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, r)
	if v, ok := r.Get("c0"); !ok || v != "v0" {
		t.Fatalf("Get = %q, %v; want v0", v, ok)
	}
	if st := r.Stats(); st.LoadErrors != 1 || st.Loads < 1 {
		t.Fatalf("stats %+v; want the load that ended its goroutine counted as 1 load error", st)
	}
}

// awaitFree waits until no node holds a resource's claim (or its failure
// mark).
func awaitFree(t *testing.T, f *fleet, name string) {
	t.Helper()
	key := tier.DefaultPrefix + ":r:{" + name + "}:f"
	deadline := time.Now().Add(guard)
	for f.rdb.Exists(context.Background(), key).Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the claim of %s stays", name)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, bounded by the guard
	}
}

// 100,000 entries of 200 bytes (20 MB) go through Redis in chunks; a data
// set over MaxBytes is refused with ErrValueTooLarge and the last good one
// stays.
func TestResourceLargeDataSet(t *testing.T) {
	f := newFleet(t)
	big := func(ctx context.Context) (map[int]string, error) {
		out := make(map[int]string, 100_000)
		for i := range 100_000 {
			out[i] = strings.Repeat(string(rune('a'+i%26)), 200)
		}
		return out, nil
	}
	cfg := tier.ResourceConfig[int, string]{Name: "big", Load: big, ReloadEvery: time.Hour}
	a, err := tier.NewResource(f.node(tier.NodeConfig{}, nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Each step gets the guard of its own: 20 MB through Redis under -race
	// on a loaded machine takes seconds a step.
	step := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		t.Cleanup(cancel)
		return ctx
	}
	if err := a.Wait(step()); err != nil {
		t.Fatal(err)
	}
	b, err := tier.NewResource(f.node(tier.NodeConfig{}, nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(step()); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 100_000 || b.Stats().Fetched != 1 || b.Stats().Version != a.Stats().Version {
		t.Fatalf("the second node holds %d entries (stats %+v); want the first's 100,000 from Redis", b.Len(), b.Stats())
	}
	for _, i := range []int{0, 1, 25, 99_999} {
		if va, _ := a.Get(i); len(va) != 200 {
			t.Fatalf("entry %d = %q", i, va)
		} else if vb, _ := b.Get(i); vb != va {
			t.Fatalf("entry %d: %q on one node, %q on the other", i, va, vb)
		}
	}
	if n := f.rdb.Keys(context.Background(), "tc:r:{big}:c:*").Val(); len(n) < 20 {
		t.Fatalf("%d chunks in Redis for 20 MB; want it split", len(n))
	}
	cfg.Name, cfg.MaxBytes = "small", 1<<20
	small, err := tier.NewResource(f.node(tier.NodeConfig{}, nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := small.Refill(step()); !errors.Is(err, tier.ErrValueTooLarge) {
		t.Fatalf("Refill over MaxBytes = %v; want ErrValueTooLarge", err)
	}
}

// A node that starts while Redis is down loads from the source itself.
func TestResourceWithoutRedis(t *testing.T) {
	f := newFleet(t)
	n := f.node(faultCfg, nil)
	f.srv.Kill()
	src := &rates{}
	r := newResource(t, n, src, tier.ResourceConfig[string, string]{})
	waitReady(t, r)
	if v, ok := r.Get("c2"); !ok || v != "v0" || r.Stats().Version != "" || r.Stats().RedisErrors == 0 {
		t.Fatalf("Get = %q, %v (stats %+v); want v0 loaded locally", v, ok, r.Stats())
	}
}

// RefillResources refills every resource of a node; names are checked.
func TestRefillResources(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	one, two := &rates{}, &rates{}
	r1 := newResource(t, n, one, tier.ResourceConfig[string, string]{Name: "one"})
	r2 := newResource(t, n, two, tier.ResourceConfig[string, string]{Name: "two"})
	waitReady(t, r1)
	waitReady(t, r2)
	one.set(func(s *rates) { s.version = 7 })
	two.set(func(s *rates) { s.version = 8 })
	if err := n.RefillResources(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v1, _ := r1.Get("c0"); v1 != "v7" {
		t.Fatalf("one = %q", v1)
	}
	if v2, _ := r2.Get("c0"); v2 != "v8" {
		t.Fatalf("two = %q", v2)
	}
	for _, name := range []string{"", "a{b}", strings.Repeat("n", 257), "one"} {
		if _, err := tier.NewResource(n, tier.ResourceConfig[string, string]{Name: name, Load: one.load, ReloadEvery: time.Hour}); !errors.Is(err, tier.ErrConfig) {
			t.Errorf("NewResource(%q) = %v; want ErrConfig", name, err)
		}
	}
}

// A lookup in a Resource against a plain Go map of the same entries.
func BenchmarkResourceGet(b *testing.B) {
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	const size = 10_000
	data := make(map[string]string, size)
	keys := make([]string, size)
	for i := range size {
		keys[i] = fmt.Sprint("currency-", i)
		data[keys[i]] = fmt.Sprint("rate-", i)
	}
	r, err := tier.NewResource(n, tier.ResourceConfig[string, string]{
		Name: "bench", ReloadEvery: time.Hour,
		Load: func(context.Context) (map[string]string, error) { return data, nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Wait(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.Run("resource", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := r.Get(keys[i%size]); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("go-map", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := data[keys[i%size]]; !ok {
				b.Fatal("miss")
			}
		}
	})
}
