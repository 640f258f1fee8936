package sqlsource_test

import (
	"fmt"
	"testing"

	"github.com/tiercache/tiercache/sqlsource"
)

// BenchmarkFetch100 reads 100 rows by key: with one FetchMany, and, as the
// baseline in the same run, with 100 Fetches, one statement each. One op
// is all 100 rows.
func BenchmarkFetch100(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			db := be.open(b)
			rows := make([]user, 1000)
			for i := range rows {
				rows[i] = user{int64(i + 1), fmt.Sprint("user ", i+1)}
			}
			tbl, _, _ := be.users(b, db, sqlsource.Config[int64, user]{}, rows...)
			keys := make([]int64, 100)
			for i := range keys {
				keys[i] = int64(10*i + 1)
			}
			ctx := b.Context()
			b.Run("FetchMany", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					got, err := tbl.FetchMany(ctx, keys)
					if err != nil || len(got) != len(keys) {
						b.Fatalf("FetchMany = %d values, %v", len(got), err)
					}
				}
			})
			b.Run("Fetch×100", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					for _, k := range keys {
						if _, err := tbl.Fetch(ctx, k); err != nil {
							b.Fatalf("Fetch(%d): %v", k, err)
						}
					}
				}
			})
		})
	}
}
