package tier_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// grouped returns a string cache over src whose entries belong to the
// groups that groupsOf names.
func grouped(t *testing.T, n *tier.Node, src *source, groupsOf func(key, value string) []string) *tier.Cache[string, string] {
	t.Helper()
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, Groups: groupsOf})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// byKey puts "book:N" in group "books" and in "author:<first char of N>".
func byKey(key, _ string) []string {
	return []string{"books", "author:" + key[len("book:"):len("book:")+1]}
}

// byValue puts an entry in the group its value names before a '|'.
func byValue(_, value string) []string {
	g, _, _ := strings.Cut(value, "|")
	return []string{g}
}

// R31: a fill that began before its group was invalidated is refused by
// Redis, whether its groups come from the key or from the value, and the
// next read gets the new state.
func TestRace_R31_GroupInvalidatedDuringFill(t *testing.T) {
	raceGroupInvalidatedDuringFill(t, func(t *testing.T) func(tier.NodeConfig) *tier.Node {
		f := newFleet(t)
		return func(cfg tier.NodeConfig) *tier.Node { return f.node(cfg, nil) }
	})
}

// raceGroupInvalidatedDuringFill is R31's test on the deployment that
// deploy starts for each case, returning how to start a node on it.
func raceGroupInvalidatedDuringFill(t *testing.T, deploy func(t *testing.T) func(tier.NodeConfig) *tier.Node) {
	for name, tc := range map[string]struct {
		groupsOf func(key, value string) []string
		v1, v2   string
		group    string
	}{
		"key-derived":   {byKey, "v1", "v2", "author:7"},
		"value-derived": {byValue, "shelf|v1", "shelf|v2", "shelf"},
	} {
		t.Run(name, func(t *testing.T) {
			node := deploy(t)
			src := newSource()
			src.set("book:7", tc.v1)
			src.gated.Store(true)
			na, nw := node(tier.NodeConfig{}), node(tier.NodeConfig{})
			a := grouped(t, na, src, tc.groupsOf)
			got := goGet(context.Background(), a, "book:7")
			held := src.next(t)
			src.set("book:7", tc.v2)
			if err := nw.InvalidateGroup(context.Background(), tc.group); err != nil {
				t.Fatal(err)
			}
			close(held.release)
			if r := await(t, got); r.v != tc.v1 {
				t.Fatalf("overlapping read = %q", r.v)
			}
			if st := na.Stats(); st.Caches.FillsRefused != 1 || st.Caches.FillsLanded != 0 {
				t.Fatalf("the fill across the group invalidation was not refused: %+v", st)
			}
			src.gated.Store(false)
			if v := mustGet(t, a, "book:7"); v != tc.v2 {
				t.Fatalf("read after the group invalidation = %q, want %q", v, tc.v2)
			}
		})
	}
}

// R31 on the node: a value read from Redis before its group was
// invalidated, whose message arrives before the L1 store, never serves
// from L1.
func TestRace_R31_GroupMessageBeforeL1Fill(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("book:7", "v1")
	eb, hb := newBusEvents()
	read, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	nb := f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb, AfterRead: func(string) {
		once.Do(func() { close(read); <-release })
	}})
	nw := f.node(tier.NodeConfig{}, nil)
	w, b := grouped(t, nw, src, byKey), grouped(t, nb, src, byKey)
	mustGet(t, w, "book:7") // v1 in Redis

	got := goGet(context.Background(), b, "book:7")
	wait(t, read, "B to read v1 from Redis")
	src.set("book:7", "v2")
	if err := nw.InvalidateGroup(context.Background(), "books"); err != nil {
		t.Fatal(err)
	}
	waitGroupApplied(t, eb, "books")
	close(release)
	await(t, got)
	if v := mustGet(t, b, "book:7"); v != "v2" {
		t.Fatalf("B after the group message = %q, want v2", v)
	}
}

// waitGroupApplied waits until a node applied a message invalidating group.
func waitGroupApplied(t *testing.T, e *busEvents, group string) {
	t.Helper()
	for {
		m := wait(t, e.applied, "a message invalidating "+group)
		for _, g := range m.InvalidGroups {
			if g == group {
				return
			}
		}
	}
}

