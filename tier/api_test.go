package tier_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/tier"
)

// GetOrFetch reads through the loader of its call, shared as Fetch is: a
// Get that joins its load gets its value, nothing is fetched twice, and
// the value is cached for plain Gets on other nodes. A Cache without Fetch
// refuses Get's loads clearly.
func TestGetOrFetch(t *testing.T) {
	f := newFleet(t)
	joined, join := events[string]()
	n := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(key string, leader bool) {
		if !leader {
			join(key)
		}
	}})
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns})
	if err != nil {
		t.Fatalf("New without Fetch: %v", err)
	}
	if _, err := c.Get(context.Background(), "k"); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("Get on a Cache without Fetch = %v; want ErrConfig", err)
	}
	release, loading := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	load := func(ctx context.Context, key string) (string, error) {
		if calls.Add(1) == 1 {
			close(loading)
		}
		<-release
		return "loaded-" + key, nil
	}
	first := make(chan result, 1)
	go func() {
		v, err := c.GetOrFetch(context.Background(), "k", load)
		first <- result{v, err}
	}()
	wait(t, loading, "GetOrFetch's load to begin")
	second := goGet(context.Background(), c, "k") // joins the load
	wait(t, joined, "the Get to join GetOrFetch's load")
	close(release)
	for _, ch := range []<-chan result{first, second} {
		if r := await(t, ch); r.err != nil || r.v != "loaded-k" {
			t.Fatalf("= %q, %v; want loaded-k", r.v, r.err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("the loader ran %d times, want 1", calls.Load())
	}
	other, err := tier.New(f.node(tier.NodeConfig{}, nil), tier.Config[string, string]{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := other.Get(context.Background(), "k"); err != nil || v != "loaded-k" {
		t.Fatalf("another node's Get = %q, %v; want the cached loaded-k", v, err)
	}
	if _, err := c.GetOrFetch(context.Background(), "k", nil); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("GetOrFetch with a nil loader = %v; want ErrConfig", err)
	}
	if _, err := tier.New(n, tier.Config[string, string]{Namespace: "refreshing", FreshFor: time.Second, TTL: time.Minute}); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("New with FreshFor and no source = %v; want ErrConfig", err)
	}
}

// A Cache with FetchMany and no Fetch reads single keys through FetchMany.
func TestFetchManyAlone(t *testing.T) {
	f := newFleet(t)
	var asked atomic.Int64
	c := newCache(t, f.node(tier.NodeConfig{}, nil), tier.Config[string, string]{
		FetchMany: func(_ context.Context, keys []string) (map[string]string, error) {
			asked.Add(int64(len(keys)))
			out := map[string]string{}
			for _, k := range keys {
				if k != "gone" {
					out[k] = "v-" + k
				}
			}
			return out, tier.Missing(keys, out)
		},
	})
	if v, err := c.Get(context.Background(), "k"); err != nil || v != "v-k" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if _, err := c.Get(context.Background(), "gone"); !errors.Is(err, tier.ErrNotFound) {
		t.Fatalf("Get(gone) = %v; want not found", err)
	}
	if asked.Load() != 2 {
		t.Fatalf("FetchMany asked for %d keys, want 2", asked.Load())
	}
}

// GetList answers in the request's order, repeated keys included, with
// "not found" and failures as errors of their keys.
func TestGetList(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("a", "A")
	src.set("b", "B")
	c := cache(t, f.node(tier.NodeConfig{}, nil), src)
	mustGet(t, c, "b") // one from a tier
	got, err := c.GetList(context.Background(), []string{"b", "gone", "a", "b", ""})
	want := []string{"B", "", "A", "B", ""}
	if !slices.Equal(got, want) {
		t.Fatalf("GetList = %q; want %q", got, want)
	}
	var ke *tier.KeyErrors[string]
	if !errors.As(err, &ke) || len(ke.Errs) != 2 || !errors.Is(ke.Errs["gone"], tier.ErrNotFound) || !errors.Is(ke.Errs[""], tier.ErrEmptyKey) {
		t.Fatalf("GetList's error = %v; want gone not found and the empty key invalid", err)
	}
	if got, err := c.GetList(context.Background(), []string{"a", "b"}); err != nil || !slices.Equal(got, []string{"A", "B"}) {
		t.Fatalf("GetList of found keys = %q, %v", got, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := c.GetList(ctx, []string{"new"}); got != nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("GetList with a cancelled ctx = %q, %v; want no values and the ctx's error", got, err)
	}
}

// query is a key of several fields with no Key function.
type query struct {
	Category int64
	Term     string
	InStock  bool
	Since    time.Time
	Page     struct{ N, Size uint16 }
}

// Memoize caches a function of a struct of arguments across nodes, with a
// canonical key: the same arguments are one entry (a time in another zone
// is the same instant), different ones are different entries, and
// Invalidate forgets a call everywhere.
func TestMemoize(t *testing.T) {
	f := newFleet(t)
	var calls atomic.Int64
	search := func(_ context.Context, q query) ([]string, error) {
		calls.Add(1)
		return []string{fmt.Sprintf("%d/%s/%v/%d", q.Category, q.Term, q.InStock, q.Page.N)}, nil
	}
	cfg := tier.Config[query, []string]{Namespace: "search"}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	ma, err := tier.Memoize(na, cfg, search)
	if err != nil {
		t.Fatalf("Memoize: %v", err)
	}
	mb, err := tier.Memoize(nb, cfg, search)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	q := query{Category: 7, Term: "lamp", InStock: true, Since: since}
	q.Page.N = 2
	if v, err := ma.Get(context.Background(), q); err != nil || v[0] != "7/lamp/true/2" {
		t.Fatalf("Get = %v, %v", v, err)
	}
	sameInstant := q
	sameInstant.Since = since.In(time.FixedZone("UTC+1", 3600))
	if v, err := mb.Get(context.Background(), sameInstant); err != nil || v[0] != "7/lamp/true/2" || calls.Load() != 1 {
		t.Fatalf("another node, same arguments = %v, %v after %d calls; want the cached result", v, err, calls.Load())
	}
	for _, other := range []query{
		{Category: 7, Term: "lamp", InStock: false, Since: since},
		{Category: 7, Term: "lamp ", InStock: true, Since: since},
		{Category: 77, Term: "lamp", InStock: true, Since: since},
		{Category: 7, Term: "lamp", InStock: true, Since: since.Add(time.Nanosecond)},
	} {
		other.Page.N = q.Page.N
		if _, err := ma.Get(context.Background(), other); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 5 {
		t.Fatalf("%d calls for 5 different arguments", calls.Load())
	}
	if err := ma.Invalidate(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	if _, err := mb.Get(context.Background(), q); err != nil || calls.Load() != 6 {
		t.Fatalf("after Invalidate: %v, %d calls; want a sixth call", err, calls.Load())
	}
	type bad struct{ F float64 }
	if _, err := tier.Memoize(na, tier.Config[bad, int]{Namespace: "bad"}, func(context.Context, bad) (int, error) { return 0, nil }); !errors.Is(err, tier.ErrConfig) {
		t.Fatalf("Memoize of a float argument without Key = %v; want ErrConfig", err)
	}
}
