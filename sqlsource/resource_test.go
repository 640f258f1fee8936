package sqlsource_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

// nodes returns n tier.Nodes sharing one private redis-server.
func nodes(t testing.TB, n int) []*tier.Node {
	t.Helper()
	srv := redistest.Start(t)
	out := make([]*tier.Node, n)
	for i := range out {
		node, err := tier.NewNode(context.Background(), srv.Client(t), tier.NodeConfig{})
		if err != nil {
			t.Fatalf("NewNode: %v", err)
		}
		t.Cleanup(func() { _ = node.Close() })
		out[i] = node
	}
	return out
}

// A whole table as a Resource on two nodes: read once for the fleet, and
// after an UPDATE and a Refill on one node, the other serves the new rows.
func TestTableResource(t *testing.T) {
	each(t, func(t *testing.T, b backend) {
		db := b.open(t)
		users, queries, name := b.users(t, db, sqlsource.Config[int64, user]{}, ada, grace, alan)
		fleet := nodes(t, 2)
		var rs []*tier.Resource[int64, user]
		for _, n := range fleet {
			r, err := sqlsource.NewResource(n, users, tier.ResourceConfig[int64, user]{Name: "users", ReloadEvery: time.Hour})
			if err != nil {
				t.Fatalf("NewResource: %v", err)
			}
			rs = append(rs, r)
		}
		ctx, cancel := context.WithTimeout(t.Context(), guard)
		defer cancel()
		for _, r := range rs {
			if err := r.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if u, ok := r.Get(2); !ok || u != grace || r.Len() != 3 {
				t.Fatalf("Get(2) = %v, %v; %d rows", u, ok, r.Len())
			}
		}
		if n := queries.queries(); n != 1 {
			t.Fatalf("two nodes read the table %d times; want once", n)
		}
		b.exec(t, db, "UPDATE "+name+" SET name = "+b.p(1)+" WHERE id = 2", "Grace Hopper")
		if err := rs[0].Refill(ctx); err != nil {
			t.Fatalf("Refill: %v", err)
		}
		for {
			if u, _ := rs[1].Get(2); u.Name == "Grace Hopper" {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("the other node still serves %v", rs[1].Stats())
			}
			time.Sleep(time.Millisecond) // polling a condition, bounded by ctx
		}
	})
}

// BenchmarkResourceReload100k reloads a table of 100,000 rows of 200 bytes
// from PostgreSQL on a fleet of 3 nodes, through a Resource (the source is
// read once, the others take it from Redis), beside each node reading the
// table itself (3 reads). It reports the table reads per reload.
func BenchmarkResourceReload100k(b *testing.B) {
	pg := backends[0]
	db := pg.open(b)
	name := pg.table(b, db, "id BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL")
	pg.exec(b, db, "INSERT INTO "+name+" SELECT i, repeat(chr(97 + i % 26), 200) FROM generate_series(1, 100000) AS i")
	c := &counter{q: db}
	tbl, err := sqlsource.New(sqlsource.Config[int64, user]{DB: c, Dialect: sqlsource.Postgres, Table: name, Key: "id", Columns: []string{"id", "name"}, Scan: scanUser, MaxRows: 100_000})
	if err != nil {
		b.Fatal(err)
	}
	fleet := nodes(b, 3)
	var rs []*tier.Resource[int64, user]
	for _, n := range fleet {
		r, err := sqlsource.NewResource(n, tbl, tier.ResourceConfig[int64, user]{Name: fmt.Sprint("big-", name), ReloadEvery: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Wait(b.Context()); err != nil {
			b.Fatal(err)
		}
		rs = append(rs, r)
	}
	b.Run("resource-3-nodes", func(b *testing.B) {
		c.queries()
		for b.Loop() {
			if err := rs[0].Refill(b.Context()); err != nil {
				b.Fatal(err)
			}
			want := rs[0].Stats().Version
			for _, r := range rs[1:] {
				for r.Stats().Version != want {
					if b.Context().Err() != nil {
						b.Fatal(b.Context().Err())
					}
					time.Sleep(100 * time.Microsecond) // polling the other nodes' swap
				}
			}
		}
		b.ReportMetric(float64(c.queries())/float64(b.N), "table-reads/reload")
	})
	b.Run("each-node-reads", func(b *testing.B) {
		c.queries()
		for b.Loop() {
			for range fleet {
				m, err := tbl.LoadAll(b.Context())
				if err != nil || len(m) != 100_000 {
					b.Fatalf("LoadAll: %d rows, %v", len(m), err)
				}
			}
		}
		b.ReportMetric(float64(c.queries())/float64(b.N), "table-reads/reload")
	})
}
