package sim

import (
	"testing"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// The checker on a hand-made history: each read below is judged as its
// comment says, and the counts are exact.
func TestCheckJudgesEachRead(t *testing.T) {
	cfg, err := Config{Keys: 2, Nodes: 3}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	bound := int64(cfg.Bound())
	ms := int64(time.Millisecond)
	h := &history{
		writes: []write{
			{Key: 0, Version: 1, Node: 0, Start: 90 * ms, End: 100 * ms, Outcome: wroteOK},
			{Key: 1, Version: 1, Node: 1, Start: 90 * ms, End: 100 * ms, Outcome: wrotePending},
			{Key: 1, Version: 2, Node: 2, Start: 190 * ms, End: 200 * ms, Outcome: wroteFailed},
		},
		reads: []read{
			// before the write returned: v0 is fresh
			{Key: 0, Node: 1, Worker: 1, Start: 99 * ms, Version: 0, Source: tier.SourceL2},
			// after it, from L2: a violation
			{Key: 0, Node: 1, Worker: 1, Start: 101 * ms, Version: 0, Source: tier.SourceL2},
			// from another node's L1 within the bound: stale within bound
			{Key: 0, Node: 2, Worker: 2, Start: 100*ms + bound, Version: 0, Source: tier.SourceL1},
			// from another node's L1 past the bound: a violation
			{Key: 0, Node: 2, Worker: 2, Start: 101*ms + bound, Version: 0, Source: tier.SourceL1},
			// a shared load on another node within the bound: within bound
			{Key: 0, Node: 1, Worker: 3, Start: 110 * ms, Version: 0, Source: tier.SourceFetch, Shared: true},
			// on the writing node, even from L1 at once: read-your-writes
			{Key: 0, Node: 0, Worker: 0, Start: 100*ms + 1, Version: 0, Source: tier.SourceL1},
			// v1 seen, then v0 from L1 in bound by the same worker: an inversion
			{Key: 0, Node: 2, Worker: 4, Start: 105 * ms, Version: 1, Source: tier.SourceL2},
			{Key: 0, Node: 2, Worker: 4, Start: 106 * ms, Version: 0, Source: tier.SourceL1},
			// a permitted-stale value from another node's L1, within the
			// bound, and one of the required version: counted apart
			{Key: 0, Node: 1, Worker: 5, Start: 120 * ms, Version: 0, Source: tier.SourceL1, Permitted: true},
			{Key: 0, Node: 1, Worker: 6, Start: 130 * ms, Version: 1, Source: tier.SourceL2, Permitted: true},
			// a permitted-stale value from L2 older than a returned write:
			// the invalidation removed it, so it is a violation all the same
			{Key: 0, Node: 1, Worker: 9, Start: 120 * ms, Version: 0, Source: tier.SourceL2, Permitted: true},
			// a key of a GetMany (tier unknown): within the bound, then past it
			{Key: 0, Node: 2, Worker: 7, Start: 150 * ms, Version: 0, Many: true},
			{Key: 0, Node: 2, Worker: 8, Start: 102*ms + bound, Version: 0, Many: true},
			// key 1's pending write binds its own node only
			{Key: 1, Node: 0, Worker: 0, Start: 150 * ms, Version: 0, Source: tier.SourceL2},
			{Key: 1, Node: 1, Worker: 1, Start: 150 * ms, Version: 0, Source: tier.SourceL2},
			// a failed write binds nobody, not even its node
			{Key: 1, Node: 2, Worker: 2, Start: 250 * ms, Version: 0, Source: tier.SourceL2},
			// an error is not judged; a value of another key is a violation
			{Key: 1, Node: 2, Worker: 2, Start: 260 * ms, Err: true},
			{Key: 1, Node: 2, Worker: 2, Start: 270 * ms, WrongKey: true},
		},
		end: 300 * ms,
	}
	res := check(h, cfg)
	p := res.Total
	got := [8]int64{p.Reads, p.Errors, p.Fresh, p.StaleInBound, p.PermittedStale, p.Violations, p.RYW, p.Inversions}
	want := [8]int64{18, 1, 4, 4, 2, 7, 2, 1}
	if got != want {
		t.Fatalf("reads, errors, fresh, in bound, permitted, violations, ryw, inversions\n got %v\nwant %v", got, want)
	}
	if p.PermittedBehind != 1 || res.ManyReads != 2 {
		t.Errorf("permitted behind %d, GetMany keys %d; want 1, 2", p.PermittedBehind, res.ManyReads)
	}
	wantClass := map[string]int64{ViolationL2: 2, ViolationL1: 1, ViolationRYW: 2, ViolationKey: 1, ViolationMany: 1}
	for c, n := range wantClass {
		if res.Total.ByClass[c] != n {
			t.Errorf("%s violations = %d, want %d (all: %v)", c, res.Total.ByClass[c], n, res.Total.ByClass)
		}
	}
	if res.Total.AgeMax != time.Duration(bound+2*ms) {
		t.Errorf("max age = %v, want %v", res.Total.AgeMax, time.Duration(bound+2*ms))
	}
}
