package tier_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// Get reads through: a miss fetches and fills L2 and L1; the next Get on the
// node is an L1 hit, and a Get on another node is an L2 hit.
func TestGetFillsBothTiers(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n1, n2 := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	c1, c2 := cache(t, n1, src), cache(t, n2, src)
	if got := mustGet(t, c1, "k"); got != "v1" {
		t.Fatalf("Get = %q, want v1", got)
	}
	if got := f.stored("k"); got != "v1" {
		t.Fatalf("L2 = %q, want v1", got)
	}
	tier.WaitL1(n1)
	mustGet(t, c1, "k")
	if got := mustGet(t, c2, "k"); got != "v1" {
		t.Fatalf("other node's Get = %q", got)
	}
	// The lease and L1's occupancy vary with timing.
	bus := cmpopts.IgnoreFields(tier.Stats{}, "LeaseRenewals", "L1Bytes", "L1MaxBytes")
	want1 := tier.Stats{Caches: tier.Counts{Gets: 2, Misses: 1, L1Hits: 1, Fetches: 1, FillsLanded: 1}}
	if d := cmp.Diff(want1, n1.Stats(), bus); d != "" {
		t.Fatalf("node 1 stats (-want +got):\n%s", d)
	}
	if d := cmp.Diff(tier.Stats{Caches: tier.Counts{Gets: 1, L2Hits: 1}}, n2.Stats(), bus); d != "" {
		t.Fatalf("node 2 stats (-want +got):\n%s", d)
	}
}

// rtCounter counts round trips to Redis: a command or a pipeline is one.
type rtCounter struct{ n atomic.Int64 }

func (c *rtCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *rtCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *rtCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// warmPools opens a connection in each of the client's pools (go-redis
// keeps one for pipelines), so that round trips counted by a hook added
// afterwards are the operations' own, not a new connection's handshake.
func warmPools(t testing.TB, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error { p.Ping(ctx); return nil }); err != nil {
		t.Fatal(err)
	}
}

// The round trips of each operation: L2 hit 1 (through the read script the
// first time a node reads a key, through Peek after), miss and fill 2,
// Invalidate 1 (of one key or many), Set 1, L1 hit 0; a key the node has
// seen that Redis lost since (evicted) costs 3: Peek, then the script's
// claim, then the fill.
func TestRoundTrips(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for _, k := range []string{"a", "b", "c"} {
		src.set(k, "v")
	}
	counted := func() (*tier.Cache[string, string], *tier.Node, *rtCounter) {
		rdb := f.srv.Client(t)
		rt := &rtCounter{}
		warmPools(t, rdb)
		rdb.AddHook(rt)
		n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return cache(t, n, src), n, rt
	}
	c1, n1, rt1 := counted()
	c2, n2, rt2 := counted()
	measure := func(rt *rtCounter, op func()) int64 {
		before := rt.n.Load()
		op()
		return rt.n.Load() - before
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		rt   *rtCounter
		op   func()
		want int64
	}{
		{"miss and fill", rt1, func() { mustGet(t, c1, "a"); tier.WaitL1(n1) }, 2},
		{"L1 hit", rt1, func() { mustGet(t, c1, "a") }, 0},
		{"L2 hit", rt2, func() { mustGet(t, c2, "a") }, 1},
		{"L2 hit of a key seen", rt2, func() { tier.EvictL1(c2, "a"); mustGet(t, c2, "a") }, 1},
		{"a key seen, lost by Redis", rt2, func() {
			tier.EvictL1(c2, "a")
			if err := f.rdb.Del(ctx, l2.KeysFor(tier.DefaultPrefix, ns, "a").Value).Err(); err != nil {
				t.Fatal(err)
			}
			mustGet(t, c2, "a")
			tier.WaitL1(n2)
		}, 3},
		{"Invalidate one", rt1, func() { _ = c1.Invalidate(ctx, "a") }, 1},
		{"Invalidate three", rt1, func() { _ = c1.Invalidate(ctx, "a", "b", "c") }, 1},
		{"Set", rt1, func() { _ = c1.Set(ctx, "a", "w") }, 1},
	} {
		if got := measure(tc.rt, tc.op); got != tc.want {
			t.Errorf("%s: %d round trips, want %d", tc.name, got, tc.want)
		}
	}
}