// R32: one key in many groups; invalidating any one of them makes it stale
// in both tiers on both nodes.
func TestRace_R32_OneKeyManyGroups(t *testing.T) {
	for _, group := range []string{"books", "author:7"} {
		t.Run(group, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("book:7", "v1")
			src.set("book:8", "v1")
			eb, hb := newBusEvents()
			na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
			a, b := grouped(t, na, src, byKey), grouped(t, nb, src, byKey)
			for _, k := range []string{"book:7", "book:8"} {
				warm(t, na, a, k)
				warm(t, nb, b, k)
			}
			src.set("book:7", "v2")
			src.set("book:8", "v2")
			if err := na.InvalidateGroup(context.Background(), group); err != nil {
				t.Fatal(err)
			}
			waitGroupApplied(t, eb, group)
			want := map[string]string{"book:7": "v2", "book:8": "v1"} // book:8 is in author:8
			if group == "books" {
				want["book:8"] = "v2"
			}
			for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
				for k, v := range want {
					if got := mustGet(t, c, k); got != v {
						t.Fatalf("node %s: %s = %q after invalidating %s, want %q", name, k, got, group, v)
					}
				}
			}
		})
	}
}

// R33: a group invalidation costs one round trip, whatever the group's
// size; a group of 100,000 members invalidated on one node is stale, every
// member, on another.
func TestRace_R33_GroupInvalidationCost(t *testing.T) {
	const members = 100_000
	f := newFleet(t)
	var version atomic.Int64
	fetch := func(_ context.Context, key string) (string, error) {
		return fmt.Sprintf("%s@%d", key, version.Load()), nil
	}
	rdb := f.srv.Client(t)
	ctx := context.Background()
	warmPools(t, rdb)
	rt := &rtCounter{}
	rdb.AddHook(rt)
	na, err := tier.NewNode(ctx, rdb, tier.NodeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = na.Close() })
	eb, hb := newBusEvents()
	nb := f.node(tier.NodeConfig{L1MaxBytes: 64 << 20}, &hooks.Points{Bus: hb})
	inGroup := func(key, _ string) []string {
		if strings.HasPrefix(key, "big:") {
			return []string{"big"}
		}
		return []string{"small"}
	}
	mk := func(n *tier.Node) *tier.Cache[string, string] {
		c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: fetch, Groups: inGroup})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := mk(na), mk(nb)

	// Fill: one member in "small", 100,000 in "big", through Set on A.
	var g errgroup.Group
	g.SetLimit(64)
	for i := range members {
		g.Go(func() error { return a.Set(ctx, fmt.Sprintf("big:%d", i), fmt.Sprintf("big:%d@0", i)) })
	}
	if err := a.Set(ctx, "small:0", "small:0@0"); err != nil {
		t.Fatal(err)
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < members; i += 1000 { // some members in B's L1 too
		mustGet(t, b, fmt.Sprintf("big:%d", i))
	}

	for _, group := range []string{"small", "big"} {
		before := rt.n.Load()
		if err := na.InvalidateGroup(ctx, group); err != nil {
			t.Fatal(err)
		}
		if got := rt.n.Load() - before; got != 1 {
			t.Fatalf("InvalidateGroup(%s) took %d round trips, want 1", group, got)
		}
	}
	version.Store(1)
	waitGroupApplied(t, eb, "big")

	var stale atomic.Int64
	g = errgroup.Group{}
	g.SetLimit(32)
	for i := range members {
		g.Go(func() error {
			k := fmt.Sprintf("big:%d", i)
			v, err := b.Get(ctx, k)
			if err != nil {
				return err
			}
			if v != k+"@1" {
				stale.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := stale.Load(); n != 0 {
		t.Fatalf("%d of %d members served stale on the other node", n, members)
	}
	if v := mustGet(t, b, "small:0"); v != "small:0@1" {
		t.Fatalf("small:0 = %q", v)
	}
}

// R26, R23: a group stamp that vanished (evicted, flushed) is unknown, which
// refuses the entries filled under it; FLUSHALL or a restart between fill
// and read never lets a member be served stale.
func TestRace_R26_StampLost(t *testing.T) {
	for _, fault := range []string{"stamp evicted", "flushall", "restart"} {
		t.Run(fault, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("book:7", "v1")
			eb, hb := newBusEvents()
			ea, ha := newBusEvents()
			na, nb := f.node(tier.NodeConfig{}, &hooks.Points{Bus: ha}), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
			a, b := grouped(t, na, src, byKey), grouped(t, nb, src, byKey)
			warm(t, nb, b, "book:7")
			switch fault {
			case "stamp evicted":
				if err := f.rdb.Del(context.Background(), l2.GroupKey(tier.DefaultPrefix, "author:7")).Err(); err != nil {
					t.Fatal(err)
				}
			case "flushall":
				f.srv.Flush()
			case "restart":
				f.srv.Restart()
				// Both nodes are subscribed again: A's reconnect also tells
				// its breaker, which the restart opened, that Redis is back.
				for _, e := range []*busEvents{ea, eb} {
					e.awaitDropped(t, bus.Disconnected)
					e.forgetRenewals()
					e.awaitRenewed(t)
				}
			}
			src.set("book:7", "v2")
			if err := na.InvalidateGroup(context.Background(), "author:7"); err != nil {
				t.Fatal(err)
			}
			waitGroupApplied(t, eb, "author:7")
			for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
				if v := mustGet(t, c, "book:7"); v != "v2" {
					t.Fatalf("node %s after %s = %q, want v2", name, fault, v)
				}
			}
		})
	}
}

// An entry whose stamp vanished is refused at read and refetched.
func TestRace_R26_MissingStampRefusesEntry(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("book:7", "v1")
	n := f.node(tier.NodeConfig{}, nil)
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, Groups: byKey, L1TTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	mustGet(t, c, "book:7")
	if err := f.rdb.Del(context.Background(), l2.GroupKey(tier.DefaultPrefix, "books")).Err(); err != nil {
		t.Fatal(err)
	}
	reads := src.reads.Load()
	mustGet(t, c, "book:7")
	if st := n.Stats(); st.Caches.GroupStale != 1 || src.reads.Load() != reads+1 {
		t.Fatalf("an entry with a missing stamp was served: %+v", st)
	}
}

// InvalidateAll makes every entry of one namespace stale on every node, in
// constant time, and leaves other namespaces alone.
func TestInvalidateAll(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for i := range 50 {
		src.set(fmt.Sprint("k", i), "v1")
	}
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	otherSrc := newSource()
	otherSrc.set("k0", "other")
	other, err := tier.New(nb, tier.Config[string, string]{Namespace: "other", Fetch: otherSrc.fetch})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		mustGet(t, a, fmt.Sprint("k", i))
		mustGet(t, b, fmt.Sprint("k", i))
	}
	warm(t, nb, other, "k0")
	for i := range 50 {
		src.set(fmt.Sprint("k", i), "v2")
	}
	if err := a.InvalidateAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitGroupApplied(t, eb, "\x00ns\x00"+ns)
	for i := range 50 {
		for name, c := range map[string]*tier.Cache[string, string]{"A": a, "B": b} {
			if v := mustGet(t, c, fmt.Sprint("k", i)); v != "v2" {
				t.Fatalf("node %s: k%d = %q after InvalidateAll", name, i, v)
			}
		}
	}
	if !inL1(t, nb, other, "k0") {
		t.Fatal("InvalidateAll of one namespace reached another")
	}
}

// Bad group input gets a clear error and caches nothing.
func TestBadGroups(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("many", "v")
	n := f.node(tier.NodeConfig{}, nil)
	c := grouped(t, n, src, func(key, _ string) []string {
		if key == "many" {
			gs := make([]string, tier.MaxGroupsPerEntry+1)
			for i := range gs {
				gs[i] = fmt.Sprint("g", i)
			}
			return gs
		}
		return []string{""}
	})
	ctx := context.Background()
	for name, g := range map[string]string{"empty": "", "oversized": strings.Repeat("g", 1025), "NUL first": "\x00g"} {
		if err := n.InvalidateGroup(ctx, "fine", g); !errors.Is(err, tier.ErrBadGroup) {
			t.Errorf("InvalidateGroup(%s) = %v, want ErrBadGroup", name, err)
		}
	}
	if v, err := c.Get(ctx, "many"); v != "v" || !errors.Is(err, tier.ErrBadGroup) {
		t.Fatalf("Get = %q, %v; want the value and ErrBadGroup (not cached)", v, err)
	}
	if st := n.Stats(); st.Caches.BadGroups != 1 || st.Caches.FillsLanded != 0 {
		t.Fatalf("an entry in too many groups was cached: %+v", st)
	}
	if f.flag("many") != "" || f.stored("many") != "" {
		t.Fatal("the refused entry left a flag or a value")
	}
	for _, k := range []string{"many", "empty-group"} {
		if err := c.Set(ctx, k, "w"); !errors.Is(err, tier.ErrBadGroup) {
			t.Errorf("Set(%s) = %v, want ErrBadGroup", k, err)
		}
	}
}

// A fill refused because its group changed gives up its claim: the next
// reader claims at once, without waiting for the flag to expire.
func TestRefusedGroupFillReleasesClaim(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("book:7", "v1")
	src.gated.Store(true)
	n := f.node(tier.NodeConfig{}, nil)
	c := grouped(t, n, src, byKey)
	got := goGet(context.Background(), c, "book:7")
	held := src.next(t)
	if err := n.InvalidateGroup(context.Background(), "books"); err != nil {
		t.Fatal(err)
	}
	close(held.release)
	await(t, got)
	if tok := f.flag("book:7"); tok != "" {
		t.Fatal("the refused fill kept its claim")
	}
	if st := n.Stats(); st.Caches.FillsRefused != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

// An L2 hit on an entry in groups costs one round trip, whether its groups
// come from the key or the value: Redis checks the stamps in the read script.
func TestGroupedL2HitIsOneRoundTrip(t *testing.T) {
	for name, groupsOf := range map[string]func(key, value string) []string{"key-derived": byKey, "value-derived": byValue} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t)
			src := newSource()
			src.set("book:7", "shelf|v1")
			mustGet(t, grouped(t, f.node(tier.NodeConfig{}, nil), src, groupsOf), "book:7")
			rdb := f.srv.Client(t)
			warmPools(t, rdb)
			rt := &rtCounter{}
			rdb.AddHook(rt)
			n, err := tier.NewNode(context.Background(), rdb, tier.NodeConfig{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Close() })
			c := grouped(t, n, src, groupsOf)
			before := rt.n.Load()
			mustGet(t, c, "book:7")
			if got := rt.n.Load() - before; got != 1 {
				t.Fatalf("L2 hit of a grouped entry: %d round trips, want 1", got)
			}
			if st := n.Stats(); st.Caches.L2Hits != 1 {
				t.Fatalf("stats = %+v", st)
			}
		})
	}
}

