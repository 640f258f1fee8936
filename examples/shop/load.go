package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What the readers ask for, and how often (percent).
const (
	kindProduct  = iota // GET /products/{id}: 60
	kindPage            // GET /categories/{id}/products: 15
	kindBatch           // GET /products?ids=: 15
	kindCurrency        // GET /currencies/{code}: 10
	kindProbe           // the writer's probes: GET /products/{id} and pages
	numKinds
)

var kindNames = [numKinds]string{"product", "page", "batch", "currency", "probe"}

// zipfS skews the readers' and the writer's choice of products: with
// 1,000 products, product 1 gets about a sixth of the reads and the first
// ten about half, as a shop's best sellers do.
const zipfS = 1.1

// batchSize is the ids of a reader's batch: that many products, and one
// id the table lacks.
const batchSize = 4

// loadResult is what the load generator saw.
type loadResult struct {
	For      time.Duration // the readers' run
	Readers  int
	Requests [numKinds]int64
	ByServer [servers]int64 // requests each server answered
	Failed   int64          // requests without the answer they should have had
	Failures []string       // the first few of them

	Writes []writeResult
	Grace  time.Duration // how long after the load a write may take to be seen everywhere

	Checked       int      // products read (by id, in batches, on pages), each checked against the bound
	Stale         int      // of them, older than a write committed more than Grace before the read began
	StaleExamples []string // the first few of them
	Monotonic     int      // reads of the products cache (by id, in batches), checked for monotonic reads
	Backwards     int      // of them, older than one already read on their server (within the bound: allowed)
	BackExamples  []string // the first few of them

	Stats [servers]statsReply // each server's /debug/stats after the load
}

// writeResult is one write of the writer: when it committed, and when it
// was seen on every server, by id and on its category page.
type writeResult struct {
	ID, Rev       int64
	Committed     time.Duration // since the load began, when the UPDATE returned
	Product, Page time.Duration // commit to seen on the last server; 0 if not seen on all
	Unseen        []string      // where it was never seen: "server 2 page"
}

// productRead is one product in one answer: by id, in a batch, on a
// category page, or in a probe.
type productRead struct {
	server     int
	id, rev    int64
	start, end time.Duration // since the load began
	page       bool          // from the category pages cache
}

// tally is what one goroutine of the load counts; they are added up at
// the end.
type tally struct {
	requests [numKinds]int64
	byServer [servers]int64
	failed   int64
	failures []string
	reads    []productRead
}

const keepFailures = 5

func (t *tally) fail(format string, args ...any) {
	t.failed++
	if len(t.failures) < keepFailures {
		t.failures = append(t.failures, fmt.Sprintf(format, args...))
	}
}

func (t *tally) add(o *tally) {
	for k := range o.requests {
		t.requests[k] += o.requests[k]
	}
	for n := range o.byServer {
		t.byServer[n] += o.byServer[n]
	}
	t.failed += o.failed
	for _, f := range o.failures {
		if len(t.failures) < keepFailures {
			t.failures = append(t.failures, f)
		}
	}
	t.reads = append(t.reads, o.reads...)
}

// loader runs one load.
type loader struct {
	s     *shop
	t0    time.Time // the load began
	end   time.Time // the readers stop, and the writer writes no more
	grace time.Duration
}

func (l *loader) since() time.Duration { return time.Since(l.t0) }