// 500 goroutines reading one cold key on one node read the source once.
func TestHerdOneNode(t *testing.T) {
	const readers = 500
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	var registered atomic.Int64
	all := make(chan struct{})
	n := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(string, bool) {
		if registered.Add(1) == readers {
			close(all)
		}
	}})
	c := cache(t, n, src)
	var g errgroup.Group
	for range readers {
		g.Go(func() error {
			v, err := c.Get(context.Background(), "k")
			if err == nil && v != "v1" {
				err = fmt.Errorf("got %q", v)
			}
			return err
		})
	}
	held := src.next(t)
	wait(t, all, "every reader to join the flight")
	close(held.release)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := src.reads.Load(); got != 1 {
		t.Fatalf("source read %d times, want 1", got)
	}
}

// A Fetch that panics becomes ErrFetchPanic for every waiter, releases its
// claim, and does not stop later Gets.
func TestFetchPanic(t *testing.T) {
	f := newFleet(t)
	var panics atomic.Bool
	panics.Store(true)
	held := make(chan struct{})
	release := make(chan struct{})
	fetch := func(ctx context.Context, key string) (string, error) {
		if panics.Load() {
			close(held)
			<-release
			panic("boom")
		}
		return "ok", nil
	}
	var joined atomic.Int64
	allJoined := make(chan struct{})
	n := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(string, bool) {
		if joined.Add(1) == 3 {
			close(allJoined)
		}
	}})
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	results := []<-chan result{goGet(context.Background(), c, "k"), goGet(context.Background(), c, "k"), goGet(context.Background(), c, "k")}
	<-held
	wait(t, allJoined, "three waiters")
	close(release)
	for _, ch := range results {
		if r := await(t, ch); !errors.Is(r.err, tier.ErrFetchPanic) || !strings.Contains(r.err.Error(), "boom") {
			t.Fatalf("Get error = %v, want ErrFetchPanic with the panic value", r.err)
		}
	}
	if tok := f.flag("k"); tok != "" {
		t.Fatal("the panicking claimant did not release its flag")
	}
	panics.Store(false)
	if v := mustGet(t, c, "k"); v != "ok" {
		t.Fatalf("Get after the panic = %q", v)
	}
}

// ErrNotFound from Fetch reaches the caller, and the claim is released.
func TestNotFound(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, newSource())
	if _, err := c.Get(context.Background(), "missing"); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("Get = %v, want ErrNotFound", err)
	}
	if f.flag("missing") != "" || f.stored("missing") != "" {
		t.Fatal("a not-found fetch left a flag or a value")
	}
}

// One waiter's cancelled ctx returns that waiter only, whether it joined
// the flight or started it, at once, while the fetch is held: the shared
// fetch goes on and fills the cache for the other, so that a further Get
// fetches nothing. That holds too for one that joined a flight whose
// leader's ctx cannot be cancelled, which runs the load in its own
// goroutine. A ctx cancelled before the call fetches nothing.
func TestCancelledWaiter(t *testing.T) {
	t.Run("before the call", func(t *testing.T) {
		f := newFleet(t)
		src := newSource()
		c := cache(t, f.node(tier.NodeConfig{}, nil), src)
		dead, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Get(dead, "k"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get with a cancelled ctx = %v", err)
		}
		if n := src.reads.Load(); n != 0 {
			t.Fatalf("%d fetches; want none", n)
		}
	})
	for _, tc := range []struct {
		name   string
		leader bool // the leader is cancelled, not the one that joined
		stays  bool // the leader's ctx cannot be cancelled
	}{
		{"the one that joined", false, false},
		{"the one that started the flight", true, false},
		{"the one that joined a flight its leader runs", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			src.gated.Store(true)
			joined, onFlight := events[bool]()
			n := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(_ string, started bool) { onFlight(started) }})
			c := cache(t, n, src)
			ctxA, cancelA := context.WithCancel(context.Background())
			ctxB, cancelB := context.WithCancel(context.Background())
			defer cancelA()
			defer cancelB()
			if tc.stays {
				ctxA = context.Background()
			}
			gotA := goGet(ctxA, c, "k")
			if started := wait(t, joined, "A"); !started {
				t.Fatal("A did not start the flight")
			}
			held := src.next(t)
			gotB := goGet(ctxB, c, "k")
			if started := wait(t, joined, "B"); started {
				t.Fatal("B started a second flight")
			}
			cancelled, other := gotB, gotA
			if tc.leader {
				cancelA()
				cancelled, other = gotA, gotB
			} else {
				cancelB()
			}
			if r := await(t, cancelled); !errors.Is(r.err, context.Canceled) {
				t.Fatalf("the cancelled Get = %q, %v; want context.Canceled", r.v, r.err)
			}
			if err := held.ctx.Err(); err != nil {
				t.Fatalf("the shared fetch was cancelled with a waiter: %v", err)
			}
			close(held.release)
			if r := await(t, other); r.err != nil || r.v != "v1" {
				t.Fatalf("the other Get = %q, %v", r.v, r.err)
			}
			if st := n.Stats(); st.Caches.FillsLanded != 1 || st.Caches.Fetches != 1 {
				t.Fatalf("stats = %+v", st)
			}
			if got := f.stored("k"); got != "v1" {
				t.Fatalf("Redis holds %q, want v1", got)
			}
			src.gated.Store(false)
			if got := mustGet(t, c, "k"); got != "v1" || src.reads.Load() != 1 {
				t.Fatalf("a further Get = %q after %d fetches; want v1 after 1", got, src.reads.Load())
			}
		})
	}
}