// A node tracks a bounded number of groups; an L1 entry in a group it
// forgot is not served from L1 but checked in Redis.
func TestForgottenGroupIsCheckedInRedis(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for _, k := range []string{"book:1", "book:2", "book:3"} {
		src.set(k, "v1")
	}
	n := f.node(tier.NodeConfig{MaxTrackedGroups: 2}, nil)
	// Each book in its own group, beyond "books": author:1, author:2, author:3.
	c := grouped(t, n, src, func(key, _ string) []string { return []string{"author:" + key[len("book:"):]} })
	warm(t, n, c, "book:1")
	mustGet(t, c, "book:2")
	mustGet(t, c, "book:3") // the table is full: a group is forgotten
	tier.WaitL1(n)
	served := 0
	for _, k := range []string{"book:1", "book:2", "book:3"} {
		if inL1(t, n, c, k) {
			served++
		}
	}
	if served == 3 {
		t.Fatal("every entry was served from L1 though one of their groups was forgotten")
	}
	if st := n.Stats(); st.Caches.Fetches != 3 {
		t.Fatalf("an entry of a forgotten group was refetched instead of read from Redis: %+v", st)
	}
}

// A group invalidation is counted once on the node that made it and once on
// each node that applied its message.
func TestGroupInvalidationsCountedOnce(t *testing.T) {
	f := newFleet(t)
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	if err := na.InvalidateGroup(context.Background(), "g1", "g2"); err != nil {
		t.Fatal(err)
	}
	waitGroupApplied(t, eb, "g2")
	if a, b := na.Stats().GroupInvalidations, nb.Stats().GroupInvalidations; a != 2 || b != 2 {
		t.Fatalf("GroupInvalidations = %d on the writer, %d on the receiver; want 2 and 2", a, b)
	}
}
