package tier_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

func manyKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%03d", i)
	}
	return keys
}

// GetMany of 100 keys held in Redis costs one round trip, fills L1, and a
// second GetMany costs none.
func TestGetManyOneRoundTrip(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	keys := manyKeys(100)
	want := map[string]string{}
	for _, k := range keys {
		src.set(k, "v-"+k)
		want[k] = "v-" + k
	}
	filler := cache(t, f.node(tier.NodeConfig{}, nil), src)
	if _, err := filler.GetMany(context.Background(), keys); err != nil {
		t.Fatal(err)
	}
	reads := src.reads.Load()

	rdb := f.srv.Client(t)
	warmPools(t, rdb)
	rt := &rtCounter{}
	rdb.AddHook(rt)
	n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{L1MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	c := cache(t, n, src)
	before := rt.n.Load()
	got, err := c.GetMany(context.Background(), append(keys, keys[:10]...)) // duplicates too
	if err != nil {
		t.Fatal(err)
	}
	if rts := rt.n.Load() - before; rts != 1 {
		t.Errorf("GetMany of 100 keys in Redis: %d round trips; want 1", rts)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("GetMany (-want +got):\n%s", d)
	}
	tier.WaitL1(n)
	before = rt.n.Load()
	if got, err := c.GetMany(context.Background(), keys); err != nil || len(got) != 100 {
		t.Fatalf("second GetMany: %d values, %v", len(got), err)
	}
	if rts := rt.n.Load() - before; rts != 0 {
		t.Errorf("GetMany of 100 keys in L1: %d round trips; want 0", rts)
	}
	if r := src.reads.Load(); r != reads {
		t.Errorf("source read %d more times", r-reads)
	}
	if st := n.Stats(); st.Caches.L2Hits != 100 || st.Caches.L1Hits != 100 {
		t.Errorf("stats: %d L2 hits, %d L1 hits; want 100, 100", st.Caches.L2Hits, st.Caches.L1Hits)
	}
}

// GetMany reports each failure apart: values for the keys that worked, a
// *KeyErrors for the others (a failing fetch, an empty key), and a key the
// source does not have is simply absent. Every fetched key is cached.
func TestGetManyPartialFailure(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("in-redis", "r")
	src.set("fetched", "f")
	errBoom := errors.New("boom")
	inner := src.fetch
	fetch := func(ctx context.Context, k string) (string, error) {
		if k == "failing" {
			return "", errBoom
		}
		return inner(ctx, k)
	}
	cfg := tier.Config[string, string]{Fetch: fetch}
	mustGet(t, newCache(t, f.node(tier.NodeConfig{}, nil), cfg), "in-redis")
	n := f.node(tier.NodeConfig{}, nil)
	c := newCache(t, n, cfg)
	got, err := c.GetMany(context.Background(), []string{"in-redis", "fetched", "failing", "absent", ""})
	if d := cmp.Diff(map[string]string{"in-redis": "r", "fetched": "f"}, got); d != "" {
		t.Fatalf("values (-want +got):\n%s", d)
	}
	var ke *tier.KeyErrors[string]
	if !errors.As(err, &ke) {
		t.Fatalf("error %v; want *KeyErrors", err)
	}
	if len(ke.Errs) != 2 || !errors.Is(ke.Errs["failing"], errBoom) || !errors.Is(ke.Errs[""], tier.ErrEmptyKey) {
		t.Fatalf("key errors %v; want failing and the empty key", ke.Errs)
	}
	if !errors.Is(err, errBoom) || !errors.Is(err, tier.ErrEmptyKey) || errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("errors.Is on %v", err)
	}
	if s := f.stored("fetched"); s != "f" {
		t.Fatalf("fetched key not filled: L2 = %q", s)
	}
	if fl := f.flag("failing"); fl != "" {
		t.Fatalf("the failing key's claim was not released: %q", fl)
	}
	if got, err := c.GetMany(context.Background(), nil); err != nil || len(got) != 0 {
		t.Fatalf("GetMany of nothing = %v, %v", got, err)
	}
}

