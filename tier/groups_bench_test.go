package tier_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// BenchmarkInvalidateGroup compares, in one run, invalidating a group of one
// member with invalidating a group of 100,000: a group invalidation writes
// one stamp whatever the group's size, so the two should cost the same (the
// ratio of their ns/op is the figure; target under 2x).
func BenchmarkInvalidateGroup(b *testing.B) {
	const members = 100_000
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	c, err := tier.New(n, tier.Config[string, string]{
		Namespace: "bench-groups",
		Fetch:     func(context.Context, string) (string, error) { return benchValue, nil },
		TTL:       benchTTL,
		Groups: func(key, _ string) []string {
			if key == "one" {
				return []string{"group-of-1"}
			}
			return []string{"group-of-100k"}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Set(ctx, "one", benchValue); err != nil {
		b.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(64)
	for i := range members {
		g.Go(func() error { return c.Set(ctx, fmt.Sprint("member:", i), benchValue) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	for _, group := range []string{"group-of-1", "group-of-100k"} {
		b.Run(group, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := n.InvalidateGroup(ctx, group); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetL1HitGroups compares an L1 hit on an entry in three groups
// with one in none (every entry is in its namespace's group), in one run.
func BenchmarkGetL1HitGroups(b *testing.B) {
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	keys := benchKeys("user:", 1024)
	for _, tc := range []struct {
		name   string
		groups func(key, value string) []string
	}{
		{"groups-0", nil},
		{"groups-3", func(key, _ string) []string { return []string{"users", "tenant:1", "shard:" + key[len(key)-1:]} }},
	} {
		c, err := tier.New(n, tier.Config[string, string]{
			Namespace: "bench-" + tc.name,
			Fetch:     func(context.Context, string) (string, error) { return benchValue, nil },
			TTL:       benchTTL,
			L1TTL:     benchTTL,
			Groups:    tc.groups,
		})
		if err != nil {
			b.Fatal(err)
		}
		warmL1(b, n, c, keys)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			before := n.Stats()
			i := 0
			for b.Loop() {
				if _, err := c.Get(ctx, keys[i&1023]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			checkHits(b, before, n.Stats(), uint64(i), 0)
		})
	}
}

// BenchmarkGroupsPerEntry compares reading an entry in 256 groups (a list
// page whose every item is a group) with one in 1 group, in one run: from
// Redis (L1 off: the read script checks every stamp) and from L1 (one
// atomic load per group).
func BenchmarkGroupsPerEntry(b *testing.B) {
	srv := redistest.Start(b)
	n := benchNode(b, srv)
	keys := benchKeys("page:", 64)
	for _, tier1 := range []struct {
		name  string
		l1TTL time.Duration
	}{{"L2", -1}, {"L1", benchTTL}} {
		for _, count := range []int{1, 256} {
			names := make([]string, count)
			for i := range names {
				names[i] = fmt.Sprint("product:", i)
			}
			c, err := tier.New(n, tier.Config[string, string]{
				Namespace: fmt.Sprintf("bench-groups-%s-%d", tier1.name, count),
				Fetch:     func(context.Context, string) (string, error) { return benchValue, nil },
				TTL:       benchTTL,
				L1TTL:     tier1.l1TTL,
				Groups:    func(string, string) []string { return names },
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			for _, k := range keys {
				if _, err := c.Get(ctx, k); err != nil {
					b.Fatal(err)
				}
			}
			tier.WaitL1(n)
			b.Run(fmt.Sprintf("%s/groups-%d", tier1.name, count), func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := c.Get(ctx, keys[i&63]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}
