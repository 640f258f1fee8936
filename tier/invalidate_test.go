package tier_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/tier"
)

// TestInvalidateTargetsInOneMessage proves Node.Invalidate applies keys of
// a Cache, keys by their string form, a namespace and groups together, in
// one message that every node applies: each named entry is fetched again
// on the other node, and entries not named are not.
func TestInvalidateTargetsInOneMessage(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	for _, k := range []string{"a", "b", "c", "d"} {
		src.set(k, "v-"+k)
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	groupsOf := func(key, _ string) []string { return []string{"g-" + key} }
	ca, err := tier.New(na, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, Groups: groupsOf})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := tier.New(nb, tier.Config[string, string]{Namespace: ns, Fetch: src.fetch, Groups: groupsOf})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		mustGet(t, cb, k)
	}
	tier.WaitL1(nb)
	reads := src.reads.Load()
	pubA, appliedB := na.Stats().Published, nb.Stats().BusApplied

	err = na.Invalidate(context.Background(), tier.KeysOf(ca, "a"), tier.Keys(ns, "b"), tier.Groups("g-c"))
	if err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	if got := na.Stats().Published - pubA; got != 1 {
		t.Fatalf("node A published %d messages for one Invalidate, want 1", got)
	}
	awaitStats(t, nb, "node B to apply the message", func(s tier.Stats) bool { return s.BusApplied > appliedB })
	if got := nb.Stats().BusApplied - appliedB; got != 1 {
		t.Fatalf("node B applied %d messages, want 1", got)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		mustGet(t, cb, k)
	}
	if got := src.reads.Load() - reads; got != 3 {
		t.Fatalf("%d fetches after invalidating a, b and c's group; want 3 (d stays cached)", got)
	}
	if st := ca.Stats(); st.Invalidations != 2 {
		t.Fatalf("Cache.Stats().Invalidations = %d, want 2 (a, and b by its string form)", st.Invalidations)
	}

	// A whole namespace, in constant time.
	tier.WaitL1(nb)
	reads = src.reads.Load()
	if err := na.Invalidate(context.Background(), tier.Namespace(ns)); err != nil {
		t.Fatalf("Invalidate(Namespace): %v", err)
	}
	awaitStats(t, nb, "node B to apply the namespace", func(s tier.Stats) bool { return s.BusApplied > appliedB+1 })
	for _, k := range []string{"a", "b", "c", "d"} {
		mustGet(t, cb, k)
	}
	if got := src.reads.Load() - reads; got != 4 {
		t.Fatalf("%d fetches after invalidating the namespace, want 4", got)
	}
}

// TestInvalidateRejectsBadTargets proves an invalid target is reported,
// with its position, before anything is done.
func TestInvalidateRejectsBadTargets(t *testing.T) {
	f := newFleet(t)
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, nil)
	src := newSource()
	cb := cache(t, nb, src)
	pub := na.Stats().Published
	for _, tc := range []struct {
		name   string
		target tier.Target
		want   error
	}{
		{"empty namespace", tier.Keys("", "k"), tier.ErrConfig},
		{"empty key", tier.Keys(ns, "k", ""), tier.ErrEmptyKey},
		{"key too large", tier.Keys(ns, strings.Repeat("k", tier.DefaultMaxKeyBytes+1)), tier.ErrKeyTooLarge},
		{"bad group", tier.Groups("ok", "\x00internal"), tier.ErrBadGroup},
		{"a Cache of another node", tier.KeysOf(cb, "k"), tier.ErrConfig},
		{"empty namespace to flush", tier.Namespace(""), tier.ErrConfig},
	} {
		err := na.Invalidate(context.Background(), tier.Keys(ns, "fine"), tc.target)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "target 1") {
			t.Errorf("%s: Invalidate = %v; want an error wrapping %v naming target 1", tc.name, err, tc.want)
		}
	}
	if got := na.Stats().Published; got != pub {
		t.Fatalf("rejected invalidations published %d messages", got-pub)
	}
	if err := na.Invalidate(context.Background()); err != nil {
		t.Fatalf("Invalidate of nothing: %v", err)
	}
}
