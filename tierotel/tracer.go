package tierotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache/tier"
)

// Tracer is a tier.Tracer that makes OpenTelemetry spans; set it as
// tier.NodeConfig.Tracer. It is safe for concurrent use, and may serve
// several nodes.
//
// A Get that L1 did not answer has a span named "tiercache.get"; a call of
// the source has one named "tiercache.fetch", a child of the span of the
// Get that began the load, with a link to the span of every other Get on
// the node that waited for that load. Both are internal spans.
type Tracer struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue // WithAttributes, on every span
}

// NewTracer returns a Tracer whose spans come from the Tracer named
// ScopeName of the TracerProvider of WithTracerProvider (default: the
// global one). It fails if an option is invalid.
func NewTracer(opts ...Option) (*Tracer, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Tracer{
		tracer: cfg.tp.Tracer(ScopeName),
		attrs:  append([]attribute.KeyValue(nil), cfg.attrs...),
	}, nil
}

// start begins a span named name with the Tracer's attributes, the
// namespace (if any) and the number of keys.
func (t *Tracer) start(ctx context.Context, name, namespace string, keys int) (context.Context, trace.Span) {
	attrs := make([]attribute.KeyValue, 0, len(t.attrs)+2)
	attrs = append(attrs, t.attrs...)
	if namespace != "" {
		attrs = append(attrs, KeyNamespace.String(namespace))
	}
	attrs = append(attrs, KeyKeyCount.Int(keys))
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
}

// StartGet begins the span of a Get or GetMany of namespace for keys keys.
// Its end sets the answer (tiercache.answer); an AnswerError also records
// the error, sets error.type to its class ("timeout", "canceled",
// "fetch_panic", "panic", "closed", "invalid_key" or "_OTHER") and the
// span's status to Error. Any other answer, "not found" and a stale value
// served with tier.ErrStale included, leaves the status unset.
func (t *Tracer) StartGet(ctx context.Context, namespace string, keys int) (context.Context, func(tier.Answer, error)) {
	ctx, span := t.start(ctx, SpanGet, namespace, keys)
	return ctx, func(a tier.Answer, err error) {
		span.SetAttributes(KeyAnswer.String(a.String()))
		if a == tier.AnswerError && err != nil {
			span.SetAttributes(KeyErrorType.String(errorClass(err)))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// StartFetch begins the span of a call of the source for keys keys; the
// context it returns, the one the source gets, carries it, so that the
// source's own spans are its children.
func (t *Tracer) StartFetch(ctx context.Context, namespace string, keys int) (context.Context, tier.FetchSpan) {
	ctx, span := t.start(ctx, SpanFetch, namespace, keys)
	return ctx, fetchSpan{span}
}

// fetchSpan is the span of one call of the source.
type fetchSpan struct{ span trace.Span }

// Waiter links the span to the span in ctx: a caller that waited for this
// fetch's result. A ctx without a valid span is not linked.
func (s fetchSpan) Waiter(ctx context.Context) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		s.span.AddLink(trace.Link{SpanContext: sc})
	}
}

// End sets tiercache.fetch.outcome and ends the span. An error, a panic or
// a timeout also records the error, sets error.type to the outcome
// ("load_error", "panic", "timeout") and the status to Error; "not found"
// and a fetch cancelled because every caller gave up do not.
func (s fetchSpan) End(o tier.FetchOutcome, err error) {
	s.span.SetAttributes(KeyFetchOutcome.String(o.String()))
	switch o {
	case tier.FetchSuccess, tier.FetchNotFound, tier.FetchCanceled:
	default:
		s.span.SetAttributes(KeyErrorType.String(o.String()))
		if err != nil {
			s.span.RecordError(err)
			s.span.SetStatus(codes.Error, err.Error())
		} else {
			s.span.SetStatus(codes.Error, o.String())
		}
	}
	s.span.End()
}

// errorClass names the class of a Get's error, for error.type.
func errorClass(err error) string {
	switch {
	case errors.Is(err, tier.ErrFetchPanic):
		return "fetch_panic"
	case errors.Is(err, tier.ErrPanic):
		return "panic"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, tier.ErrClosed):
		return "closed"
	case errors.Is(err, tier.ErrEmptyKey), errors.Is(err, tier.ErrKeyTooLarge):
		return "invalid_key"
	}
	return "_OTHER"
}

var _ tier.Tracer = (*Tracer)(nil)
