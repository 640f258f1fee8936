package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// tourStep is one stop of the tour of the endpoints that runs before the
// load: what was asked, what came back, and, if a check failed, why.
type tourStep struct {
	Ask    string
	Saw    string
	Failed string
}

// tour asks each endpoint a question whose answer it knows, and checks it.
// Which tier answered (X-Cache) is shown, not checked: ristretto applies
// L1 fills from a buffer, so a read right after a fill may still miss.
func (s *shop) tour(ctx context.Context) []tourStep {
	steps := []tourStep{
		s.tourProduct(ctx),
		s.tourNotFound(ctx),
		s.tourBatch(ctx),
		s.tourPage(ctx),
		s.tourCurrency(ctx),
		s.tourPut(ctx),
	}
	return steps
}

// missingID is a product id the table does not have.
func (s *shop) missingID() int64 { return int64(s.opts.Products) + 1 }

// categoryOf is the category the seed rows put product id in.
func (s *shop) categoryOf(id int64) int64 { return (id-1)%int64(s.opts.Categories) + 1 }

func (s *shop) tourProduct(ctx context.Context) tourStep {
	st := tourStep{Ask: "GET /products/1"}
	var saw []string
	for i, n := range []int{0, 0, 1} {
		var p Product
		a, err := s.get(ctx, n, "/products/1", &p)
		switch {
		case err != nil:
			st.Failed = err.Error()
		case a.status != http.StatusOK || p.ID != 1:
			st.Failed = fmt.Sprintf("server %d answered %d, product %d", n, a.status, p.ID)
		}
		if st.Failed != "" {
			return st
		}
		again := ""
		if i == 1 {
			again = " again"
		}
		saw = append(saw, fmt.Sprintf("server %d%s: %s", n, again, a.cache))
	}
	st.Saw = strings.Join(saw, ", ")
	return st
}

func (s *shop) tourNotFound(ctx context.Context) tourStep {
	path := fmt.Sprintf("/products/%d", s.missingID())
	st := tourStep{Ask: "GET " + path}
	var saw []string
	for range 2 {
		a, err := s.get(ctx, 2, path, nil)
		switch {
		case err != nil:
			st.Failed = err.Error()
		case a.status != http.StatusNotFound:
			st.Failed = fmt.Sprintf("server 2 answered %d, not 404", a.status)
		}
		if st.Failed != "" {
			return st
		}
		saw = append(saw, a.cache)
	}
	st.Saw = "server 2: 404 twice, from " + strings.Join(saw, ", then ")
	return st
}

func (s *shop) tourBatch(ctx context.Context) tourStep {
	ids := []int64{3, s.missingID(), 1, 3}
	path := "/products?ids=" + joinIDs(ids)
	st := tourStep{Ask: "GET " + path}
	var items []batchItem
	a, err := s.get(ctx, 1, path, &items)
	if err != nil {
		st.Failed = err.Error()
		return st
	}
	if a.status != http.StatusOK {
		st.Failed = fmt.Sprintf("server 1 answered %d", a.status)
		return st
	}
	if err := checkBatch(ids, items, s.missingID()); err != nil {
		st.Failed = err.Error()
		return st
	}
	var saw []string
	for _, it := range items {
		if it.Error != "" {
			saw = append(saw, fmt.Sprintf("%d (%s)", it.ID, it.Error))
		} else {
			saw = append(saw, strconv.FormatInt(it.ID, 10))
		}
	}
	st.Saw = "server 1: in request order: " + strings.Join(saw, ", ")
	return st
}

// checkBatch checks a batch answer: one item per id, in the request's
// order, each the product asked for, and "not found" exactly for the ids
// from missing up, which the table lacks.
func checkBatch(ids []int64, items []batchItem, missing int64) error {
	if len(items) != len(ids) {
		return fmt.Errorf("%d items for %d ids", len(items), len(ids))
	}
	for i, it := range items {
		switch {
		case it.ID != ids[i]:
			return fmt.Errorf("item %d is id %d, asked for %d", i, it.ID, ids[i])
		case ids[i] >= missing && it.Error != "not found":
			return fmt.Errorf("item %d (id %d, not in the table): %+v, not \"not found\"", i, ids[i], it)
		case ids[i] < missing && (it.Product == nil || it.Product.ID != ids[i]):
			return fmt.Errorf("item %d (id %d): %+v, not the product", i, ids[i], it)
		}
	}
	return nil
}

func (s *shop) tourPage(ctx context.Context) tourStep {
	const category = 2
	path := fmt.Sprintf("/categories/%d/products", category)
	st := tourStep{Ask: "GET " + path}
	want := 0
	for id := int64(1); id <= int64(s.opts.Products); id++ {
		if s.categoryOf(id) == category {
			want++
		}
	}
	var page []Product
	a, err := s.get(ctx, 2, path, &page)
	switch {
	case err != nil:
		st.Failed = err.Error()
	case a.status != http.StatusOK:
		st.Failed = fmt.Sprintf("server 2 answered %d", a.status)
	case len(page) != want:
		st.Failed = fmt.Sprintf("server 2 listed %d products, the table has %d in category %d", len(page), want, category)
	case slices.ContainsFunc(page, func(p Product) bool { return p.CategoryID != category }):
		st.Failed = fmt.Sprintf("server 2 listed a product of another category: %+v", page)
	default:
		st.Saw = fmt.Sprintf("server 2: %d products, all of category %d, from %s", len(page), category, a.cache)
	}
	return st
}