// A flight's leader that is cancelled while nobody else waits stops the
// fetch, and the flight gives its claim up: once the node has closed, which
// waits for the flight, no flag is left for other nodes to wait on.
func TestCancelledLoneLeaderReleasesItsClaim(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	ctx, cancel := context.WithCancel(context.Background())
	got := goGet(ctx, c, "k")
	held := src.next(t)
	if f.flag("k") == "" {
		t.Fatal("no flag while the fetch runs")
	}
	cancel()
	if r := await(t, got); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Get = %q, %v; want context.Canceled", r.v, r.err)
	}
	select {
	case <-held.ctx.Done():
	case <-time.After(guard):
		t.Fatal("the fetch's context was not cancelled with its only caller")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if tok := f.flag("k"); tok != "" {
		t.Fatalf("flag %q left behind", tok)
	}
	if got := f.stored("k"); got != "" {
		t.Fatalf("Redis holds %q, want nothing", got)
	}
}

// Bytes in Redis that do not decode are a miss: removed, refetched,
// counted, never a panic.
func TestCorruptValueIsAMiss(t *testing.T) {
	foreign, err := cbor.Marshal([]any{2, []byte("k"), []byte{0x61, 0x78}})
	if err != nil {
		t.Fatal(err)
	}
	wrongType, err := l2.EncodeEnvelope("k", []byte{0x18, 0x2a}) // CBOR 42, not a string
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"garbage":         []byte("\xff\x00not cbor"),
		"empty":           {},
		"truncated":       wrongType[:len(wrongType)-1],
		"another version": foreign,
		"wrong type":      wrongType,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("k", "v1")
			n := f.node(tier.NodeConfig{}, nil)
			c := cache(t, n, src)
			keys := l2.KeysFor(tier.DefaultPrefix, ns, "k")
			if err := f.rdb.Set(context.Background(), keys.Value, b, time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			// With a valid meta (in no group), so that the bytes reach the
			// decoder; a value without meta is refused before it is read.
			if err := f.rdb.RPush(context.Background(), keys.Meta, "1").Err(); err != nil {
				t.Fatal(err)
			}
			if v := mustGet(t, c, "k"); v != "v1" {
				t.Fatalf("Get = %q", v)
			}
			if st := n.Stats(); st.Caches.Corrupt != 1 || st.Caches.FillsLanded != 1 {
				t.Fatalf("stats = %+v", st)
			}
			if s := f.stored("k"); s != "v1" {
				t.Fatalf("L2 = %q after the refill", s)
			}
		})
	}
}

