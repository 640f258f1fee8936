package tierotel

import (
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of every meter and tracer this
// package makes: the module's path, as OpenTelemetry's conventions ask.
const ScopeName = "github.com/tiercache/tiercache/tierotel"

// Option configures NewRecorder and NewTracer. Both take every Option and
// ignore those that are not theirs: WithMeterProvider is the Recorder's,
// WithTracerProvider the Tracer's, WithAttributes both's. So one list of
// options can serve both.
type Option interface {
	apply(*config)
}

type option func(*config)

func (o option) apply(c *config) { o(c) }

type config struct {
	mp    metric.MeterProvider
	tp    trace.TracerProvider
	attrs []attribute.KeyValue
	err   error
}

func newConfig(opts []Option) (config, error) {
	c := config{mp: otel.GetMeterProvider(), tp: otel.GetTracerProvider()}
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	return c, c.err
}

// WithMeterProvider makes the Recorder's instruments with mp's Meter named
// ScopeName. Default: otel.GetMeterProvider() at the time of NewRecorder
// (the global provider, which delegates to the SDK once one is set). A nil
// mp is an error.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return option(func(c *config) {
		if mp == nil {
			c.err = errors.Join(c.err, errors.New("tierotel: nil MeterProvider"))
			return
		}
		c.mp = mp
	})
}

// WithTracerProvider makes the Tracer's spans with tp's Tracer named
// ScopeName. Default: otel.GetTracerProvider() at the time of NewTracer. A
// nil tp is an error.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return option(func(c *config) {
		if tp == nil {
			c.err = errors.Join(c.err, errors.New("tierotel: nil TracerProvider"))
			return
		}
		c.tp = tp
	})
}

// WithAttributes adds attrs to every measurement of the Recorder and to
// every span of the Tracer: a node's identity, say, when one process runs
// several nodes, or one exporter serves several processes' metrics (the
// resource is the place for the service's own name). Keep them few and of
// low cardinality: they are part of every time series. Several calls add
// up; a key given twice keeps its last value.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return option(func(c *config) {
		c.attrs = append(c.attrs, attrs...)
	})
}
