package tier_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkL1Memory measures the heap that 100,000 entries of 200-byte
// values take in a node's L1, beside the same keys and values in a raw
// ristretto cache of the same sketch size: each is measured from the empty
// cache to the full one, after a GC, so that fixed costs (the sketch, the
// node's client and goroutines) cancel. It reports both in MiB and their
// ratio.
func BenchmarkL1Memory(b *testing.B) {
	const entries = 100_000
	const maxBytes = 100 << 20 // a sketch of about a million counters for both
	keys := benchKeys("mem", entries)
	value := strings.Repeat("x", 200)
	srv := redistest.Start(b)
	var raw, tc float64
	for b.Loop() {
		rc, err := ristretto.NewCache(&ristretto.Config[string, string]{NumCounters: maxBytes / 1024 * 10, MaxCost: maxBytes, BufferItems: 64})
		if err != nil {
			b.Fatal(err)
		}
		raw = heapGrowth(func() {
			for _, k := range keys {
				for !rc.Set(k, strings.Clone(value), int64(len(k)+len(value))) {
					rc.Wait()
				}
			}
			rc.Wait()
		})
		runtime.KeepAlive(rc)
		rc.Close()

		n, err := tier.NewNode(context.Background(), srv.Client(b), tier.NodeConfig{L1MaxBytes: maxBytes, LeaseTTL: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		c, err := tier.New(n, tier.Config[string, string]{
			Namespace: "mem",
			Fetch:     func(context.Context, string) (string, error) { return value, nil },
		})
		if err != nil {
			b.Fatal(err)
		}
		tc = heapGrowth(func() {
			for start := 0; start < entries; start += 1000 {
				if _, err := c.GetMany(context.Background(), keys[start:start+1000]); err != nil {
					b.Fatal(err)
				}
			}
			tier.WaitL1(n)
		})
		if st := c.Stats(); st.FillsLanded != entries {
			b.Fatalf("%d fills landed, want %d", st.FillsLanded, entries)
		}
		runtime.KeepAlive(c)
		_ = n.Close()
		srv.Flush()
	}
	b.ReportMetric(raw/(1<<20), "ristretto-MiB")
	b.ReportMetric(tc/(1<<20), "tiercache-MiB")
	b.ReportMetric(tc/raw, "ratio")
}

// heapGrowth returns how much the live heap grew across fill, after a GC
// on either side.
func heapGrowth(fill func()) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fill()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return float64(after.HeapAlloc) - float64(before.HeapAlloc)
}
