package tierotel_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// benchRecorder is a Recorder over an SDK MeterProvider with a
// ManualReader: the aggregation an exporter would read, never collected.
func benchRecorder(b *testing.B) (*tierotel.Recorder, *sdkmetric.MeterProvider) {
	b.Helper()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	rec, err := tierotel.NewRecorder(tierotel.WithMeterProvider(mp))
	if err != nil {
		b.Fatal(err)
	}
	return rec, mp
}

// Recorder.Get, the event of every Get (an L1 hit included), beside the
// no-op recorder and beside the SDK's own cost: a raw Histogram.Record
// with an attribute set built beforehand.
func BenchmarkRecorderGet(b *testing.B) {
	const d = 300 * time.Nanosecond
	b.Run("nop", func(b *testing.B) {
		var rec tier.Recorder = tier.NopRecorder{}
		b.ReportAllocs()
		for b.Loop() {
			rec.Get(ns, tier.AnswerL1, d)
		}
	})
	b.Run("raw-histogram", func(b *testing.B) {
		_, mp := benchRecorder(b)
		h, err := mp.Meter("bench").Float64Histogram("raw", metric.WithUnit("s"))
		if err != nil {
			b.Fatal(err)
		}
		opts := []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(
			tierotel.KeyNamespace.String(ns), tierotel.KeyAnswer.String("l1")))}
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			h.Record(ctx, d.Seconds(), opts...)
		}
	})
	b.Run("tierotel", func(b *testing.B) {
		rec, _ := benchRecorder(b)
		var r tier.Recorder = rec
		b.ReportAllocs()
		for b.Loop() {
			r.Get(ns, tier.AnswerL1, d)
		}
	})
	b.Run("tierotel-parallel", func(b *testing.B) {
		rec, _ := benchRecorder(b)
		var r tier.Recorder = rec
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r.Get(ns, tier.AnswerL1, d)
			}
		})
	})
}

// An L1 hit through a real node: without a Recorder (the core reads no
// clock), with the no-op one, and with this package's.
func BenchmarkL1Hit(b *testing.B) {
	srv := redistest.Start(b)
	for _, bc := range []struct {
		name string
		rec  func(b *testing.B) tier.Recorder
	}{
		{"none", func(*testing.B) tier.Recorder { return nil }},
		{"tierotel", func(b *testing.B) tier.Recorder { r, _ := benchRecorder(b); return r }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			n, err := tier.NewNode(context.Background(), srv.Client(b), tier.NodeConfig{L1MaxBytes: 1 << 20, Recorder: bc.rec(b)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = n.Close() })
			c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: newSource("k", "v").Fetch})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			// Wait until L1 answers, by its own report: the Gets before
			// are not measured.
			deadline := time.Now().Add(guard)
			for {
				var ri tier.ReadInfo
				if _, err := c.Get(ctx, "k", tier.Info(&ri)); err != nil {
					b.Fatal(err)
				}
				if ri.Source == tier.SourceL1 {
					break
				}
				if time.Now().After(deadline) {
					b.Fatal("L1 never answered")
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Get(ctx, "k"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
