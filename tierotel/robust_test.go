package tierotel_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// panicMeters is a MeterProvider whose histograms panic when they record:
// an exporter with a bug.
type panicMeters struct{ metricnoop.MeterProvider }

func (panicMeters) Meter(string, ...metric.MeterOption) metric.Meter { return panicMeter{} }

type panicMeter struct{ metricnoop.Meter }

func (panicMeter) Float64Histogram(string, ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	return panicHistogram{}, nil
}

type panicHistogram struct{ metricnoop.Float64Histogram }

func (panicHistogram) Record(context.Context, float64, ...metric.RecordOption) {
	panic("tierotel test: a histogram that panics")
}

// panicTracers is a TracerProvider whose spans panic when they start.
type panicTracers struct{ tracenoop.TracerProvider }

func (panicTracers) Tracer(string, ...trace.TracerOption) trace.Tracer { return panicTracer{} }

type panicTracer struct{ tracenoop.Tracer }

func (panicTracer) Start(context.Context, string, ...trace.SpanStartOption) (context.Context, trace.Span) {
	panic("tierotel test: a tracer that panics")
}

// An exporter that panics does not crash a Get: the core recovers, and
// counts each panic in Stats.RecorderPanics.
func TestExporterPanics(t *testing.T) {
	srv := redistest.Start(t)
	rec, err := tierotel.NewRecorder(tierotel.WithMeterProvider(panicMeters{}))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := tierotel.NewTracer(tierotel.WithTracerProvider(panicTracers{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  tier.NodeConfig
		// panics after a cold Get: a histogram records the Fetch and the
		// Get (fills are counters, which do not panic); a tracer starts
		// the Get's span and the Fetch's.
		want uint64
	}{
		{"recorder", tier.NodeConfig{Recorder: rec}, 2},
		{"tracer", tier.NodeConfig{Tracer: tr}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, srv, tc.cfg)
			c := newCache(t, n, tc.name, newSource("k", "v"))
			if v := mustGet(t, c, "k"); v != "v" {
				t.Fatalf("Get = %q, want v", v)
			}
			if got := n.Stats().RecorderPanics; got != tc.want {
				t.Fatalf("RecorderPanics = %d, want %d", got, tc.want)
			}
		})
	}
}