// Keys with separators, braces, NUL, or a megabyte of text never collide in
// Redis across namespaces, and every value round-trips.
func TestKeysNeverCollide(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	big := strings.Repeat("x", tier.DefaultMaxKeyBytes)
	type nk struct{ ns, key string }
	pairs := []nk{
		{"a", "b:c"}, {"a:b", "c"}, {"a", "{b}"}, {"a{", "b}"}, {"a", "b\x00c"}, {"a\x00b", "c"},
		{"a", "=b"}, {"a", "#b"}, {"1:a", "b"}, {"a", big}, {"a", big[1:] + "y"}, {"a", "\xff\xfe"},
	}
	caches := map[string]*tier.Cache[string, string]{}
	for _, p := range pairs {
		if caches[p.ns] != nil {
			continue
		}
		c, err := tier.New(n, tier.Config[string, string]{
			Namespace: p.ns,
			Fetch: func(_ context.Context, key string) (string, error) {
				return fmt.Sprintf("%q/%d", p.ns, len(key)) + key[:min(len(key), 8)], nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		caches[p.ns] = c
	}
	ctx := context.Background()
	for _, p := range pairs {
		want := fmt.Sprintf("%q/%d", p.ns, len(p.key)) + p.key[:min(len(p.key), 8)]
		if err := caches[p.ns].Set(ctx, p.key, want); err != nil {
			t.Fatalf("Set(%q, %.20q): %v", p.ns, p.key, err)
		}
	}
	for _, p := range pairs {
		want := fmt.Sprintf("%q/%d", p.ns, len(p.key)) + p.key[:min(len(p.key), 8)]
		if v, err := caches[p.ns].Get(ctx, p.key); err != nil || v != want {
			t.Fatalf("Get(%q, %.20q) = %q, %v; want %q", p.ns, p.key, v, err, want)
		}
	}
	if got := n.Stats().Caches.Fetches; got != 0 {
		t.Fatalf("%d fetches: some Set was overwritten by another key's", got)
	}
}

// Bad input gets a clear error and writes nothing.
func TestBadInput(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	n := f.node(tier.NodeConfig{MaxKeyBytes: 16, MaxValueBytes: 64}, nil)
	c := cache(t, n, src)
	ctx := context.Background()
	long := strings.Repeat("k", 17)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"Get empty key", get(c, ""), tier.ErrEmptyKey},
		{"Get long key", get(c, long), tier.ErrKeyTooLarge},
		{"Set empty key", c.Set(ctx, "", "v"), tier.ErrEmptyKey},
		{"Set long key", c.Set(ctx, long, "v"), tier.ErrKeyTooLarge},
		{"Invalidate empty key", c.Invalidate(ctx, "ok", ""), tier.ErrEmptyKey},
		{"Invalidate long key", c.Invalidate(ctx, long), tier.ErrKeyTooLarge},
		{"Set large value", c.Set(ctx, "big", strings.Repeat("v", 100)), tier.ErrValueTooLarge},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if keys, _ := f.rdb.Keys(ctx, "tc:[vf]:*").Result(); len(keys) != 0 {
		t.Fatalf("bad input wrote %q", keys)
	}
	if src.reads.Load() != 0 {
		t.Fatal("bad input reached the source")
	}
}

func get(c *tier.Cache[string, string], key string) error {
	_, err := c.Get(context.Background(), key)
	return err
}

// A fetched value too large to cache is returned but not stored; a Set of
// one invalidates the key so that no tier keeps the old value.
func TestOversizeValue(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	huge := strings.Repeat("v", 200)
	src.set("k", huge)
	n := f.node(tier.NodeConfig{MaxValueBytes: 100}, nil)
	c := cache(t, n, src)
	if v := mustGet(t, c, "k"); v != huge {
		t.Fatal("Get did not return the large value")
	}
	if st := n.Stats(); st.Caches.Oversize != 1 || st.Caches.FillsLanded != 0 {
		t.Fatalf("stats = %+v", st)
	}
	if f.flag("k") != "" || f.stored("k") != "" {
		t.Fatal("the oversize fill left a flag or a value")
	}

	src.set("j", "small")
	mustGet(t, c, "j")
	if err := c.Set(context.Background(), "j", huge); !errors.Is(err, tier.ErrValueTooLarge) {
		t.Fatalf("Set = %v", err)
	}
	if s := f.stored("j"); s != "" {
		t.Fatalf("L2 still holds %q after an oversize Set", s)
	}
	src.set("j", "new")
	if v := mustGet(t, c, "j"); v != "new" {
		t.Fatalf("Get after the oversize Set = %q", v)
	}
}

// R24: an L1 entry never outlives the L2 entry it came from.
func TestL1TTLCappedByL2(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	c1 := cache(t, f.node(tier.NodeConfig{}, nil), src)
	mustGet(t, c1, "k")
	const remaining = 5 * time.Second
	if err := f.rdb.PExpire(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, "k").Value, remaining).Err(); err != nil {
		t.Fatal(err)
	}
	n2 := f.node(tier.NodeConfig{}, nil)
	c2 := cache(t, n2, src) // L1TTL defaults to a minute
	mustGet(t, c2, "k")
	tier.WaitL1(n2)
	ttl, ok := tier.L1TTL(c2, "k")
	if !ok || ttl <= 0 || ttl > remaining {
		t.Fatalf("L1 TTL = %v (present %v), want within (0, %v]", ttl, ok, remaining)
	}
}

// Integer and named string key types need no Key func; other key types
// need one, and work with it.
func TestKeyTypes(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	ctx := context.Background()

	ints, err := tier.New(n, tier.Config[int64, string]{Namespace: "int", Fetch: func(_ context.Context, k int64) (string, error) {
		return fmt.Sprint(k * 2), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ints.Get(ctx, -21); err != nil || v != "-42" {
		t.Fatalf("int Get = %q, %v", v, err)
	}
	if n, _ := f.rdb.Exists(ctx, l2.KeysFor(tier.DefaultPrefix, "int", "-21").Value).Result(); n != 1 {
		t.Fatal("an int key is not stored under its decimal form")
	}

	type userID string
	named, err := tier.New(n, tier.Config[userID, int]{Namespace: "named", Fetch: func(_ context.Context, k userID) (int, error) {
		return len(k), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := named.Get(ctx, "abc"); err != nil || v != 3 {
		t.Fatalf("named Get = %d, %v", v, err)
	}

	type pair struct{ A, B int }
	fetchPair := func(_ context.Context, k pair) (int, error) { return k.A + k.B, nil }
	type point struct{ X, Y float64 }
	if _, err := tier.New(n, tier.Config[point, int]{Namespace: "point", Fetch: func(context.Context, point) (int, error) { return 0, nil }}); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("a key of floats without Key: %v", err)
	}
	derived, err := tier.New(n, tier.Config[pair, int]{Namespace: "pair0", Fetch: fetchPair})
	if err != nil {
		t.Fatalf("a struct key of integers without Key: %v", err)
	}
	if v, err := derived.Get(ctx, pair{2, 3}); err != nil || v != 5 {
		t.Fatalf("derived pair Get = %d, %v", v, err)
	}
	pairs, err := tier.New(n, tier.Config[pair, int]{
		Namespace: "pair", Fetch: fetchPair,
		Key: func(k pair) string { return fmt.Sprintf("%d/%d", k.A, k.B) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := pairs.Get(ctx, pair{2, 3}); err != nil || v != 5 {
		t.Fatalf("pair Get = %d, %v", v, err)
	}
}

// Invalid configurations are errors, never panics.
func TestConfigErrors(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	rdb := f.srv.Client(t)
	for name, cfg := range map[string]tier.NodeConfig{
		"brace in prefix":     {Prefix: "a{b"},
		"long prefix":         {Prefix: strings.Repeat("p", 65)},
		"negative L1":         {L1MaxBytes: -1},
		"tiny flag TTL":       {FlagTTL: time.Microsecond},
		"negative key limit":  {MaxKeyBytes: -1},
		"negative value size": {MaxValueBytes: -1},
	} {
		if _, err := tier.NewNode(ctx, rdb, cfg); !errors.Is(err, tier.ErrConfig) {
			t.Errorf("NewNode with %s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := tier.NewNode(ctx, nil, tier.NodeConfig{}); !errors.Is(err, tier.ErrConfig) {
		t.Errorf("NewNode with a nil client: %v", err)
	}

	n := f.node(tier.NodeConfig{}, nil)
	fetch := newSource().fetch
	if _, err := tier.New[string, string](nil, tier.Config[string, string]{Namespace: "x", Fetch: fetch}); !errors.Is(err, tier.ErrConfig) {
		t.Errorf("New with a nil node: %v", err)
	}
	for name, cfg := range map[string]tier.Config[string, string]{
		"empty namespace":        {Fetch: fetch},
		"long namespace":         {Namespace: strings.Repeat("n", 1021), Fetch: fetch},
		"TTL over 146y":          {Namespace: "x", Fetch: fetch, TTL: 1<<63 - 1},
		"no source but FreshFor": {Namespace: "x", FreshFor: time.Second, TTL: time.Minute},
		"NUL namespace":          {Namespace: "\x00x", Fetch: fetch},
		"negative TTL":           {Namespace: "x", Fetch: fetch, TTL: -time.Second},
	} {
		if _, err := tier.New(n, cfg); !errors.Is(err, tier.ErrConfig) {
			t.Errorf("New with %s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "dup", Fetch: fetch}); err != nil {
		t.Fatal(err)
	}
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "dup", Fetch: fetch}); !errors.Is(err, tier.ErrConfig) {
		t.Errorf("a second Cache of one namespace: %v", err)
	}
}

// Close is idempotent, cancels fetches in flight and waits for them; every
// call afterwards returns ErrClosed.
func TestClose(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.gated.Store(true)
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	got := goGet(context.Background(), c, "k")
	held := src.next(t)
	closed := make(chan struct{})
	go func() {
		_ = n.Close()
		close(closed)
	}()
	<-held.ctx.Done() // Close cancelled the fetch, and waits for it to return
	wait(t, closed, "Close")
	if r := await(t, got); r.err == nil {
		t.Fatalf("Get through a closing node = %q, want an error", r.v)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, tier.ErrClosed) {
		t.Errorf("Get after Close: %v", err)
	}
	if err := c.Set(ctx, "k", "v"); !errors.Is(err, tier.ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
	if err := c.Invalidate(ctx, "k"); !errors.Is(err, tier.ErrClosed) {
		t.Errorf("Invalidate after Close: %v", err)
	}
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "other", Fetch: src.fetch}); !errors.Is(err, tier.ErrClosed) {
		t.Errorf("New after Close: %v", err)
	}
	if tok := f.flag("k"); tok != "" {
		t.Fatal("the cancelled claimant did not release its flag")
	}
}

// With Redis gone, Get answers from the source; Invalidate still applies
// locally and reports that propagation is pending.
func TestRedisDown(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	mustGet(t, c, "k")
	tier.WaitL1(n)
	f.srv.Kill()
	src.set("k", "v2")
	if err := c.Invalidate(context.Background(), "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with Redis down = %v, want ErrPending", err)
	}
	if v := mustGet(t, c, "k"); v != "v2" {
		t.Fatalf("Get with Redis down = %q, want v2 from the source", v)
	}
	if st := n.Stats(); st.RedisErrors < 1 || st.Caches.UncachedFetches != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// Values of any CBOR-encodable type round-trip, and a custom codec is used
// when given.
func TestCodecs(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	type user struct {
		ID    int
		Name  string
		Tags  []string
		Extra map[string]float64
	}
	want := user{ID: 7, Name: "ada", Tags: []string{"a"}, Extra: map[string]float64{"x": 1.5}}
	users, err := tier.New(n, tier.Config[int, user]{Namespace: "users", Fetch: func(context.Context, int) (user, error) { return want, nil }})
	if err != nil {
		t.Fatal(err)
	}
	mustGet := func() user {
		v, err := users.Get(context.Background(), 7)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	mustGet()
	other := f.node(tier.NodeConfig{}, nil)
	users2, err := tier.New(other, tier.Config[int, user]{Namespace: "users", Fetch: func(context.Context, int) (user, error) {
		return user{}, errors.New("must be an L2 hit")
	}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := users2.Get(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}

	raw, err := tier.New(n, tier.Config[string, []byte]{Namespace: "raw", Codec: rawCodec{},
		Fetch: func(context.Context, string) ([]byte, error) { return []byte("bytes"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := raw.Get(context.Background(), "k"); err != nil || !bytes.Equal(v, []byte("bytes")) {
		t.Fatalf("raw Get = %q, %v", v, err)
	}
	b, _ := f.rdb.Get(context.Background(), l2.KeysFor(tier.DefaultPrefix, "raw", "k").Value).Bytes()
	if env, err := l2.DecodeValue(b); err != nil || string(env.Data) != "bytes" {
		t.Fatalf("stored data = %q, %v; the custom codec was not used", env.Data, err)
	}
}

type rawCodec struct{}

func (rawCodec) Encode(v []byte) ([]byte, error)    { return v, nil }
func (rawCodec) Decode(data []byte) ([]byte, error) { return data, nil }

// Concurrent Sets of one key, on one node and across nodes, leave every
// tier holding the value Redis holds: no L1 keeps a value that lost the
// race at Redis.
func TestConcurrentSetsConverge(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v0")
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, na, a, "k")
	warm(t, nb, b, "k")
	var g errgroup.Group
	const writers = 32
	for i := range writers {
		c := a
		if i%2 == 1 {
			c = b
		}
		g.Go(func() error { return c.Set(context.Background(), "k", fmt.Sprintf("v%d", i+1)) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// Every Set of A has reached B once B applied a message published after
	// all of them.
	if err := a.Invalidate(context.Background(), "barrier"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "barrier")
	want := f.stored("k")
	if want == "" || want == "v0" {
		t.Fatalf("Redis holds %q after the Sets", want)
	}
	for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
		for range 2 { // the second read may come from L1
			if v := mustGet(t, c, "k"); v != want {
				t.Fatalf("node %s serves %q; Redis holds %q", name, v, want)
			}
		}
	}
}
