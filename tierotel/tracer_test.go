package tierotel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// spans is a Tracer over an SDK TracerProvider whose ended spans a
// SpanRecorder keeps.
func spans(t *testing.T, opts ...tierotel.Option) (*tierotel.Tracer, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr, err := tierotel.NewTracer(append([]tierotel.Option{tierotel.WithTracerProvider(tp)}, opts...)...)
	if err != nil {
		t.Fatalf("NewTracer: %v", err)
	}
	return tr, sr, tp.Tracer("test")
}

// countingTracer is the Tracer, with a note on waiters of every Waiter
// call: the test's view of callers joining a load.
type countingTracer struct {
	*tierotel.Tracer
	waiters chan struct{}
}

func (c countingTracer) StartFetch(ctx context.Context, namespace string, keys int) (context.Context, tier.FetchSpan) {
	ctx, s := c.Tracer.StartFetch(ctx, namespace, keys)
	return ctx, countingSpan{s, c.waiters}
}

type countingSpan struct {
	tier.FetchSpan
	waiters chan struct{}
}

func (s countingSpan) Waiter(ctx context.Context) {
	s.FetchSpan.Waiter(ctx)
	s.waiters <- struct{}{}
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// Ten concurrent Gets of a cold key on one node share one fetch: its span
// is the child of the first Get's span and links to the other nine.
func TestFetchSpanLinksWaiters(t *testing.T) {
	srv := redistest.Start(t)
	tr, sr, callers := spans(t, tierotel.WithAttributes(attribute.String("service.instance.id", "n1")))
	ct := countingTracer{tr, make(chan struct{}, 16)}
	n := newNode(t, srv, tier.NodeConfig{Tracer: ct})
	entered := make(chan context.Context, 1)
	release := make(chan struct{})
	c := newCache(t, n, ns, &source{fetch: func(ctx context.Context, _ string) (string, error) {
		entered <- ctx
		select {
		case <-release:
			return "v", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}})

	// Each Get runs under a span of its own caller, "caller i", so that
	// the test can tell the Gets' spans apart.
	results := make(chan error, 10)
	get := func(i int) {
		ctx, span := callers.Start(context.Background(), fmt.Sprint("caller ", i))
		v, err := c.Get(ctx, "k")
		if err == nil && v != "v" {
			err = fmt.Errorf("Get = %q, want v", v)
		}
		span.End() // before the result: the test reads the ended spans then
		results <- err
	}
	go get(0)
	var fctx context.Context
	select {
	case fctx = <-entered:
	case <-time.After(guard):
		t.Fatal("the fetch did not start")
	}
	for i := 1; i < 10; i++ {
		go get(i)
	}
	for i := range 9 {
		select {
		case <-ct.waiters:
		case <-time.After(guard):
			t.Fatalf("%d of 9 Gets joined the load", i)
		}
	}
	close(release)
	for range 10 {
		select {
		case err := <-results:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(guard):
			t.Fatal("a Get did not return")
		}
	}

	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var gets, fetches []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		byID[s.SpanContext().SpanID()] = s
		switch s.Name() {
		case tierotel.SpanGet:
			gets = append(gets, s)
		case tierotel.SpanFetch:
			fetches = append(fetches, s)
		}
	}
	if len(gets) != 10 || len(fetches) != 1 {
		t.Fatalf("%d get spans and %d fetch spans, want 10 and 1", len(gets), len(fetches))
	}
	fetch := fetches[0]
	if got := trace.SpanFromContext(fctx).SpanContext(); !got.Equal(fetch.SpanContext()) {
		t.Fatalf("the source's context carries span %v, want the fetch span %v", got, fetch.SpanContext())
	}
	caller := func(get sdktrace.ReadOnlySpan) string { return byID[get.Parent().SpanID()].Name() }
	first := byID[fetch.Parent().SpanID()]
	if first.Name() != tierotel.SpanGet || caller(first) != "caller 0" {
		t.Fatalf("the fetch span's parent is %q of %q, want the get span of caller 0", first.Name(), caller(first))
	}
	linked := map[string]bool{}
	for _, l := range fetch.Links() {
		g, ok := byID[l.SpanContext.SpanID()]
		if !ok || g.Name() != tierotel.SpanGet {
			t.Fatalf("the fetch span links to %v, not a get span", l.SpanContext)
		}
		linked[caller(g)] = true
	}
	for i := 1; i < 10; i++ {
		if !linked[fmt.Sprint("caller ", i)] {
			t.Errorf("the fetch span does not link to the get span of caller %d", i)
		}
	}
	if len(fetch.Links()) != 9 {
		t.Errorf("the fetch span has %d links, want 9", len(fetch.Links()))
	}
	for _, s := range append(gets, fetch) {
		if s.SpanKind() != trace.SpanKindInternal {
			t.Errorf("%s is a %v span, want internal", s.Name(), s.SpanKind())
		}
		if got := attr(s, tierotel.KeyNamespace).AsString(); got != ns {
			t.Errorf("%s: namespace %q", s.Name(), got)
		}
		if got := attr(s, tierotel.KeyKeyCount).AsInt64(); got != 1 {
			t.Errorf("%s: key count %d", s.Name(), got)
		}
		if got := attr(s, "service.instance.id").AsString(); got != "n1" {
			t.Errorf("%s: WithAttributes' attribute is %q", s.Name(), got)
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("%s: status %v", s.Name(), s.Status())
		}
	}
	if got := attr(fetch, tierotel.KeyFetchOutcome).AsString(); got != "success" {
		t.Errorf("fetch outcome %q", got)
	}
	if got := attr(first, tierotel.KeyAnswer).AsString(); got != "fetch" {
		t.Errorf("the first Get's answer %q", got)
	}
}

// A failed load marks both spans; a "not found" neither; a fresh L1 hit
// has no span.
func TestSpanStatus(t *testing.T) {
	srv := redistest.Start(t)
	tr, sr, _ := spans(t)
	n := newNode(t, srv, tier.NodeConfig{Tracer: tr})
	src := &source{fetch: func(_ context.Context, key string) (string, error) {
		switch key {
		case "panic":
			panic("boom")
		case "missing":
			return "", fmt.Errorf("no row: %w", tier.ErrNotFound)
		}
		return "v", nil
	}}
	c := newCache(t, n, ns, src)
	ctx := context.Background()
	last := func(name string) sdktrace.ReadOnlySpan {
		t.Helper()
		ended := sr.Ended()
		for i := len(ended) - 1; i >= 0; i-- {
			if ended[i].Name() == name {
				return ended[i]
			}
		}
		t.Fatalf("no %s span", name)
		return nil
	}

	if _, err := c.Get(ctx, "panic"); err == nil {
		t.Fatal("Get of a panicking Fetch did not fail")
	}
	get, fetch := last(tierotel.SpanGet), last(tierotel.SpanFetch)
	for _, tc := range []struct {
		s               sdktrace.ReadOnlySpan
		key, errorType  attribute.Key
		value, wantType string
	}{
		{get, tierotel.KeyAnswer, tierotel.KeyErrorType, "error", "fetch_panic"},
		{fetch, tierotel.KeyFetchOutcome, tierotel.KeyErrorType, "panic", "panic"},
	} {
		if got := attr(tc.s, tc.key).AsString(); got != tc.value {
			t.Errorf("%s: %s = %q, want %q", tc.s.Name(), tc.key, got, tc.value)
		}
		if got := attr(tc.s, tc.errorType).AsString(); got != tc.wantType {
			t.Errorf("%s: error.type = %q, want %q", tc.s.Name(), got, tc.wantType)
		}
		if tc.s.Status().Code != codes.Error || len(tc.s.Events()) != 1 || tc.s.Events()[0].Name != "exception" {
			t.Errorf("%s: status %v, events %v; want Error and one exception", tc.s.Name(), tc.s.Status(), tc.s.Events())
		}
	}

	if _, err := c.Get(ctx, "missing"); err == nil {
		t.Fatal("Get of a missing key did not fail")
	}
	get, fetch = last(tierotel.SpanGet), last(tierotel.SpanFetch)
	if a, o := attr(get, tierotel.KeyAnswer).AsString(), attr(fetch, tierotel.KeyFetchOutcome).AsString(); a != "fetch" || o != "not_found" {
		t.Errorf("answer %q, outcome %q; want fetch, not_found", a, o)
	}
	for _, s := range []sdktrace.ReadOnlySpan{get, fetch} {
		if s.Status().Code != codes.Unset || len(s.Events()) != 0 {
			t.Errorf("%s of a missing key: status %v, events %v", s.Name(), s.Status(), s.Events())
		}
	}

	mustGet(t, c, "k")
	settleL1(t, n, syncCache(t, n))
	before := len(sr.Ended())
	mustGet(t, c, "k")
	if after := len(sr.Ended()); after != before {
		t.Fatalf("an L1 hit made %d spans", after-before)
	}
}

func TestBadTracerOptions(t *testing.T) {
	if _, err := tierotel.NewTracer(tierotel.WithTracerProvider(nil)); err == nil {
		t.Error("NewTracer(WithTracerProvider(nil)) did not fail")
	}
}