// load runs the readers and the writer for opts.For, checks what they
// saw, and collects each server's stats.
func (s *shop) load(ctx context.Context) (*loadResult, error) {
	// A write must be seen on every server at most LeaseTTL after the load
	// ends: see README.md, "The checks".
	l := &loader{s: s, t0: time.Now(), grace: s.opts.Lease}
	l.end = l.t0.Add(s.opts.For)

	var (
		total          tally
		mu             sync.Mutex
		readers, write sync.WaitGroup
		writes         []writeResult
	)
	for i := range s.opts.Readers {
		readers.Go(func() {
			var t tally
			l.reader(ctx, i, &t)
			mu.Lock()
			total.add(&t)
			mu.Unlock()
		})
	}
	write.Go(func() {
		var t tally
		writes = l.writer(ctx, &t)
		mu.Lock()
		total.add(&t)
		mu.Unlock()
	})
	readers.Wait()
	ran := l.since()
	write.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	r := &loadResult{
		For: ran, Readers: s.opts.Readers, Requests: total.requests, ByServer: total.byServer,
		Failed: total.failed, Failures: total.failures, Writes: writes, Grace: l.grace,
		Checked: len(total.reads),
	}
	slices.SortFunc(total.reads, func(a, b productRead) int { return cmp.Compare(a.start, b.start) })
	r.Stale, r.StaleExamples = staleReads(total.reads, writes, l.grace)
	cached := slices.DeleteFunc(total.reads, func(r productRead) bool { return r.page })
	r.Monotonic = len(cached)
	r.Backwards, r.BackExamples = backwards(cached)
	for n := range servers {
		a, err := s.get(ctx, n, "/debug/stats", &r.Stats[n])
		if err == nil && a.status != http.StatusOK {
			err = fmt.Errorf("GET /debug/stats on server %d answered %d", n, a.status)
		}
		if err != nil {
			return nil, err
		}
	}
	return r, nil
}

// reader asks the servers in turn for products (skewed towards the best
// sellers), category pages, batches and currencies until the load ends,
// and checks each answer.
func (l *loader) reader(ctx context.Context, i int, t *tally) {
	o := l.s.opts
	rng := rand.New(rand.NewPCG(o.Seed, uint64(i)+1))
	best := rand.NewZipf(rng, zipfS, 1, uint64(o.Products-1))
	product := func() int64 { return int64(best.Uint64()) + 1 }
	for n := 0; ctx.Err() == nil && time.Now().Before(l.end); n++ {
		srv := (i + n) % servers
		switch pick := rng.IntN(100); {
		case pick < 60:
			l.readProduct(ctx, t, kindProduct, srv, product())
		case pick < 75:
			l.readPage(ctx, t, kindPage, srv, 1+rng.Int64N(int64(o.Categories)))
		case pick < 90:
			ids := make([]int64, 0, batchSize+1)
			for range batchSize {
				ids = append(ids, product())
			}
			ids = slices.Insert(ids, rng.IntN(batchSize+1), l.s.missingID()+rng.Int64N(100))
			l.readBatch(ctx, t, srv, ids)
		default:
			code := "XXX" // one in ten is not in the table
			if rng.IntN(10) > 0 {
				code = currencies[rng.IntN(len(currencies))].Code
			}
			l.readCurrency(ctx, t, srv, code)
		}
	}
}

// request counts a request to server srv and returns when it began.
func (l *loader) request(t *tally, kind, srv int) time.Duration {
	t.requests[kind]++
	t.byServer[srv]++
	return l.since()
}

// readProduct reads product id from server srv and returns its revision.
func (l *loader) readProduct(ctx context.Context, t *tally, kind, srv int, id int64) (rev int64, ok bool) {
	path := "/products/" + strconv.FormatInt(id, 10)
	start := l.request(t, kind, srv)
	var p Product
	a, err := l.s.get(ctx, srv, path, &p)
	end := l.since()
	switch {
	case ctx.Err() != nil:
		return 0, false
	case err != nil:
		t.fail("%v", err)
		return 0, false
	case a.status != http.StatusOK || p.ID != id:
		t.fail("GET %s on server %d: %d, %+v", path, srv, a.status, p)
		return 0, false
	}
	rev = revision(p.Name)
	t.reads = append(t.reads, productRead{server: srv, id: id, rev: rev, start: start, end: end})
	return rev, true
}

// readPage reads a category page from server srv and returns it.
func (l *loader) readPage(ctx context.Context, t *tally, kind, srv int, category int64) ([]Product, bool) {
	path := pagePath(category)
	start := l.request(t, kind, srv)
	var page []Product
	a, err := l.s.get(ctx, srv, path, &page)
	end := l.since()
	switch {
	case ctx.Err() != nil:
		return nil, false
	case err != nil:
		t.fail("%v", err)
		return nil, false
	case a.status != http.StatusOK:
		t.fail("GET %s on server %d: %d", path, srv, a.status)
		return nil, false
	}
	if i := slices.IndexFunc(page, func(p Product) bool { return p.CategoryID != category }); i >= 0 {
		t.fail("GET %s on server %d listed %+v", path, srv, page[i])
		return nil, false
	}
	for _, p := range page {
		t.reads = append(t.reads, productRead{server: srv, id: p.ID, rev: revision(p.Name), start: start, end: end, page: true})
	}
	return page, true
}

