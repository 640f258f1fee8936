package tierotel_test

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// A node with metrics and traces: the Recorder and the Tracer take the
// SDK's providers (or, without WithMeterProvider and WithTracerProvider,
// the global ones), and Observe adds the node's state at each collection.
// Here a ManualReader stands for an exporter.
func Example() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(ctx)

	rec, err := tierotel.NewRecorder(tierotel.WithMeterProvider(mp))
	if err != nil {
		fmt.Println(err)
		return
	}
	tr, err := tierotel.NewTracer(tierotel.WithTracerProvider(tp))
	if err != nil {
		fmt.Println(err)
		return
	}
	rdb := redis.NewClient(&redis.Options{Addr: exampleRedis, ContextTimeoutEnabled: true})
	defer rdb.Close()
	node, err := tier.NewNode(ctx, rdb, tier.NodeConfig{Recorder: rec, Tracer: tr})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	observed, err := rec.Observe(node)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer observed.Unregister() // before node.Close: defers run last in, first out

	greetings, _ := tier.New(node, tier.Config[string, string]{
		Namespace: "example-greetings",
		Fetch: func(ctx context.Context, lang string) (string, error) {
			return map[string]string{"en": "hello", "fr": "bonjour"}[lang], nil
		},
	})
	v, _ := greetings.Get(ctx, "fr")
	fmt.Println(v)

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == tierotel.MetricGetDuration {
			var answers uint64 // by tier: fetch the first time, l2 if Redis has it
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				answers += dp.Count
			}
			fmt.Println(m.Name, "count:", answers)
		}
	}
	// Output:
	// bonjour
	// tiercache.get.duration count: 1
}
