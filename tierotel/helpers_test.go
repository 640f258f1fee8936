package tierotel_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

// guard bounds every wait of a test on an event, so that a broken node
// fails the test instead of hanging it. No test sleeps to let things settle.
const guard = 20 * time.Second

// meters is one node's metrics pipeline: a Recorder over an SDK
// MeterProvider read by a ManualReader.
type meters struct {
	t      *testing.T
	reader *sdkmetric.ManualReader
	rec    *tierotel.Recorder
}

func newMeters(t *testing.T, opts ...tierotel.Option) *meters {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	rec, err := tierotel.NewRecorder(append([]tierotel.Option{tierotel.WithMeterProvider(mp)}, opts...)...)
	if err != nil {
		t.Fatalf("NewRecorder: %v", err)
	}
	return &meters{t: t, reader: reader, rec: rec}
}

// collect reads every instrument.
func (m *meters) collect() metricdata.ResourceMetrics {
	m.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.reader.Collect(context.Background(), &rm); err != nil {
		m.t.Fatalf("Collect: %v", err)
	}
	return rm
}

// points returns the data points of instrument name whose attributes
// include every one of match, keyed by their other attributes
// ("k=v,k=v", sorted; "" for none): a histogram's by its count, a sum's
// and a gauge's by its value.
func points(rm metricdata.ResourceMetrics, name string, match ...attribute.KeyValue) map[string]int64 {
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					if k, ok := rest(dp.Attributes, match); ok {
						out[k] += int64(dp.Count)
					}
				}
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					if k, ok := rest(dp.Attributes, match); ok {
						out[k] += dp.Value
					}
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					if k, ok := rest(dp.Attributes, match); ok {
						out[k] += dp.Value
					}
				}
			default:
				panic(fmt.Sprintf("%s: unexpected aggregation %T", name, m.Data))
			}
		}
	}
	return out
}

// rest reports whether set holds every attribute of match, and encodes
// the others.
func rest(set attribute.Set, match []attribute.KeyValue) (string, bool) {
	for _, kv := range match {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return "", false
		}
	}
	var parts []string
outer:
	for _, kv := range set.ToSlice() {
		for _, m := range match {
			if m.Key == kv.Key {
				continue outer
			}
		}
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	sort.Strings(parts)
	return strings.Join(parts, ","), true
}

// equal fails the test unless got and want hold the same points.
func equal(t *testing.T, what string, got, want map[string]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Fatalf("%s = %v, want %v", what, got, want)
		}
	}
}

// eventually polls cond until it holds, failing the test after guard.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling a condition, bounded by the guard
	}
}

// newNode starts a Node on srv with cfg, closed at cleanup.
func newNode(t *testing.T, srv *redistest.Server, cfg tier.NodeConfig) *tier.Node {
	t.Helper()
	if cfg.L1MaxBytes == 0 {
		cfg.L1MaxBytes = 1 << 20 // a small L1 keeps ristretto's Close cheap under the race detector
	}
	n, err := tier.NewNode(context.Background(), srv.Client(t), cfg)
	if err != nil {
		t.Fatalf("NewNode: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

const ns = "obj"

// source is a source of truth: a map of values, and optionally a Fetch
// that the test replaces.
type source struct {
	mu    sync.Mutex
	data  map[string]string
	fetch func(ctx context.Context, key string) (string, error)
}

func newSource(kv ...string) *source {
	s := &source{data: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.data[kv[i]] = kv[i+1]
	}
	return s
}

func (s *source) Fetch(ctx context.Context, key string) (string, error) {
	if s.fetch != nil {
		return s.fetch(ctx, key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	if !ok {
		return "", fmt.Errorf("key %q: %w", key, tier.ErrNotFound)
	}
	return v, nil
}

// newCache returns a string cache of namespace over src on n.
func newCache(t *testing.T, n *tier.Node, namespace string, src *source) *tier.Cache[string, string] {
	t.Helper()
	c, err := tier.New(n, tier.Config[string, string]{Namespace: namespace, Fetch: src.Fetch})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func mustGet(t *testing.T, c *tier.Cache[string, string], key string) string {
	t.Helper()
	v, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return v
}

// settleL1 waits until n's L1 serves what the node filled so far. L1 (a
// ristretto cache) applies fills from a buffer, on one goroutine, in
// order, and counts an entry's cost a moment before it makes the entry
// visible; the core's WaitL1 is for its own tests only. So: wait for the
// cost of the fills so far, then fill one more entry, in a namespace of
// its own (sync), and wait for its cost too: when that has been counted,
// every earlier fill is visible. Deterministic, through the public API,
// and its Gets are apart from the test's namespace.
func settleL1(t *testing.T, n *tier.Node, sync *tier.Cache[string, string]) {
	t.Helper()
	key := fmt.Sprint("s", syncKeys.Add(1)) // a key L1 does not hold
	var before uint64
	eventually(t, "L1 to count the fills", func() bool {
		before = n.Stats().L1Bytes
		return before > 0
	})
	mustGet(t, sync, key)
	eventually(t, "L1 to count the sync fill", func() bool { return n.Stats().L1Bytes > before })
}

var syncKeys atomic.Int64

// syncCache is the cache settleL1 fills: one per node, in namespace
// "sync", over a source that answers any key.
func syncCache(t *testing.T, n *tier.Node) *tier.Cache[string, string] {
	t.Helper()
	src := &source{fetch: func(_ context.Context, key string) (string, error) { return "sync:" + key, nil }}
	return newCache(t, n, "sync", src)
}

func nsKV(namespace string) attribute.KeyValue { return tierotel.KeyNamespace.String(namespace) }
