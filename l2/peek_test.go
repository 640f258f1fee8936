package l2_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
)

// known are the groups every Peek in these tests reads with the value, as
// tier's fleet and namespace groups.
var known = []string{"fleet", "ns"}

// fillIn claims k on st and fills env in groups, failing unless it lands.
func fillIn(t *testing.T, st *l2.Store, k l2.Keys, env []byte, ttl time.Duration, groups ...string) {
	t.Helper()
	tok := consistency.NewToken()
	r, err := st.ReadOrClaim(t.Context(), k, tok, flagTTL)
	if err != nil || r.State != l2.Claimed {
		t.Fatalf("ReadOrClaim(%q) = %+v, %v; want Claimed", k.Value, r, err)
	}
	if ok, err := st.FillInGroups(t.Context(), k, tok, env, ttl, groups, r.Clock); err != nil || !ok {
		t.Fatalf("FillInGroups(%q) = %v, %v", k.Value, ok, err)
	}
}

// TestPeek proves that Peek answers exactly what the read script would
// answer as a plain Hit, and leaves everything else to it, changing
// nothing in Redis.
func TestPeek(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	peek := func(k l2.Keys, c l2.Claim) (l2.Read, bool) {
		t.Helper()
		r, ok, err := f.st.Peek(ctx, k, known, c)
		if err != nil {
			t.Fatalf("Peek(%q): %v", k.Value, err)
		}
		return r, ok
	}
	k := l2.KeysFor("tc", "ns", "k")
	if _, ok := peek(k, l2.Claim{}); ok {
		t.Fatal("Peek of an absent key answered")
	}
	f.mustAbsent(t, k.Flag) // no claim

	env := envelope(t, "k", "v1")
	fillIn(t, f.st, k, env, valueTTL, known...)
	r, ok := peek(k, l2.Claim{})
	if !ok || r.State != l2.Hit || string(r.Value) != string(env) || r.Negative || len(r.Groups) != 2 {
		t.Fatalf("Peek of a filled key = %+v, %v; want a Hit of the envelope in both groups", r, ok)
	}
	if r.TTL <= 0 || r.TTL > valueTTL {
		t.Fatalf("Peek TTL %v; want in (0, %v]", r.TTL, valueTTL)
	}
	if _, ok := peek(k, l2.Claim{Always: true}); ok {
		t.Fatal("Peek answered a claim for a forced refresh")
	}
	if _, ok := peek(k, l2.Claim{Below: 2 * valueTTL}); ok {
		t.Fatal("Peek answered a value in its refresh zone")
	}
	// A TTL shortened behind the library's back is Redis's to tell: the
	// key's PTTL, not the header's expiry.
	if err := f.rdb.PExpire(ctx, k.Value, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if r, ok := peek(k, l2.Claim{}); !ok || r.TTL > time.Minute {
		t.Fatalf("Peek after PEXPIRE 1m = %+v, %v; want a TTL of at most 1m", r, ok)
	}
	f.mustAbsent(t, k.Flag)

	// A known group invalidated, or its stamp lost (R26): not answered.
	for name, change := range map[string]func(){
		"invalidated": func() {
			if _, err := f.st.Apply(ctx, []l2.Change{{Group: "ns"}}, nil); err != nil {
				t.Fatal(err)
			}
		},
		"stamp evicted": func() {
			if err := f.rdb.Del(ctx, l2.GroupKey("tc", "fleet")).Err(); err != nil {
				t.Fatal(err)
			}
		},
	} {
		k := l2.KeysFor("tc", "ns", name)
		fillIn(t, f.st, k, envelope(t, name, "v"), valueTTL, known...)
		if _, ok := peek(k, l2.Claim{}); !ok {
			t.Fatalf("%s: Peek of a fresh value did not answer", name)
		}
		change()
		if _, ok := peek(k, l2.Claim{}); ok {
			t.Fatalf("%s: Peek answered a value whose group changed", name)
		}
		r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL)
		if err != nil || !r.Stale {
			t.Fatalf("%s: the script after Peek = %+v, %v; want it to find the value stale", name, r, err)
		}
	}

	// A group known does not name costs a second MGET, with the same
	// verdicts.
	g := l2.KeysFor("tc", "ns", "grouped")
	fillIn(t, f.st, g, envelope(t, "grouped", "v"), valueTTL, "fleet", "ns", "user:7")
	if r, ok := peek(g, l2.Claim{}); !ok || len(r.Groups) != 3 {
		t.Fatalf("Peek of a value in a third group = %+v, %v; want a Hit in 3 groups", r, ok)
	}
	if _, err := f.st.Apply(ctx, []l2.Change{{Group: "user:7"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := peek(g, l2.Claim{}); ok {
		t.Fatal("Peek answered a value whose third group was invalidated")
	}

	// A stored "not found".
	nk := l2.KeysFor("tc", "ns", "absent")
	tok := consistency.NewToken()
	cr, err := f.st.ReadOrClaim(ctx, nk, tok, flagTTL)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := f.st.FillEntry(ctx, nk, tok, l2.Entry{TTL: valueTTL, Groups: known, Negative: true}, cr.Clock); err != nil || !ok {
		t.Fatalf("FillEntry(negative) = %v, %v", ok, err)
	}
	if r, ok := peek(nk, l2.Claim{Below: 2 * valueTTL}); !ok || !r.Negative || r.Value != nil {
		t.Fatalf("Peek of a stored \"not found\" = %+v, %v; want a negative Hit (never in a refresh zone)", r, ok)
	}

	// Bytes that are not a value with a header: the script's to judge.
	for _, v := range []string{"garbage", "T1x", string(envelope(t, "k", "v"))} {
		if err := f.rdb.Set(ctx, k.Value, v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if _, ok := peek(k, l2.Claim{}); ok {
			t.Fatalf("Peek answered %q", v)
		}
	}
}

// TestPeekMany proves that one PeekMany answers each key of a batch as
// Peek would: present, absent, stale and in a third group, with lifetimes
// reckoned from the header and the server's clock, never past the key's.
func TestPeekMany(t *testing.T) {
	f := newFixture(t)
	testPeekMany(t, f.st, f.rdb)
}

// TestClusterPeekMany is TestPeekMany on a cluster: an MGET per slot,
// through each master's own client, with its own clock; then a slot
// moved to another master behind the client's back leaves its keys to the
// script (MOVED), without an error.
func TestClusterPeekMany(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	rdb := c.Client(t)
	st := l2.NewStore(rdb, "tc")
	ks := testPeekMany(t, st, rdb)

	moved := ks[0]
	c.MigrateSlotAway(t, l2.Slot(moved.Value))
	// The cluster client still sends the slot to its old master.
	if _, ok, err := st.Peek(t.Context(), moved, known, l2.Claim{}); err != nil || ok {
		t.Fatalf("Peek of a key whose slot moved = %v, %v; want it left to the script", ok, err)
	}
	if r, err := st.ReadOrClaim(t.Context(), moved, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Hit {
		t.Fatalf("ReadOrClaim after the move = %+v, %v; want the Hit, redirected", r, err)
	}
}

// testPeekMany runs TestPeekMany on st and returns the keys it filled.
func testPeekMany(t *testing.T, st *l2.Store, rdb redis.UniversalClient) []l2.Keys {
	ctx := t.Context()
	const n = 60
	ks := make([]l2.Keys, n)
	for i := range ks {
		name := "k" + string(rune('A'+i%26)) + string(rune('a'+i/26))
		ks[i] = l2.KeysFor("tc", "ns", name)
		switch i % 4 {
		case 0, 1:
			fillIn(t, st, ks[i], envelope(t, name, "v"), valueTTL, known...)
		case 2:
			fillIn(t, st, ks[i], envelope(t, name, "v"), valueTTL, "fleet", "ns", "g"+name)
		}
	}
	// Half of the third-group values go stale.
	var changes []l2.Change
	for i := 2; i < n; i += 8 {
		changes = append(changes, l2.Change{Group: "gk" + string(rune('A'+i%26)) + string(rune('a'+i/26))})
	}
	if _, err := st.Apply(ctx, changes, nil); err != nil {
		t.Fatal(err)
	}
	// Lifetimes only shrink: each read after this one is no longer.
	pttls := make([]time.Duration, n)
	for i, k := range ks {
		var err error
		if pttls[i], err = rdb.PTTL(ctx, k.Value).Result(); err != nil {
			t.Fatal(err)
		}
	}
	reads, oks, err := st.PeekMany(ctx, ks, known, l2.Claim{})
	if err != nil {
		t.Fatalf("PeekMany: %v", err)
	}
	for i, k := range ks {
		want := i%4 == 0 || i%4 == 1 || (i%4 == 2 && i%8 != 2)
		if oks[i] != want {
			t.Fatalf("key %d (%q): answered %v, want %v", i, k.Value, oks[i], want)
		}
		if !want {
			continue
		}
		if r := reads[i]; r.State != l2.Hit || len(r.Value) == 0 || r.TTL <= 0 || r.TTL > pttls[i] {
			t.Fatalf("key %d: %+v; want a Hit with a TTL in (0, the earlier PTTL %v]", i, r, pttls[i])
		}
	}
	return ks
}
