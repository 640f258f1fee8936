package l1_test

import (
	"testing"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/tiercache/tiercache/l1"
)

// BenchmarkEvictAbsent measures the eviction of a hash the cache does not
// hold (what most invalidations a node hears from the bus are), against
// ristretto's own Del of an absent key in the same run: Evict bumps the
// hash's epoch and deletes only what ristretto holds.
func BenchmarkEvictAbsent(b *testing.B) {
	b.Run("l1-Evict", func(b *testing.B) {
		c, err := l1.New(l1.Config{MaxBytes: 64 << 20})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ReportAllocs()
		for i := uint64(0); b.Loop(); i++ {
			c.Evict(i)
		}
	})
	b.Run("ristretto-raw-Del", func(b *testing.B) {
		rc, err := ristretto.NewCache(&ristretto.Config[uint64, any]{
			NumCounters: 1 << 20,
			MaxCost:     64 << 20,
			BufferItems: 64,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer rc.Close()
		b.ReportAllocs()
		for i := uint64(0); b.Loop(); i++ {
			rc.Del(i)
		}
	})
}