func (l *loader) readBatch(ctx context.Context, t *tally, srv int, ids []int64) {
	path := "/products?ids=" + joinIDs(ids)
	start := l.request(t, kindBatch, srv)
	var items []batchItem
	a, err := l.s.get(ctx, srv, path, &items)
	end := l.since()
	switch {
	case ctx.Err() != nil:
		return
	case err != nil:
		t.fail("%v", err)
		return
	case a.status != http.StatusOK:
		t.fail("GET %s on server %d: %d", path, srv, a.status)
		return
	}
	if err := checkBatch(ids, items, l.s.missingID()); err != nil {
		t.fail("GET %s on server %d: %v", path, srv, err)
		return
	}
	for _, it := range items {
		if it.Product != nil {
			t.reads = append(t.reads, productRead{server: srv, id: it.ID, rev: revision(it.Product.Name), start: start, end: end})
		}
	}
}

func (l *loader) readCurrency(ctx context.Context, t *tally, srv int, code string) {
	path := "/currencies/" + code
	l.request(t, kindCurrency, srv)
	var c Currency
	a, err := l.s.get(ctx, srv, path, &c)
	want := http.StatusOK
	if code == "XXX" {
		want = http.StatusNotFound
	}
	switch {
	case ctx.Err() != nil:
	case err != nil:
		t.fail("%v", err)
	case a.status != want || want == http.StatusOK && c.Code != code:
		t.fail("GET %s on server %d: %d, %+v", path, srv, a.status, c)
	}
}

// writer renames products straight in PostgreSQL, on a connection of its
// own, as another program or psql would: the servers learn of it through
// NOTIFY only. After each write it probes every server until each shows
// the new name, by id and on the category page, and records how long that
// took.
func (l *loader) writer(ctx context.Context, t *tally) []writeResult {
	o := l.s.opts
	conn, err := l.s.db.Conn(ctx)
	if err != nil {
		t.fail("the writer's connection: %v", err)
		return nil
	}
	defer conn.Close()
	rng := rand.New(rand.NewPCG(o.Seed, 0))
	best := rand.NewZipf(rng, zipfS, 1, uint64(o.Products-1))
	tick := time.NewTicker(time.Second / time.Duration(o.Writes))
	defer tick.Stop()
	var (
		writes []writeResult
		rev    int64 // one sequence for all products: each product's revisions rise
	)
	for {
		select {
		case <-ctx.Done():
			return writes
		case <-tick.C:
		}
		if !time.Now().Before(l.end) {
			return writes
		}
		id := int64(best.Uint64()) + 1
		rev++
		var category int64
		err := conn.QueryRowContext(ctx, "UPDATE products SET name = $2 WHERE id = $1 RETURNING category_id",
			id, fmt.Sprintf("product %d rev %d", id, rev)).Scan(&category)
		committed := time.Now() // autocommit: committed when it returns
		if err != nil {
			if ctx.Err() == nil {
				t.fail("writing product %d: %v", id, err)
			}
			continue
		}
		w := l.probe(ctx, t, id, category, rev, committed)
		w.Committed = committed.Sub(l.t0)
		writes = append(writes, w)
	}
}

// probe asks every server for product id, and for its category page, until
// each shows revision rev or the deadline passes: the load's end plus the
// grace.
func (l *loader) probe(ctx context.Context, t *tally, id, category, rev int64, committed time.Time) writeResult {
	deadline := l.end.Add(l.grace)
	type probe struct {
		srv    int
		what   string
		t      tally
		seen   bool
		seenIn time.Duration
	}
	var (
		probes []*probe
		wg     sync.WaitGroup
	)
	for srv := range servers {
		for _, what := range []string{"product", "page"} {
			p := &probe{srv: srv, what: what}
			probes = append(probes, p)
			wg.Go(func() {
				seen, err := poll(ctx, deadline, func() (bool, error) {
					if what == "product" {
						got, ok := l.readProduct(ctx, &p.t, kindProbe, srv, id)
						return got >= rev, okOrErr(ok)
					}
					page, ok := l.readPage(ctx, &p.t, kindProbe, srv, category)
					i := slices.IndexFunc(page, func(q Product) bool { return q.ID == id })
					return i >= 0 && revision(page[i].Name) >= rev, okOrErr(ok)
				})
				if err == nil {
					p.seen, p.seenIn = true, seen.Sub(committed)
				}
			})
		}
	}
	wg.Wait()
	w := writeResult{ID: id, Rev: rev}
	for _, p := range probes {
		t.add(&p.t)
		switch {
		case !p.seen:
			w.Unseen = append(w.Unseen, fmt.Sprintf("server %d %s", p.srv, p.what))
		case p.what == "product":
			w.Product = max(w.Product, p.seenIn)
		default:
			w.Page = max(w.Page, p.seenIn)
		}
	}
	if len(w.Unseen) > 0 {
		w.Product, w.Page = 0, 0
	}
	return w
}

