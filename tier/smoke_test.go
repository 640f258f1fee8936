package tier_test

import (
	"testing"

	"github.com/tiercache/tiercache/tier"
)

func TestGetFillsBothTiers(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	if got := mustGet(t, c, "k"); got != "v1" {
		t.Fatalf("Get = %q, want v1", got)
	}
	if got := f.stored("k"); got != "v1" {
		t.Fatalf("L2 = %q, want v1", got)
	}
	tier.WaitL1(n)
	if got := mustGet(t, c, "k"); got != "v1" {
		t.Fatalf("second Get = %q", got)
	}
	st := n.Stats()
	if st.Fetches != 1 || st.L1Hits != 1 || st.FillsLanded != 1 {
		t.Fatalf("stats = %+v", st)
	}
}