// With FetchMany, the keys missing from both tiers are read from the source
// in one call, and each is filled under its own claim; keys it reports as
// not found (tier.Missing) are cached as such with NotFoundTTL.
func TestGetManyFetchMany(t *testing.T) {
	f := newFleet(t)
	var calls, keysAsked atomic.Int64
	cfg := tier.Config[string, string]{
		Fetch: func(context.Context, string) (string, error) {
			t.Error("Fetch called; want FetchMany")
			return "", tier.ErrNotFound
		},
		FetchMany: func(_ context.Context, keys []string) (map[string]string, error) {
			calls.Add(1)
			keysAsked.Add(int64(len(keys)))
			out := map[string]string{}
			for _, k := range keys {
				if k != "gone" {
					out[k] = "v-" + k
				}
			}
			return out, tier.Missing(keys, out)
		},
		NotFoundTTL: time.Minute,
	}
	n := f.node(tier.NodeConfig{}, nil)
	c := newCache(t, n, cfg)
	keys := append(manyKeys(50), "gone")
	got, err := c.GetMany(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 50 || got["k007"] != "v-k007" {
		t.Fatalf("got %d values", len(got))
	}
	if calls.Load() != 1 || keysAsked.Load() != 51 {
		t.Fatalf("FetchMany: %d calls for %d keys; want 1 for 51", calls.Load(), keysAsked.Load())
	}
	for _, k := range keys[:50] {
		if s := f.stored(k); s != "v-"+k {
			t.Fatalf("L2 %q = %q", k, s)
		}
	}
	// The second time everything is cached, the "not found" included.
	other := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
	if got, err := other.GetMany(context.Background(), keys); err != nil || len(got) != 50 {
		t.Fatalf("second GetMany: %d values, %v", len(got), err)
	}
	if calls.Load() != 1 {
		t.Fatalf("FetchMany called %d times; want 1", calls.Load())
	}
}

// A panicking FetchMany fails its keys with ErrFetchPanic and releases
// their claims; the others are unaffected.
func TestGetManyFetchManyPanics(t *testing.T) {
	f := newFleet(t)
	cfg := tier.Config[string, string]{
		Fetch:     func(context.Context, string) (string, error) { return "", tier.ErrNotFound },
		FetchMany: func(context.Context, []string) (map[string]string, error) { panic("bad batch") },
	}
	c := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
	got, err := c.GetMany(context.Background(), []string{"a", "b"})
	if len(got) != 0 || !errors.Is(err, tier.ErrFetchPanic) {
		t.Fatalf("GetMany = %v, %v; want ErrFetchPanic", got, err)
	}
	if f.flag("a") != "" || f.flag("b") != "" {
		t.Fatal("claims not released")
	}
}

// A Fetch or FetchMany that ends its goroutine (runtime.Goexit, as
// t.FailNow in it does) fails its keys with an error, as a panic does;
// GetMany never answers them as absent, which would read as "not found",
// and their claims are given up at once. A key answered before is
// unaffected.
func TestGetManyFetchEndsItsGoroutine(t *testing.T) {
	for _, many := range []bool{false, true} {
		t.Run(fmt.Sprint("FetchMany=", many), func(t *testing.T) {
			f := newFleet(t)
			cfg := tier.Config[string, string]{Fetch: func(_ context.Context, key string) (string, error) {
				if key == "held" {
					return "v", nil
				}
				runtime.Goexit()
				return "", nil
			}}
			if many {
				cfg.FetchMany = func(context.Context, []string) (map[string]string, error) {
					runtime.Goexit()
					return nil, nil
				}
			}
			n := f.node(tier.NodeConfig{}, nil)
			c := newCache(t, n, cfg)
			if _, err := c.Get(context.Background(), "held"); err != nil {
				t.Fatal(err)
			}
			got, err := c.GetMany(context.Background(), []string{"a", "b", "held"})
			var ke *tier.KeyErrors[string]
			if !errors.As(err, &ke) || len(ke.Errs) != 2 || ke.Errs["a"] == nil || ke.Errs["b"] == nil {
				t.Fatalf("GetMany = %v, %v; want an error for a and b", got, err)
			}
			if diff := cmp.Diff(map[string]string{"held": "v"}, got); diff != "" {
				t.Fatalf("GetMany values (-want +got):\n%s", diff)
			}
			for _, k := range []string{"a", "b"} {
				if flag := f.flag(k); flag != "" {
					t.Fatalf("the claim of %s (%q) outlived its fetch; want it released", k, flag)
				}
			}
			// Every fetch but held's failed, and is counted so.
			if st := n.Stats().Caches; st.Fetches < 2 || st.FetchErrors != st.Fetches-1 {
				t.Fatalf("%d fetches, %d failed; want every one but held's counted as failed", st.Fetches, st.FetchErrors)
			}
			closed := make(chan error, 1)
			go func() { closed <- n.Close() }()
			if err := wait(t, closed, "Close"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A FetchMany batch whose settling ends its goroutine part-way (OnMiss
// calls runtime.Goexit for the second key) keeps the answer it gave the
// first key, "not found", and fails only the second.
func TestGetManyKeepsAnswersBeforeAGoexit(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	c := newCache(t, n, tier.Config[string, string]{
		Fetch: func(context.Context, string) (string, error) { return "", tier.ErrNotFound },
		FetchMany: func(_ context.Context, keys []string) (map[string]string, error) {
			found := map[string]string{"b": "v"}
			return found, tier.Missing(keys, found)
		},
		OnMiss: func(key string) {
			if key == "b" {
				runtime.Goexit()
			}
		},
	})
	got, err := c.GetMany(context.Background(), []string{"a", "b"})
	var ke *tier.KeyErrors[string]
	if len(got) != 0 || !errors.As(err, &ke) || len(ke.Errs) != 1 || ke.Errs["b"] == nil {
		t.Fatalf("GetMany = %v, %v; want a not found and an error for b alone", got, err)
	}
}

// GetMany keeps fail-safe: keys past their TTL whose refresh fails are
// returned with their kept values, each reported with ErrStale wrapping the
// cause, whether the refresh goes through Fetch or FetchMany.
func TestGetManyFailSafe(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprint("FetchMany=", batch), func(t *testing.T) {
			f := newFleet(t)
			src := &failing{source: newSource()}
			keys := []string{"a", "b"}
			cfg := tier.Config[string, string]{Fetch: src.fetch, TTL: time.Hour, MaxStale: time.Hour, L1TTL: -1}
			filler := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
			for _, k := range keys {
				src.set(k, "old-"+k)
				mustGet(t, filler, k)
				f.pexpire(k, 30*time.Minute) // past its TTL, kept for fail-safe
			}
			if batch {
				cfg.FetchMany = func(context.Context, []string) (map[string]string, error) { return nil, errSourceDown }
			}
			c := newCache(t, f.node(tier.NodeConfig{}, nil), cfg)
			src.fail.Store(true)
			got, err := c.GetMany(context.Background(), keys)
			if d := cmp.Diff(map[string]string{"a": "old-a", "b": "old-b"}, got); d != "" {
				t.Fatalf("values (-want +got):\n%s", d)
			}
			var ke *tier.KeyErrors[string]
			if !errors.As(err, &ke) || len(ke.Errs) != 2 || !errors.Is(ke.Errs["a"], tier.ErrStale) || !errors.Is(ke.Errs["b"], errSourceDown) {
				t.Fatalf("error %v; want ErrStale wrapping the cause for both keys", err)
			}
		})
	}
}

// FetchMany says "not found" per key with ErrNotFound, as Fetch does; a key
// it fails alone gets its own error; a key it answers neither way is an
// error, never a cached "not found".
func TestFetchManyPerKeyAnswers(t *testing.T) {
	f := newFleet(t)
	broken := errors.New("row does not decode")
	cfg := tier.Config[string, string]{
		FetchMany: func(_ context.Context, keys []string) (map[string]string, error) {
			return map[string]string{"found": "v"}, &tier.KeyErrors[string]{Errs: map[string]error{
				"gone":   fmt.Errorf("no row: %w", tier.ErrNotFound),
				"broken": broken,
			}}
		},
		NotFoundTTL: time.Minute,
	}
	cfg.Fetch = func(context.Context, string) (string, error) { return "", errors.New("Fetch called") }
	n := f.node(tier.NodeConfig{}, nil)
	c := newCache(t, n, cfg)
	got, err := c.GetMany(context.Background(), []string{"found", "gone", "broken", "forgotten"})
	var ke *tier.KeyErrors[string]
	if !errors.As(err, &ke) {
		t.Fatalf("GetMany = %v, %v; want a *KeyErrors", got, err)
	}
	if len(got) != 1 || got["found"] != "v" {
		t.Fatalf("values %v; want found only", got)
	}
	if len(ke.Errs) != 2 || !errors.Is(ke.Errs["broken"], broken) || ke.Errs["forgotten"] == nil || errors.Is(ke.Errs["forgotten"], tier.ErrNotFound) {
		t.Fatalf("errors %v; want broken's own error and an error (not \"not found\") for the key FetchMany forgot", ke.Errs)
	}
	if s := f.flag("forgotten"); s != "" {
		t.Fatalf("the forgotten key's claim is still held: %q", s)
	}
	// "gone" is cached as not found; "forgotten" and "broken" are not.
	if _, err := c.Get(context.Background(), "gone"); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("Get(gone) = %v; want the cached not found", err)
	}
	if st := c.Stats(); st.NegativeHits != 1 || st.FetchErrors != 0 {
		t.Fatalf("stats %+v; want one cached not found answered, and a successful FetchMany call", st)
	}
}

// Missing reports exactly the keys that the map lacks.
func TestMissing(t *testing.T) {
	if err := tier.Missing([]int{1, 2}, map[int]string{1: "a", 2: "b"}); err != nil {
		t.Fatalf("Missing with every key found = %v", err)
	}
	err := tier.Missing([]int{1, 2, 3}, map[int]string{2: "b"})
	var ke *tier.KeyErrors[int]
	if !errors.As(err, &ke) || len(ke.Errs) != 2 || !errors.Is(ke.Errs[1], tier.ErrNotFound) || !errors.Is(ke.Errs[3], tier.ErrNotFound) {
		t.Fatalf("Missing = %v; want keys 1 and 3 not found", err)
	}
}

// GetMany of a batch that mixes keys this node has seen in Redis (read
// with one MGET) with keys it has not (read with the script): every key
// gets its current value, a seen key whose value changed behind the node's
// back (its namespace invalidated on another node, its value deleted) is
// not served from the peek, and the batch costs two round trips, plus the
// fills of what it fetched.
func TestGetManyMixesPeekedAndScriptedKeys(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	keys := manyKeys(30)
	for _, k := range keys {
		src.set(k, "v1-"+k)
	}
	rdb := f.srv.Client(t)
	warmPools(t, rdb)
	rt := &rtCounter{}
	rdb.AddHook(rt)
	// A long lease: its renewals, every LeaseTTL/4, go through this
	// client and must not fall into the counted batch.
	n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{L1MaxBytes: 1 << 20, LeaseTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	c := newCache(t, n, tier.Config[string, string]{Fetch: src.fetch, L1TTL: -1})
	if _, err := c.GetMany(context.Background(), keys[:20]); err != nil { // seen: 0..19
		t.Fatal(err)
	}
	other := cache(t, f.node(tier.NodeConfig{}, nil), src)
	if _, err := other.GetMany(context.Background(), keys[20:]); err != nil { // in Redis, unseen: 20..29
		t.Fatal(err)
	}
	// Behind this node's back: key 0's value deleted (as by eviction).
	if err := f.rdb.Del(context.Background(), l2.KeysFor(tier.DefaultPrefix, ns, keys[0]).Value).Err(); err != nil {
		t.Fatal(err)
	}
	src.set(keys[0], "v2-"+keys[0])

	want := map[string]string{}
	for _, k := range keys {
		want[k] = "v1-" + k
	}
	want[keys[0]] = "v2-" + keys[0]
	before := rt.n.Load()
	got, err := c.GetMany(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("GetMany (-want +got):\n%s", d)
	}
	// One MGET for 0..19, one pipeline of scripts for 20..29 and the lost
	// key 0, one fill of key 0.
	if rts := rt.n.Load() - before; rts != 3 {
		t.Errorf("GetMany: %d round trips; want 3", rts)
	}

	// The namespace invalidated on the other node: no peeked value is
	// served; every key is fetched again.
	for _, k := range keys {
		src.set(k, "v3-"+k)
		want[k] = "v3-" + k
	}
	if err := other.InvalidateAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err = c.GetMany(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("GetMany after InvalidateAll (-want +got):\n%s", d)
	}
}
