package tier

import (
	"context"
	"sync"
)

// Tracer makes spans of a node's reads: set NodeConfig.Tracer to an
// adapter (the module github.com/tiercache/tiercache/tierotel has one for
// OpenTelemetry). Without one, nothing is traced.
//
// A Get's span begins after its L1 lookup: a fresh L1 hit makes none (it
// costs about a hundred nanoseconds; a span would cost many times that).
// Every other Get, and every GetMany with a key that L1 did not answer, has
// one. A call of Config.Fetch or FetchMany has one too, a child of the span
// of the Get that began the load; every other caller that waits for that
// load on this node is linked to it (FetchSpan.Waiter), so a trace of any
// of them finds the fetch that answered it.
//
// Methods are called on the caller's goroutine or the load's; they must be
// safe for concurrent use and fast, and must not call the Node or its
// Caches. Panics are recovered, as for Recorder.
type Tracer interface {
	// StartGet begins the span of a Get (keys 1) or a GetMany (keys the
	// number asked for) of namespace. The context it returns carries the
	// span to the load and the source; end is called once, with the answer
	// (for a GetMany, AnswerError if any key failed, else the answer of
	// the last key) and the call's error.
	StartGet(ctx context.Context, namespace string, keys int) (context.Context, func(a Answer, err error))
	// StartFetch begins the span of a call of the source for keys keys, in
	// ctx, the load's context. The context it returns is the one the
	// source gets.
	StartFetch(ctx context.Context, namespace string, keys int) (context.Context, FetchSpan)
}

// FetchSpan is the span of one call of the source.
type FetchSpan interface {
	// Waiter tells the span that the caller whose context is ctx waits
	// for its result (it joined the load on this node). It may be called
	// until End.
	Waiter(ctx context.Context)
	// End ends the span with the call's outcome and error.
	End(o FetchOutcome, err error)
}

// guardedTracer calls a Tracer, recovering its panics: on a panic, the
// context is the caller's and the span a no-op.
type guardedTracer struct {
	t Tracer
	n *Node
}

// recovered ends a call of the Tracer that panicked. It must be the
// deferred function itself, for recover to see the panic.
func (g guardedTracer) recovered(method string) {
	if r := recover(); r != nil {
		g.n.observerPanicked(method, r)
	}
}

func (g guardedTracer) StartGet(ctx context.Context, ns string, keys int) (out context.Context, end func(Answer, error)) {
	out, end = ctx, func(Answer, error) {}
	defer g.recovered("Tracer.StartGet")
	sctx, send := g.t.StartGet(ctx, ns, keys)
	if sctx == nil || send == nil {
		return ctx, end
	}
	return sctx, func(a Answer, err error) {
		defer g.recovered("Tracer.StartGet's end")
		send(a, err)
	}
}

func (g guardedTracer) StartFetch(ctx context.Context, ns string, keys int) (out context.Context, span FetchSpan) {
	out, span = ctx, nopSpan{}
	defer g.recovered("Tracer.StartFetch")
	sctx, s := g.t.StartFetch(ctx, ns, keys)
	if sctx == nil || s == nil {
		return ctx, span
	}
	return sctx, guardedSpan{s: s, g: g}
}

type guardedSpan struct {
	s FetchSpan
	g guardedTracer
}

func (s guardedSpan) Waiter(ctx context.Context) {
	defer s.g.recovered("FetchSpan.Waiter")
	s.s.Waiter(ctx)
}

func (s guardedSpan) End(o FetchOutcome, err error) {
	defer s.g.recovered("FetchSpan.End")
	s.s.End(o, err)
}

type nopSpan struct{}

func (nopSpan) Waiter(context.Context)  {}
func (nopSpan) End(FetchOutcome, error) {}

// waiters are the callers of one flight, for the span of its fetch: those
// that joined before the fetch began are linked when it begins, later ones
// at once.
type waiters struct {
	mu    sync.Mutex
	ctxs  []context.Context
	span  FetchSpan
	ended bool
}

type waitersKey struct{}

// join records a caller that joined the flight.
func (w *waiters) join(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.ended:
	case w.span != nil:
		w.span.Waiter(ctx)
	default:
		w.ctxs = append(w.ctxs, ctx)
	}
}

// fetching links every caller so far to span, and later ones as they come.
func (w *waiters) fetching(span FetchSpan) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.span, w.ended = span, false
	for _, ctx := range w.ctxs {
		span.Waiter(ctx)
	}
	w.ctxs = nil
}

// fetched ends the linking: the span is about to end.
func (w *waiters) fetched() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.span, w.ended = nil, true
}

// startFetch begins the span of a call of the source for keys keys in ctx,
// linked to the callers of the flight ctx belongs to; done ends it.
func (c *Cache[K, V]) startFetch(ctx context.Context, keys int) (context.Context, func(err error)) {
	t := c.node.tracer
	if t == nil {
		return ctx, func(error) {}
	}
	sctx, span := t.StartFetch(ctx, c.ns, keys)
	w, _ := ctx.Value(waitersKey{}).(*waiters)
	if w != nil {
		w.fetching(span)
	}
	return sctx, func(err error) {
		if w != nil {
			w.fetched()
		}
		span.End(fetchOutcome(err), err)
	}
}
