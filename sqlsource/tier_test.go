package sqlsource_test

import (
	"errors"
	"maps"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

// A tier.Cache whose Fetch and FetchMany are a Table's: a Get reads the
// database once and then hits, a GetMany reads what the cache lacks in one
// statement, "not found" comes from the database, and after a write and
// Invalidate the next Get reads the new row.
func TestTierCache(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		users, queries, name := b.users(t, db, sqlsource.Config[int64, user]{}, ada, grace, alan)

		srv := redistest.Start(t)
		node, err := tier.NewNode(t.Context(), srv.Client(t), tier.NodeConfig{})
		if err != nil {
			t.Fatalf("NewNode: %v", err)
		}
		t.Cleanup(func() { _ = node.Close() })
		cache, err := tier.New(node, tier.Config[int64, user]{
			Namespace: "users",
			Fetch:     users.Fetch,
			FetchMany: users.FetchMany,
		})
		if err != nil {
			t.Fatalf("tier.New: %v", err)
		}
		ctx := t.Context()

		// Get: the database once, then the cache.
		for i := range 3 {
			var ri tier.ReadInfo
			u, err := cache.Get(ctx, 1, tier.Info(&ri))
			if err != nil || u != ada {
				t.Fatalf("Get(1) #%d = %v, %v", i+1, u, err)
			}
			if wantFetch := i == 0; (ri.Source == tier.SourceFetch) != wantFetch {
				t.Fatalf("Get(1) #%d came from %v", i+1, ri.Source)
			}
		}
		if n := queries.queries(); n != 1 {
			t.Fatalf("3 Gets of one key ran %d queries; want 1", n)
		}

		// "Not found" is the database's, and an error wrapping ErrNotFound.
		if _, err := cache.Get(ctx, 99); !errors.Is(err, tier.ErrNotFound) {
			t.Fatalf("Get(99) = %v; want not found", err)
		}
		queries.queries()

		// GetMany: what the cache lacks, in one statement.
		got, err := cache.GetMany(ctx, []int64{1, 2, 3, 98})
		want := map[int64]user{1: ada, 2: grace, 3: alan}
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("GetMany = %v, %v; want %v", got, err, want)
		}
		if n := queries.queries(); n != 1 {
			t.Fatalf("GetMany of 3 keys the cache lacked ran %d queries; want 1", n)
		}
		got, err = cache.GetMany(ctx, []int64{1, 2, 3})
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("GetMany again = %v, %v; want %v", got, err, want)
		}
		if n := queries.queries(); n != 0 {
			t.Fatalf("GetMany of cached keys ran %d queries", n)
		}

		// Write the source of truth, then invalidate.
		b.exec(t, db, "UPDATE "+name+" SET name = 'Grace Hopper' WHERE id = 2")
		if err := cache.Invalidate(ctx, 2); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		if u, err := cache.Get(ctx, 2); err != nil || u.Name != "Grace Hopper" {
			t.Fatalf("Get(2) after the write = %v, %v", u, err)
		}
		if n := queries.queries(); n != 1 {
			t.Fatalf("Get after Invalidate ran %d queries; want 1", n)
		}
	})
}