func (s *shop) tourCurrency(ctx context.Context) tourStep {
	st := tourStep{Ask: "GET /currencies/EUR"}
	for n := range servers {
		var c Currency
		a, err := s.get(ctx, n, "/currencies/EUR", &c)
		switch {
		case err != nil:
			st.Failed = err.Error()
		case a.status != http.StatusOK || c != (Currency{"EUR", 0.92}):
			st.Failed = fmt.Sprintf("server %d answered %d, %+v", n, a.status, c)
		}
		if st.Failed != "" {
			return st
		}
	}
	a, err := s.get(ctx, 0, "/currencies/XXX", nil)
	switch {
	case err != nil:
		st.Failed = err.Error()
	case a.status != http.StatusNotFound:
		st.Failed = fmt.Sprintf("server 0 answered %d for XXX, not 404", a.status)
	default:
		st.Saw = "every server: EUR 0.92 from its own memory; XXX: 404"
	}
	return st
}

// tourPut moves the last product to the next category through the API
// and checks read-your-writes on the server that wrote, then that the
// other servers follow within LeaseTTL.
func (s *shop) tourPut(ctx context.Context) tourStep {
	id := int64(s.opts.Products)
	from := s.categoryOf(id)
	to := from%int64(s.opts.Categories) + 1
	path := fmt.Sprintf("/products/%d", id)
	st := tourStep{Ask: fmt.Sprintf("PUT %s (category %d to %d)", path, from, to)}

	// Every server caches the product and both pages first, so that each
	// has something to evict.
	var old Product
	for n := range servers {
		for _, p := range []string{path, pagePath(from), pagePath(to)} {
			a, err := s.get(ctx, n, p, nil)
			if err == nil && a.status != http.StatusOK {
				err = fmt.Errorf("GET %s on server %d answered %d", p, n, a.status)
			}
			if err != nil {
				st.Failed = err.Error()
				return st
			}
		}
	}
	if _, err := s.get(ctx, 1, path, &old); err != nil {
		st.Failed = err.Error()
		return st
	}
	want := Product{ID: id, Name: fmt.Sprintf("product %d moved", id), PriceCents: old.PriceCents, CategoryID: to}
	a, err := s.do(ctx, 1, http.MethodPut, path, productUpdate{Name: want.Name, PriceCents: want.PriceCents, CategoryID: to}, nil)
	if err == nil && a.status != http.StatusOK {
		err = fmt.Errorf("server 1 answered %d", a.status)
	}
	if err != nil {
		st.Failed = err.Error()
		return st
	}
	put := time.Now()

	// moved says whether server n shows the move in all three answers.
	moved := func(n int) (bool, error) {
		var p Product
		var fromPage, toPage []Product
		for _, q := range []struct {
			path string
			v    any
		}{{path, &p}, {pagePath(from), &fromPage}, {pagePath(to), &toPage}} {
			a, err := s.get(ctx, n, q.path, q.v)
			if err == nil && a.status != http.StatusOK {
				err = fmt.Errorf("GET %s on server %d answered %d", q.path, n, a.status)
			}
			if err != nil {
				return false, err
			}
		}
		has := func(page []Product) bool { return slices.Contains(page, want) }
		return p == want && has(toPage) && !slices.ContainsFunc(fromPage, func(p Product) bool { return p.ID == id }), nil
	}
	ok, err := moved(1)
	switch {
	case err != nil:
		st.Failed = err.Error()
		return st
	case !ok:
		st.Failed = "server 1, which wrote, did not show the move at once (read-your-writes)"
		return st
	}
	saw := []string{"read back at once on server 1 (product and both pages)"}
	deadline := put.Add(s.opts.Lease)
	for _, n := range []int{0, 2} {
		seen, err := poll(ctx, deadline, func() (bool, error) { return moved(n) })
		if errors.Is(err, errPastDeadline) {
			st.Failed = fmt.Sprintf("server %d did not show the move within LeaseTTL (%v) of the PUT", n, s.opts.Lease)
			return st
		}
		if err != nil {
			st.Failed = fmt.Sprintf("server %d: %v", n, err)
			return st
		}
		saw = append(saw, fmt.Sprintf("on server %d %s later", n, round(seen.Sub(put))))
	}
	st.Saw = strings.Join(saw, ", ")
	return st
}

func pagePath(category int64) string { return fmt.Sprintf("/categories/%d/products", category) }

// errPastDeadline is poll's error when the condition never held.
var errPastDeadline = errors.New("not seen before the deadline")

// poll calls check until it returns true, and returns when that answer
// arrived; or an error; or errPastDeadline once a check that began after
// deadline has returned false (one that began before may rightly see the
// old state). Each call is a round trip to a server: poll never sleeps.
func poll(ctx context.Context, deadline time.Time, check func() (bool, error)) (time.Time, error) {
	for {
		began := time.Now()
		ok, err := check()
		now := time.Now()
		switch {
		case err != nil:
			return now, err
		case ok:
			return now, nil
		case ctx.Err() != nil:
			return now, ctx.Err()
		case began.After(deadline):
			return now, errPastDeadline
		}
	}
}

func joinIDs(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, ",")
}

// round shortens a duration for a table: 1.234ms, 12.3ms, 1.23s.
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(time.Microsecond)
	}
	return d.Round(100 * time.Nanosecond)
}