// errFailed ends a probe whose request failed (counted in the tally).
var errFailed = errors.New("request failed")

func okOrErr(ok bool) error {
	if !ok {
		return errFailed
	}
	return nil
}

// revision is the revision in a product's name: "product 7 rev 12" is 12,
// and a name the writer did not give ("product 7") is 0.
func revision(name string) int64 {
	i := strings.LastIndex(name, " rev ")
	if i < 0 {
		return 0
	}
	rev, err := strconv.ParseInt(name[i+len(" rev "):], 10, 64)
	if err != nil {
		return 0
	}
	return rev
}

// staleReads counts the reads that returned a revision of a product that
// a write had replaced more than bound before the read began: the
// library's staleness bound.
func staleReads(reads []productRead, writes []writeResult, bound time.Duration) (n int, examples []string) {
	byProduct := map[int64][]writeResult{} // in commit order, so in revision order
	for _, w := range writes {
		byProduct[w.ID] = append(byProduct[w.ID], w)
	}
	for _, r := range reads {
		ws := byProduct[r.id]
		// The first write that replaced what r returned.
		i, _ := slices.BinarySearchFunc(ws, r.rev+1, func(w writeResult, rev int64) int { return cmp.Compare(w.Rev, rev) })
		if i == len(ws) || r.start <= ws[i].Committed+bound {
			continue
		}
		n++
		if len(examples) < keepFailures {
			from := "by id"
			if r.page {
				from = "on a page"
			}
			examples = append(examples, fmt.Sprintf("server %d, product %d %s: rev %d read at %v, replaced by rev %d committed at %v",
				r.server, r.id, from, r.rev, round(r.start), ws[i].Rev, round(ws[i].Committed)))
		}
	}
	return n, examples
}

// backwards counts the reads that returned an older revision of a product
// than a read on the same server that had finished before they began:
// monotonic reads, per server. The library does not promise them (see
// README.md, "The checks"); the reads it counts are reported, and those
// beyond the staleness bound are staleReads' too.
func backwards(reads []productRead) (n int, examples []string) {
	key := func(r productRead) int64 { return int64(r.server)<<48 | r.id }
	slices.SortFunc(reads, func(a, b productRead) int {
		return cmp.Or(cmp.Compare(key(a), key(b)), cmp.Compare(a.start, b.start))
	})
	for lo := 0; lo < len(reads); {
		hi := lo + 1
		for hi < len(reads) && key(reads[hi]) == key(reads[lo]) {
			hi++
		}
		byStart := reads[lo:hi]
		byEnd := slices.SortedFunc(slices.Values(byStart), func(a, b productRead) int { return cmp.Compare(a.end, b.end) })
		var (
			j      int
			newest *productRead // the newest revision among the reads finished so far
		)
		for _, r := range byStart {
			for ; j < len(byEnd) && byEnd[j].end < r.start; j++ {
				if newest == nil || byEnd[j].rev > newest.rev {
					newest = &byEnd[j]
				}
			}
			if newest != nil && r.rev < newest.rev {
				n++
				if len(examples) < keepFailures {
					examples = append(examples, fmt.Sprintf("server %d, product %d: rev %d read at %v, after rev %d had been read there by %v",
						r.server, r.id, r.rev, round(r.start), newest.rev, round(newest.end)))
				}
			}
		}
		lo = hi
	}
	return n, examples
}
