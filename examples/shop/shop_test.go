package main

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/tier"
)

func TestMain(m *testing.M) {
	// The shop starts its program again as each API server: under go test,
	// that program is this test binary, started with -serve.
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// testOptions are a short run's: a smaller catalogue, fewer readers.
func testOptions(t *testing.T) options {
	return options{
		DSN:        defaultDSN,
		For:        2500 * time.Millisecond,
		Readers:    4,
		Writes:     20,
		Products:   200,
		Categories: 10,
		Lease:      tier.DefaultLeaseTTL,
		Seed:       1,
		Log:        testLog{t},
	}
}

// startShop starts the shop, and stops it (the processes, the schema,
// Redis) when the test ends, whatever happened. It fails, never skips,
// when PostgreSQL or redis-server is missing.
func startShop(t *testing.T, o options) *shop {
	t.Helper()
	s, err := start(t.Context(), o)
	if err != nil {
		t.Fatalf("starting the shop: %v", err)
	}
	t.Cleanup(func() {
		if err := s.close(); err != nil {
			t.Errorf("stopping the shop: %v", err)
		}
	})
	return s
}

// runShop takes the tour and runs the load, and logs what they printed.
func runShop(t *testing.T, s *shop) *report {
	t.Helper()
	var out strings.Builder
	rep, err := s.exercise(t.Context(), &out)
	t.Logf("the shop's output:\n%s", out.String())
	if err != nil {
		t.Fatalf("the run did not finish: %v", err)
	}
	return rep
}

// TestShop runs the whole shop, as go run . does, with a short load: the
// machine's PostgreSQL, a private redis-server, three server processes.
func TestShop(t *testing.T) {
	s := startShop(t, testOptions(t))
	ctx := t.Context()

	// The batch endpoint: in the request's order, the missing id said so.
	var items []batchItem
	a, err := s.get(ctx, 2, "/products?ids=5,999999,2,5", &items)
	if err != nil || a.status != http.StatusOK {
		t.Fatalf("GET /products?ids=5,999999,2,5: %d, %v", a.status, err)
	}
	p5 := &Product{ID: 5, Name: "product 5", PriceCents: 9695, CategoryID: 5}
	p2 := &Product{ID: 2, Name: "product 2", PriceCents: 5938, CategoryID: 2}
	want := []batchItem{{ID: 5, Product: p5}, {ID: 999999, Error: "not found"}, {ID: 2, Product: p2}, {ID: 5, Product: p5}}
	if !slices.EqualFunc(items, want, func(a, b batchItem) bool {
		return a.ID == b.ID && a.Error == b.Error && (a.Product == nil) == (b.Product == nil) && (a.Product == nil || *a.Product == *b.Product)
	}) {
		t.Errorf("GET /products?ids=5,999999,2,5 = %s, want %s", show(items), show(want))
	}

	// The currency resource, on every server.
	for n := range servers {
		var c Currency
		a, err := s.get(ctx, n, "/currencies/GBP", &c)
		if err != nil || a.status != http.StatusOK || c != (Currency{"GBP", 0.79}) {
			t.Errorf("GET /currencies/GBP on server %d: %d, %+v, %v", n, a.status, c, err)
		}
	}

	rep := runShop(t, s)
	if len(rep.Failures) > 0 {
		t.Errorf("checks failed:\n%s", strings.Join(rep.Failures, "\n"))
	}
	l := rep.Load
	for n := range servers {
		if l.ByServer[n] == 0 {
			t.Errorf("server %d answered no request", n)
		}
		if len(l.Stats[n].Caches) != 2 {
			t.Errorf("server %d reported %d caches, want 2", n, len(l.Stats[n].Caches))
		}
		for _, c := range l.Stats[n].Caches {
			if c.HitRatio <= 0 {
				t.Errorf("server %d, cache %s: hit ratio %v, want above 0 (%+v)", n, c.Namespace, c.HitRatio, c.Counts)
			}
		}
	}
	seen := 0
	for _, w := range l.Writes {
		if len(w.Unseen) == 0 {
			seen++
		}
	}
	if seen < 3 {
		t.Errorf("%d writes seen on every server, want at least 3", seen)
	}
}

// TestShopWithoutTrigger is the checks' negative control: without the
// trigger nothing tells the servers of the writer's writes, and the run
// must fail, saying so. (A checker that sees nothing when invalidation is
// broken proves nothing.)
func TestShopWithoutTrigger(t *testing.T) {
	o := testOptions(t)
	o.For, o.Lease, o.noTrigger = time.Second, 500*time.Millisecond, true
	rep := runShop(t, startShop(t, o))
	for _, want := range []string{"not seen everywhere", "stale beyond the bound"} {
		if !slices.ContainsFunc(rep.Failures, func(f string) bool { return strings.Contains(f, want) }) {
			t.Errorf("no failure says %q; the failures:\n%s", want, strings.Join(rep.Failures, "\n"))
		}
	}
}

// testLog writes the servers' standard error to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// show prints batch items with their products, not their pointers.
func show(items []batchItem) string {
	var s []string
	for _, it := range items {
		if it.Product != nil {
			s = append(s, fmt.Sprintf("{%d %+v}", it.ID, *it.Product))
		} else {
			s = append(s, fmt.Sprintf("{%d %q}", it.ID, it.Error))
		}
	}
	return "[" + strings.Join(s, " ") + "]"
}
