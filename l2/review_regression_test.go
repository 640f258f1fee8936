package l2_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/l2"
)

// Apply puts every argument of a mixed batch of group, write (with and
// without groups) and delete changes in its place, and the scripts name
// stamps exactly as GroupKey does, for names with NUL, braces, multibyte
// runes and 1024 bytes.
func TestApplyMixedBatchAndGroupKeys(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	odd := []string{"g", "a}b{c", "\x00ns\x00x", "é€😀", strings.Repeat("z", 1024), "12:ab"}
	k1, k2 := l2.KeysFor("tc", "ns", "k1"), l2.KeysFor("tc", "ns", "k2")
	k3, k4 := l2.KeysFor("tc", "ns", "k3"), l2.KeysFor("tc", "ns", "k4")
	for _, k := range []l2.Keys{k1, k3} {
		if err := f.rdb.Set(ctx, k.Value, "old", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	changes := []l2.Change{
		{Group: odd[0]}, {Keys: k1},
		{Keys: k2, Write: true, Envelope: envelope(t, "k2", "two"), TTL: time.Hour, Groups: odd[1:4]},
		{Group: odd[4]}, {Keys: k3},
		{Keys: k4, Write: true, Envelope: envelope(t, "k4", "four"), TTL: time.Minute},
		{Group: odd[5]},
	}
	if _, err := f.st.Apply(ctx, changes, &l2.Announcement{SeqKey: "tc:seq", Channel: "tc:bus", Head: []byte("h"), Body: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	f.mustAbsent(t, k1.Value)
	f.mustAbsent(t, k3.Value)
	f.mustHoldEnvelope(t, k2.Value, string(envelope(t, "k2", "two")))
	f.mustHoldEnvelope(t, k4.Value, string(envelope(t, "k4", "four")))
	pairs := func(k l2.Keys) []string {
		v, _ := f.get(t, k.Value)
		st, err := l2.ParseStored(v)
		if err != nil {
			t.Fatalf("ParseStored(%q): %v", v, err)
		}
		return st.Pairs
	}
	if p2 := pairs(k2); len(p2) != 6 || p2[0] != odd[1] || p2[2] != odd[2] || p2[4] != odd[3] {
		t.Fatalf("groups of k2 = %q", p2)
	}
	if p4 := pairs(k4); len(p4) != 0 {
		t.Fatalf("groups of k4 = %q", p4)
	}
	for i, g := range odd {
		if _, ok := f.get(t, l2.GroupKey("tc", g)); !ok {
			t.Errorf("group %d: no stamp under GroupKey", i)
		}
	}
	if r, err := f.st.ReadOrClaim(ctx, k2, "tok", flagTTL); err != nil || r.State != l2.Hit || len(r.Groups) != 3 {
		t.Fatalf("k2 read = %+v, %v", r, err)
	}
	if _, err := f.st.Apply(ctx, []l2.Change{{Group: odd[2]}}, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := f.st.ReadOrClaim(ctx, k2, "tok2", flagTTL); err != nil || r.State != l2.Claimed || !r.Stale {
		t.Fatalf("k2 read after its group changed = %+v, %v", r, err)
	}
}

// Group sequences from 2^31 to 2^53 are formatted and compared exactly in
// the scripts: a fill refused after its group changed, a stamp created at
// the current sequence.
func TestLargeGroupSequences(t *testing.T) {
	for _, start := range []uint64{1 << 31, 1 << 40, 1e15, 1<<53 - 10} {
		t.Run(strconv.FormatUint(start, 10), func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			if err := f.rdb.Set(ctx, "tc:gseq", fmt.Sprintf("%d/c0ffee", start), 0).Err(); err != nil {
				t.Fatal(err)
			}
			k := l2.KeysFor("tc", "ns", "k")
			tok, clock := f.claimClock(t, k)
			if want := fmt.Sprintf("%d/c0ffee", start); clock != want {
				t.Fatalf("claim clock = %q; want %q", clock, want)
			}
			if _, err := f.st.Apply(ctx, []l2.Change{{Group: "g"}}, nil); err != nil {
				t.Fatal(err)
			}
			if s, _ := f.get(t, l2.GroupKey("tc", "g")); !strings.HasPrefix(s, fmt.Sprintf("%d/c0ffee:", start+1)) {
				t.Fatalf("stamp = %q", s)
			}
			if ok, err := f.st.FillInGroups(ctx, k, tok, envelope(t, "k", "v"), time.Hour, []string{"g"}, clock); err != nil || ok {
				t.Fatalf("fill after the group changed = %v, %v; want refused", ok, err)
			}
			k2 := l2.KeysFor("tc", "ns", "k2")
			tok2, clock2 := f.claimClock(t, k2)
			if ok, err := f.st.FillInGroups(ctx, k2, tok2, envelope(t, "k2", "v"), time.Hour, []string{"h"}, clock2); err != nil || !ok {
				t.Fatalf("fill = %v, %v", ok, err)
			}
		})
	}
}

// A lifetime near the largest Duration does not overflow into an invalid
// expiry.
func TestHugeTTL(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	if ok, err := f.st.FillInGroups(t.Context(), k, tok, envelope(t, "k", "v"), time.Duration(1<<63-1), nil, ""); err != nil || !ok {
		t.Fatalf("fill with the largest TTL = %v, %v", ok, err)
	}
}
