package l2_test

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
)

// TestMain fails the package if any test leaks a goroutine (go-redis connections or redistest reapers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	flagTTL  = 30 * time.Second
	valueTTL = time.Hour
)

// fixture is a Store over a private redis-server, with a raw client to
// inspect and tamper with what the Store wrote.
type fixture struct {
	srv *redistest.Server
	rdb *redis.Client
	st  *l2.Store
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	return &fixture{srv: srv, rdb: rdb, st: l2.NewStore(rdb, "tc")}
}

// get returns the string at key and whether it exists.
func (f *fixture) get(t *testing.T, key string) (string, bool) {
	t.Helper()
	v, err := f.rdb.Get(t.Context(), key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false
	}
	if err != nil {
		t.Fatalf("GET %q: %v", key, err)
	}
	return v, true
}

// mustAbsent fails if key exists.
func (f *fixture) mustAbsent(t *testing.T, key string) {
	t.Helper()
	if v, ok := f.get(t, key); ok {
		t.Fatalf("%q = %q; want it absent", key, v)
	}
}

// mustHold fails unless key holds want.
func (f *fixture) mustHold(t *testing.T, key, want string) {
	t.Helper()
	v, ok := f.get(t, key)
	if !ok || v != want {
		t.Fatalf("%q = %q (exists %v); want %q", key, v, ok, want)
	}
}

// mustHoldEnvelope fails unless the value key holds env behind a header
// that ParseStored accepts, with an expiry no later than the key's.
func (f *fixture) mustHoldEnvelope(t *testing.T, key, env string) {
	t.Helper()
	v, ok := f.get(t, key)
	if !ok {
		t.Fatalf("%q is absent; want it to hold %q", key, env)
	}
	st, err := l2.ParseStored(v)
	if err != nil || st.Envelope != env {
		t.Fatalf("%q = %q: ParseStored = %+v, %v; want envelope %q", key, v, st, err, env)
	}
	if left := time.Until(time.UnixMilli(st.Expiry)); left > f.pttl(t, key)+time.Second {
		t.Fatalf("%q: header expiry %v away, PTTL %v; want the header's no later", key, left, f.pttl(t, key))
	}
}

// pttl returns the remaining lifetime of key as Redis reports it.
func (f *fixture) pttl(t *testing.T, key string) time.Duration {
	t.Helper()
	ms, err := f.rdb.Do(t.Context(), "PTTL", key).Int64()
	if err != nil {
		t.Fatalf("PTTL %q: %v", key, err)
	}
	return time.Duration(ms) * time.Millisecond
}

// claim claims k with a fresh token and fails unless it got the flag.
func (f *fixture) claim(t *testing.T, k l2.Keys) string {
	t.Helper()
	tok, _ := f.claimClock(t, k)
	return tok
}

// claimClock claims k with a fresh token and returns it with the group
// clock the claim saw.
func (f *fixture) claimClock(t *testing.T, k l2.Keys) (token, clock string) {
	t.Helper()
	tok := consistency.NewToken()
	r, err := f.st.ReadOrClaim(t.Context(), k, tok, flagTTL)
	if err != nil || r.State != l2.Claimed {
		t.Fatalf("ReadOrClaim(%q) = %+v, %v; want Claimed", k.Value, r, err)
	}
	return tok, r.Clock
}

// envelope encodes data under key.
func envelope(t *testing.T, key, data string) []byte {
	t.Helper()
	b, err := l2.EncodeEnvelope(key, []byte(data))
	if err != nil {
		t.Fatalf("EncodeEnvelope: %v", err)
	}
	return b
}

// TestState_String proves every State prints its name and unknown states
// print their number.
func TestState_String(t *testing.T) {
	for s, want := range map[l2.State]string{
		l2.Hit: "hit", l2.Claimed: "claimed", l2.Busy: "busy",
		l2.StaleClaimed: "stale-claimed", l2.StaleBusy: "stale-busy",
		0: "State(0)", 6: "State(6)", -1: "State(-1)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q; want %q", int(s), got, want)
		}
	}
}

// TestReadOrClaim_ClaimedSetsFlag proves a miss claims the flag with the
// caller's token and the flag TTL (PX), and writes no value.
func TestReadOrClaim_ClaimedSetsFlag(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := consistency.NewToken()
	r, err := f.st.ReadOrClaim(t.Context(), k, tok, flagTTL)
	if err != nil {
		t.Fatalf("ReadOrClaim: %v", err)
	}
	// The first claim starts the group clock, named by its token (R36).
	if diff := cmp.Diff(l2.Read{State: l2.Claimed, Clock: "0/" + tok}, r); diff != "" {
		t.Errorf("ReadOrClaim on a miss (-want +got):\n%s", diff)
	}
	f.mustHold(t, k.Flag, tok)
	if d := f.pttl(t, k.Flag); d <= 0 || d > flagTTL {
		t.Errorf("flag PTTL = %v; want in (0, %v]", d, flagTTL)
	}
	f.mustAbsent(t, k.Value)
}

// TestReadOrClaim_BusyReturnsFlagTTL proves a second claimant gets Busy with
// the flag's remaining TTL (how long it may have to wait, R08) and does not
// overwrite the holder's token.
func TestReadOrClaim_BusyReturnsFlagTTL(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tokA := f.claim(t, k)
	r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), 5*flagTTL)
	if err != nil {
		t.Fatalf("ReadOrClaim: %v", err)
	}
	if r.State != l2.Busy || r.Value != nil {
		t.Errorf("second ReadOrClaim = %+v; want Busy with no value", r)
	}
	if r.TTL <= 0 || r.TTL > flagTTL {
		t.Errorf("Busy TTL = %v; want the holder's flag TTL, in (0, %v]", r.TTL, flagTTL)
	}
	f.mustHold(t, k.Flag, tokA)
	// Once the holder's flag is gone (it died and the flag expired), a
	// waiter claims (R08).
	if err := f.rdb.Del(t.Context(), k.Flag).Err(); err != nil {
		t.Fatalf("DEL flag: %v", err)
	}
	f.claim(t, k)
}

// TestReadOrClaim_BusyReportsWhatItFound proves the rest of what a Busy
// read reports, through the script's one-string reply: a flag without an
// expiry as a negative TTL, and a stale value it removed on the way.
func TestReadOrClaim_BusyReportsWhatItFound(t *testing.T) {
	t.Run("a flag without an expiry", func(t *testing.T) {
		f := newFixture(t)
		k := l2.KeysFor("tc", "ns", "k")
		f.claim(t, k)
		if err := f.rdb.Persist(t.Context(), k.Flag).Err(); err != nil {
			t.Fatal(err)
		}
		r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL)
		if want := (l2.Read{State: l2.Busy, TTL: -time.Millisecond}); err != nil || !cmp.Equal(r, want) {
			t.Fatalf("ReadOrClaim = %+v, %v; want %+v", r, err, want)
		}
	})
	t.Run("a stale value removed", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		k := f.fillInG(t, "k")
		if err := f.rdb.Set(ctx, k.Flag, "another", flagTTL).Err(); err != nil {
			t.Fatal(err)
		}
		f.invalidateGroup(t, "g")
		r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL)
		if err != nil || r.State != l2.Busy || !r.Stale || r.Failing || r.TTL <= 0 || r.TTL > flagTTL {
			t.Fatalf("ReadOrClaim = %+v, %v; want Busy, Stale, with the flag's TTL", r, err)
		}
		f.mustAbsent(t, k.Value)
	})
}

// TestReadOrClaim_Hit proves a present value is returned with its remaining
// TTL and no flag is taken.
func TestReadOrClaim_Hit(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	env := envelope(t, "k", "v1")
	if err := f.st.Write(t.Context(), k, env, valueTTL); err != nil {
		t.Fatalf("Write: %v", err)
	}
	r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL)
	if err != nil {
		t.Fatalf("ReadOrClaim: %v", err)
	}
	if r.State != l2.Hit || !cmp.Equal(r.Value, env) {
		t.Errorf("ReadOrClaim = %+v; want Hit with % x", r, env)
	}
	if r.TTL <= 0 || r.TTL > valueTTL {
		t.Errorf("Hit TTL = %v; want in (0, %v]", r.TTL, valueTTL)
	}
	f.mustAbsent(t, k.Flag)
}

// TestReadOrClaim_HitWithoutExpiry proves a value with no expiry reports a
// negative TTL, as documented.
func TestReadOrClaim_HitWithoutExpiry(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	if err := f.rdb.Set(t.Context(), k.Value, "raw", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := f.rdb.RPush(t.Context(), k.Meta, "1").Err(); err != nil { // in no group
		t.Fatalf("RPUSH meta: %v", err)
	}
	r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL)
	if err != nil {
		t.Fatalf("ReadOrClaim: %v", err)
	}
	if r.State != l2.Hit || string(r.Value) != "raw" || r.TTL >= 0 {
		t.Errorf("ReadOrClaim = %+v; want Hit of raw with a negative TTL", r)
	}
}

// TestReadOrClaim_EarlierVersionsValue proves that a value written by an
// earlier version of the package (an envelope without a header, its groups
// in the meta list) is still read through the meta list while the fleet
// upgrades, and that one whose meta list was lost (evicted under
// maxmemory) is unknown, never fresh (R26).
func TestReadOrClaim_EarlierVersionsValue(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	env := envelope(t, "k", "v")
	if err := f.rdb.Set(ctx, k.Value, env, time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := f.rdb.RPush(ctx, k.Meta, "1").Err(); err != nil {
		t.Fatalf("RPUSH meta: %v", err)
	}
	if _, ok, err := f.st.Peek(ctx, k, nil, l2.Claim{}); err != nil || ok {
		t.Fatalf("Peek = %v, %v; want it left to the script", ok, err)
	}
	r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL)
	if err != nil || r.State != l2.Hit || string(r.Value) != string(env) {
		t.Fatalf("ReadOrClaim = %+v, %v; want a Hit of the envelope", r, err)
	}
	if err := f.rdb.Del(ctx, k.Meta).Err(); err != nil {
		t.Fatalf("DEL meta: %v", err)
	}
	r, err = f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL)
	if err != nil || r.State != l2.Claimed || !r.Stale {
		t.Fatalf("ReadOrClaim = %+v, %v; want a stale miss, claimed", r, err)
	}
	f.mustAbsent(t, k.Value)
}

// TestReadOrClaim_EmptyValueIsAHit proves an empty stored string is a hit,
// not a miss (Lua treats "" as true).
func TestReadOrClaim_EmptyValueIsAHit(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	if err := f.rdb.Set(t.Context(), k.Value, "", time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := f.rdb.RPush(t.Context(), k.Meta, "1").Err(); err != nil { // in no group
		t.Fatalf("RPUSH meta: %v", err)
	}
	r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL)
	if err != nil || r.State != l2.Hit || len(r.Value) != 0 {
		t.Fatalf("ReadOrClaim = %+v, %v; want an empty Hit", r, err)
	}
	f.mustAbsent(t, k.Flag)
}

// TestFill_LandsWithCurrentToken proves a fill by the flag's holder writes
// the value with its TTL and clears the flag.
func TestFill_LandsWithCurrentToken(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	env := envelope(t, "k", "v1")
	ok, err := f.st.Fill(t.Context(), k, tok, env, valueTTL)
	if err != nil || !ok {
		t.Fatalf("Fill = %v, %v; want true, nil", ok, err)
	}
	f.mustHoldEnvelope(t, k.Value, string(env))
	if d := f.pttl(t, k.Value); d <= 0 || d > valueTTL {
		t.Errorf("value PTTL = %v; want in (0, %v]", d, valueTTL)
	}
	f.mustAbsent(t, k.Flag)
	// A second fill with the same token finds no flag: refused.
	if ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v2"), valueTTL); err != nil || ok {
		t.Errorf("second Fill with a used token = %v, %v; want false, nil", ok, err)
	}
	f.mustHoldEnvelope(t, k.Value, string(env))
}

// TestFill_SubMillisecondTTLRoundsUp proves a positive TTL below one
// millisecond is rounded up to 1ms (PX 0 would be a Redis error).
func TestFill_SubMillisecondTTLRoundsUp(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v"), time.Microsecond)
	if err != nil || !ok {
		t.Fatalf("Fill with a 1µs TTL = %v, %v; want true, nil", ok, err)
	}
}

// TestFillInGroups_KeepsStampsAlive proves that a fill keeps each of its
// groups' stamps alive for at least the value's TTL, since a value whose
// stamp vanished reads as stale (R26): a stamp it creates, or that would
// expire sooner, gets between the TTL and a quarter more; a longer-lived
// one is left as it is, and so is one without an expiry.
func TestFillInGroups_KeepsStampsAlive(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	stamp := l2.GroupKey("tc", "g")
	fill := func(key string) time.Duration {
		t.Helper()
		f.fillInG(t, key)
		return f.pttl(t, stamp)
	}
	if d := fill("creates"); d <= valueTTL || d > valueTTL*5/4 {
		t.Fatalf("a stamp created by a fill: PTTL %v; want in (%v, %v]", d, valueTTL, valueTTL*5/4)
	}
	for _, c := range []struct {
		name     string
		set      []any // the command that sets the stamp's expiry first
		min, max time.Duration
	}{
		{"expiring sooner", []any{"PEXPIRE", stamp, 1000}, valueTTL, valueTTL * 5 / 4},
		{"expiring later", []any{"PEXPIRE", stamp, (2 * valueTTL).Milliseconds()}, 2*valueTTL - time.Minute, 2 * valueTTL},
		{"without an expiry", []any{"PERSIST", stamp}, -time.Millisecond, -time.Millisecond},
	} {
		if err := f.rdb.Do(ctx, c.set...).Err(); err != nil {
			t.Fatalf("%v: %v", c.set, err)
		}
		if d := fill(c.name); d < c.min || d > c.max {
			t.Errorf("a fill in the group of a stamp %s: PTTL %v; want in [%v, %v]", c.name, d, c.min, c.max)
		}
	}
}

// TestFillInGroups_GroupCheck proves the fill's group check (R31, R26,
// R36) in each of its cases: the fill lands only if no group of the value
// was invalidated since its claim, and a stamp that vanished meanwhile is
// recreated only if no group at all was.
func TestFillInGroups_GroupCheck(t *testing.T) {
	for _, c := range []struct {
		name   string
		after  func(t *testing.T, f *fixture) // between the claim and the fill
		landed bool
	}{
		{"nothing changed", func(*testing.T, *fixture) {}, true},
		{"its stamp lost, no group invalidated", func(t *testing.T, f *fixture) { f.del(t, l2.GroupKey("tc", "g")) }, true},
		{"its group invalidated", func(t *testing.T, f *fixture) { f.invalidateGroup(t, "g") }, false},
		{"another group invalidated", func(t *testing.T, f *fixture) { f.invalidateGroup(t, "h") }, true},
		{"another group invalidated, its stamp lost", func(t *testing.T, f *fixture) {
			f.invalidateGroup(t, "h")
			f.del(t, l2.GroupKey("tc", "g"))
		}, false},
		{"the clock lost", func(t *testing.T, f *fixture) { f.del(t, "tc:gseq") }, false},
		{"the clock lost and started again", func(t *testing.T, f *fixture) {
			f.del(t, "tc:gseq")
			f.claim(t, l2.KeysFor("tc", "ns", "other"))
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			f.fillInG(t, "first") // creates g's stamp
			k := l2.KeysFor("tc", "ns", "k")
			tok, clock := f.claimClock(t, k)
			c.after(t, f)
			ok, err := f.st.FillInGroups(ctx, k, tok, envelope(t, "k", "v"), valueTTL, []string{"g"}, clock)
			if err != nil || ok != c.landed {
				t.Fatalf("FillInGroups = %v, %v; want %v", ok, err, c.landed)
			}
			if _, held := f.get(t, l2.GroupKey("tc", "g")); c.landed && !held {
				t.Fatal("the fill landed without a stamp of its group")
			}
		})
	}
}

// fillInG claims key of namespace "ns" and fills it in group "g", and
// fails unless the fill lands.
func (f *fixture) fillInG(t *testing.T, key string) l2.Keys {
	t.Helper()
	k := l2.KeysFor("tc", "ns", key)
	tok, clock := f.claimClock(t, k)
	if ok, err := f.st.FillInGroups(t.Context(), k, tok, envelope(t, key, "v"), valueTTL, []string{"g"}, clock); err != nil || !ok {
		t.Fatalf("FillInGroups(%q) = %v, %v; want it to land", key, ok, err)
	}
	return k
}

// del deletes key.
func (f *fixture) del(t *testing.T, key string) {
	t.Helper()
	if err := f.rdb.Del(t.Context(), key).Err(); err != nil {
		t.Fatalf("DEL %q: %v", key, err)
	}
}

// invalidateGroup invalidates group g through the Store.
func (f *fixture) invalidateGroup(t *testing.T, g string) {
	t.Helper()
	if _, err := f.st.Apply(t.Context(), []l2.Change{{Group: g}}, nil); err != nil {
		t.Fatalf("invalidate group %q: %v", g, err)
	}
}

// TestReadOrClaim_RefusesBadTokens proves that a token that could not name
// an incarnation of the group clock is refused before anything is claimed.
func TestReadOrClaim_RefusesBadTokens(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	for _, tok := range []string{"", "a:b", "a/b"} {
		if r, err := f.st.ReadOrClaim(t.Context(), k, tok, flagTTL); !errors.Is(err, l2.ErrBadToken) {
			t.Errorf("ReadOrClaim with token %q = %+v, %v; want ErrBadToken", tok, r, err)
		}
		if _, _, err := f.st.ReadOrClaimMany(t.Context(), []l2.Keys{k}, []string{tok}, flagTTL, l2.Claim{}); !errors.Is(err, l2.ErrBadToken) {
			t.Errorf("ReadOrClaimMany with token %q: %v; want ErrBadToken", tok, err)
		}
	}
	f.mustAbsent(t, k.Flag)
}

// TestFill_RefusedWithWrongToken proves a fill with another token writes
// nothing and leaves the holder's flag in place.
func TestFill_RefusedWithWrongToken(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	ok, err := f.st.Fill(t.Context(), k, consistency.NewToken(), envelope(t, "k", "v"), valueTTL)
	if err != nil || ok {
		t.Fatalf("Fill with a wrong token = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
	f.mustHold(t, k.Flag, tok)
}

// TestFill_RefusedWithoutClaim proves a fill of a key nobody claimed writes
// nothing.
func TestFill_RefusedWithoutClaim(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	ok, err := f.st.Fill(t.Context(), k, consistency.NewToken(), envelope(t, "k", "v"), valueTTL)
	if err != nil || ok {
		t.Fatalf("Fill without a claim = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
}

// TestFill_RefusedAfterInvalidate proves R01 at the store level: an
// invalidation during the fetch refuses the fill.
func TestFill_RefusedAfterInvalidate(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	if err := f.st.Invalidate(t.Context(), k); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v1"), valueTTL)
	if err != nil || ok {
		t.Fatalf("Fill after Invalidate = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
	f.mustAbsent(t, k.Flag)
}

// TestRace_R04_FlagExpiredRefusesFill proves a fill whose flag expired (the
// fetch outlived the flag TTL) is refused. Expiry is simulated by deleting
// the flag, which is what expiry does, deterministically.
func TestRace_R04_FlagExpiredRefusesFill(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	if err := f.rdb.Del(t.Context(), k.Flag).Err(); err != nil {
		t.Fatalf("DEL flag: %v", err)
	}
	ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v1"), valueTTL)
	if err != nil || ok {
		t.Fatalf("Fill after the flag expired = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
}

// TestRace_R05_TokenSteal proves that when A's flag expired and B claimed,
// A's fill is refused and B's lands.
func TestRace_R05_TokenSteal(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tokA := f.claim(t, k)
	if err := f.rdb.Del(t.Context(), k.Flag).Err(); err != nil { // A's flag expires
		t.Fatalf("DEL flag: %v", err)
	}
	tokB := f.claim(t, k)
	if ok, err := f.st.Fill(t.Context(), k, tokA, envelope(t, "k", "A"), valueTTL); err != nil || ok {
		t.Fatalf("A's Fill after B's claim = %v, %v; want false, nil", ok, err)
	}
	f.mustHold(t, k.Flag, tokB)
	envB := envelope(t, "k", "B")
	if ok, err := f.st.Fill(t.Context(), k, tokB, envB, valueTTL); err != nil || !ok {
		t.Fatalf("B's Fill = %v, %v; want true, nil", ok, err)
	}
	f.mustHoldEnvelope(t, k.Value, string(envB))
}

// TestRelease_OnlyOwnToken proves Release clears the flag only for its own
// token, after which another caller can claim at once.
func TestRelease_OnlyOwnToken(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tokA := f.claim(t, k)
	if err := f.st.Release(t.Context(), k, consistency.NewToken()); err != nil {
		t.Fatalf("Release with another token: %v", err)
	}
	f.mustHold(t, k.Flag, tokA)
	if err := f.st.Release(t.Context(), k, tokA); err != nil {
		t.Fatalf("Release: %v", err)
	}
	f.mustAbsent(t, k.Flag)
	f.claim(t, k)
	// Releasing an absent or foreign flag is not an error.
	if err := f.st.Release(t.Context(), k, tokA); err != nil {
		t.Fatalf("Release of a foreign flag: %v", err)
	}
	if err := f.st.Release(t.Context(), l2.KeysFor("tc", "ns", "other"), tokA); err != nil {
		t.Fatalf("Release of an absent flag: %v", err)
	}
}

// TestWrite_SetsValueAndClearsFlag proves Write stores the value with its
// TTL and clears the flag, so a fill in progress is refused afterwards.
func TestWrite_SetsValueAndClearsFlag(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	env := envelope(t, "k", "written")
	if err := f.st.Write(t.Context(), k, env, valueTTL); err != nil {
		t.Fatalf("Write: %v", err)
	}
	f.mustHoldEnvelope(t, k.Value, string(env))
	f.mustAbsent(t, k.Flag)
	if d := f.pttl(t, k.Value); d <= 0 || d > valueTTL {
		t.Errorf("value PTTL = %v; want in (0, %v]", d, valueTTL)
	}
	if ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "fetched"), valueTTL); err != nil || ok {
		t.Fatalf("Fill after Write = %v, %v; want false, nil", ok, err)
	}
	f.mustHoldEnvelope(t, k.Value, string(env))
	// Write over an existing value replaces it and its TTL.
	env2 := envelope(t, "k", "again")
	if err := f.st.Write(t.Context(), k, env2, time.Minute); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	f.mustHoldEnvelope(t, k.Value, string(env2))
	if d := f.pttl(t, k.Value); d <= 0 || d > time.Minute {
		t.Errorf("value PTTL after second Write = %v; want in (0, 1m]", d)
	}
}

// TestInvalidate_ZeroOneMany proves Invalidate of no keys is a no-op, and of
// one or many keys deletes each value and flag and nothing else.
func TestInvalidate_ZeroOneMany(t *testing.T) {
	for _, n := range []int{0, 1, 2, 100} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			var keys []l2.Keys
			for i := range n {
				k := l2.KeysFor("tc", "ns", fmt.Sprint("k", i))
				keys = append(keys, k)
				if err := f.st.Write(ctx, k, envelope(t, k.Value, "v"), valueTTL); err != nil {
					t.Fatalf("Write: %v", err)
				}
				if err := f.rdb.Set(ctx, k.Flag, "token", flagTTL).Err(); err != nil {
					t.Fatalf("SET flag: %v", err)
				}
			}
			bystander := l2.KeysFor("tc", "ns", "bystander")
			if err := f.st.Write(ctx, bystander, envelope(t, "bystander", "v"), valueTTL); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if err := f.st.Invalidate(ctx, keys...); err != nil {
				t.Fatalf("Invalidate(%d keys): %v", n, err)
			}
			for _, k := range keys {
				f.mustAbsent(t, k.Value)
				f.mustAbsent(t, k.Flag)
			}
			if _, ok := f.get(t, bystander.Value); !ok {
				t.Fatalf("Invalidate deleted a key it was not given")
			}
			if got, err := f.rdb.DBSize(ctx).Result(); err != nil || got != 1 {
				t.Fatalf("DBSIZE = %d, %v; want 1 (the bystander's value)", got, err)
			}
		})
	}
}

// TestInvalidate_AbsentKeys proves invalidating keys that do not exist is
// not an error.
func TestInvalidate_AbsentKeys(t *testing.T) {
	f := newFixture(t)
	if err := f.st.Invalidate(t.Context(), l2.KeysFor("tc", "ns", "a")); err != nil {
		t.Fatalf("Invalidate(1 absent): %v", err)
	}
	if err := f.st.Invalidate(t.Context(), l2.KeysFor("tc", "ns", "a"), l2.KeysFor("tc", "ns", "b")); err != nil {
		t.Fatalf("Invalidate(2 absent): %v", err)
	}
}

// TestDeleteIfEqual proves DeleteIfEqual deletes the value only when it
// holds exactly the given bytes, and leaves the flag alone.
func TestDeleteIfEqual(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	corrupt := []byte{0xde, 0xad, 0x00, 0xbe, 0xef}
	if err := f.rdb.Set(ctx, k.Value, corrupt, time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if err := f.rdb.Set(ctx, k.Flag, "tok", time.Minute).Err(); err != nil {
		t.Fatalf("SET flag: %v", err)
	}
	for _, other := range [][]byte{nil, {0xde, 0xad}, {0xde, 0xad, 0x00, 0xbe, 0xee}, append(append([]byte{}, corrupt...), 0)} {
		if err := f.st.DeleteIfEqual(ctx, k, other); err != nil {
			t.Fatalf("DeleteIfEqual(% x): %v", other, err)
		}
		f.mustHold(t, k.Value, string(corrupt))
	}
	if err := f.st.DeleteIfEqual(ctx, k, corrupt); err != nil {
		t.Fatalf("DeleteIfEqual(equal): %v", err)
	}
	f.mustAbsent(t, k.Value)
	f.mustHold(t, k.Flag, "tok")
	if err := f.st.DeleteIfEqual(ctx, k, corrupt); err != nil {
		t.Fatalf("DeleteIfEqual on an absent key: %v", err)
	}
}

// infoInt returns the integer field name of an INFO section.
func infoInt(t *testing.T, rdb *redis.Client, section, field string) int {
	t.Helper()
	info, err := rdb.Info(t.Context(), section).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", section, err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(field) + `:(?:count=)?(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0 // errorstats omit errors that never happened
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// noScriptErrors returns how many NOSCRIPT errors the server has replied.
func noScriptErrors(t *testing.T, rdb *redis.Client) int {
	return infoInt(t, rdb, "errorstats", "errorstat_NOSCRIPT")
}

// TestLoadScripts proves LoadScripts fills the server's script cache
// (idempotently), so that no operation afterwards hits NOSCRIPT.
func TestLoadScripts(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if n := infoInt(t, f.rdb, "memory", "number_of_cached_scripts"); n != 0 {
		t.Fatalf("fresh server has %d cached scripts", n)
	}
	if err := f.st.LoadScripts(ctx); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	loaded := infoInt(t, f.rdb, "memory", "number_of_cached_scripts")
	if loaded == 0 {
		t.Fatalf("no script cached after LoadScripts")
	}
	if err := f.st.LoadScripts(ctx); err != nil {
		t.Fatalf("second LoadScripts: %v", err)
	}
	if n := infoInt(t, f.rdb, "memory", "number_of_cached_scripts"); n != loaded {
		t.Fatalf("second LoadScripts changed the cache from %d to %d scripts", loaded, n)
	}
	runEveryOperation(t, f, func(_ string, _ bool, run func()) { run() })
	if n := noScriptErrors(t, f.rdb); n != 0 {
		t.Fatalf("%d NOSCRIPT errors after LoadScripts; want 0", n)
	}
	if n := infoInt(t, f.rdb, "memory", "number_of_cached_scripts"); n != loaded {
		t.Fatalf("operations cached %d scripts beyond the %d LoadScripts loaded", n-loaded, loaded)
	}
}

// runEveryOperation runs each Store operation once, on fresh keys, with its
// setup and its check done through the raw client (no scripts), so that
// around(op, scripted, run) sees exactly one Store call inside run.
func runEveryOperation(t *testing.T, f *fixture, around func(op string, scripted bool, run func())) {
	t.Helper()
	ctx := t.Context()
	set := func(key string, v []byte) {
		t.Helper()
		if err := f.rdb.Set(ctx, key, v, time.Minute).Err(); err != nil {
			t.Fatalf("SET %q: %v", key, err)
		}
	}
	env := envelope(t, "k", "v")
	steps := []struct {
		op       string
		scripted bool
		run      func(k l2.Keys, tok string)
	}{
		{"ReadOrClaim/miss", true, func(k l2.Keys, tok string) {
			if r, err := f.st.ReadOrClaim(ctx, k, tok, flagTTL); err != nil || r.State != l2.Claimed {
				t.Fatalf("ReadOrClaim = %+v, %v; want Claimed", r, err)
			}
			f.mustHold(t, k.Flag, tok)
		}},
		{"ReadOrClaim/hit", true, func(k l2.Keys, tok string) {
			set(k.Value, env)
			if err := f.rdb.RPush(ctx, k.Meta, "1").Err(); err != nil { // no groups
				t.Fatalf("RPUSH meta: %v", err)
			}
			if r, err := f.st.ReadOrClaim(ctx, k, tok, flagTTL); err != nil || r.State != l2.Hit || string(r.Value) != string(env) {
				t.Fatalf("ReadOrClaim = %+v, %v; want Hit", r, err)
			}
		}},
		{"Release", true, func(k l2.Keys, tok string) {
			set(k.Flag, []byte(tok))
			if err := f.st.Release(ctx, k, tok); err != nil {
				t.Fatalf("Release: %v", err)
			}
			f.mustAbsent(t, k.Flag)
		}},
		{"Fill", true, func(k l2.Keys, tok string) {
			set(k.Flag, []byte(tok))
			if ok, err := f.st.Fill(ctx, k, tok, env, valueTTL); err != nil || !ok {
				t.Fatalf("Fill = %v, %v; want true", ok, err)
			}
			f.mustHoldEnvelope(t, k.Value, string(env))
			f.mustAbsent(t, k.Flag)
		}},
		{"Write", true, func(k l2.Keys, tok string) {
			set(k.Flag, []byte(tok))
			if err := f.st.Write(ctx, k, env, valueTTL); err != nil {
				t.Fatalf("Write: %v", err)
			}
			f.mustHoldEnvelope(t, k.Value, string(env))
			f.mustAbsent(t, k.Flag)
		}},
		{"MarkFailing", true, func(k l2.Keys, tok string) {
			set(k.Flag, []byte(tok))
			if err := f.st.MarkFailing(ctx, k, tok, time.Minute); err != nil {
				t.Fatalf("MarkFailing: %v", err)
			}
			f.mustHold(t, k.Flag, "!"+tok)
		}},
		{"DeleteIfEqual", true, func(k l2.Keys, _ string) {
			set(k.Value, env)
			if err := f.st.DeleteIfEqual(ctx, k, env); err != nil {
				t.Fatalf("DeleteIfEqual: %v", err)
			}
			f.mustAbsent(t, k.Value)
		}},
		{"Apply", true, func(k l2.Keys, tok string) {
			set(k.Value, env)
			set(k.Flag, []byte(tok))
			if _, err := f.st.Apply(ctx, []l2.Change{{Keys: k}}, nil); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			f.mustAbsent(t, k.Value)
			f.mustAbsent(t, k.Flag)
		}},
		{"Apply/one write", true, func(k l2.Keys, tok string) {
			// Its group's stamp exists, so the lean write script makes it.
			set(l2.GroupKey("tc", "g"), []byte("1/c:"+tok))
			set(k.Flag, []byte(tok))
			a := &l2.Announcement{SeqKey: seqKey, Channel: channel}
			if _, err := f.st.Apply(ctx, []l2.Change{{Keys: k, Write: true, Envelope: env, TTL: valueTTL, Groups: []string{"g"}}}, a); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			f.mustHoldEnvelope(t, k.Value, string(env))
			f.mustAbsent(t, k.Flag)
		}},
		{"Invalidate", true, func(k l2.Keys, tok string) {
			set(k.Value, env)
			set(k.Flag, []byte(tok))
			if err := f.st.Invalidate(ctx, k); err != nil {
				t.Fatalf("Invalidate: %v", err)
			}
			f.mustAbsent(t, k.Value)
			f.mustAbsent(t, k.Flag)
		}},
	}
	for _, st := range steps {
		k := l2.KeysFor("tc", "ops", st.op)
		tok := consistency.NewToken()
		around(st.op, st.scripted, func() { st.run(k, tok) })
	}
}

// TestRace_R23_NoScriptRecovery proves every Store operation still works
// after SCRIPT FLUSH empties the server's script cache: each one runs right
// after a flush, and the server's NOSCRIPT counter shows that its EVALSHA
// really missed once and was recovered from.
func TestRace_R23_NoScriptRecovery(t *testing.T) {
	f := newFixture(t)
	if err := f.st.LoadScripts(t.Context()); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	ran := 0
	runEveryOperation(t, f, func(op string, scripted bool, run func()) {
		if err := f.rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		if n := infoInt(t, f.rdb, "memory", "number_of_cached_scripts"); n != 0 {
			t.Fatalf("%d scripts cached after SCRIPT FLUSH", n)
		}
		before := noScriptErrors(t, f.rdb)
		run()
		want := 0
		if scripted {
			want = 1
		}
		if got := noScriptErrors(t, f.rdb) - before; got != want {
			t.Errorf("%s after SCRIPT FLUSH: %d NOSCRIPT replies; want %d", op, got, want)
		}
		ran++
	})
	if ran != 10 {
		t.Fatalf("ran %d operations; want 10", ran)
	}
}

// TestRace_R23_FlushDuringFetchRefusesFill proves a FLUSHALL between claim
// and fill (values, flags and scripts all vanish) refuses the fill.
func TestRace_R23_FlushDuringFetchRefusesFill(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	if err := f.st.LoadScripts(t.Context()); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	tok := f.claim(t, k)
	f.srv.Flush()
	if err := f.rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatalf("SCRIPT FLUSH: %v", err)
	}
	ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v1"), valueTTL)
	if err != nil || ok {
		t.Fatalf("Fill after FLUSHALL = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
}

// TestRace_R23_RestartDuringFetchRefusesFill proves a Redis restart without
// persistence between claim and fill refuses the fill once the client has
// reconnected, and the script cache is reloaded on demand.
func TestRace_R23_RestartDuringFetchRefusesFill(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	if err := f.st.LoadScripts(t.Context()); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	tok := f.claim(t, k)
	f.srv.Restart()
	env := envelope(t, "k", "v1")
	ok, err := f.st.Fill(t.Context(), k, tok, env, valueTTL)
	if err != nil {
		// The pooled connection died with the old process; one failure
		// is allowed while go-redis redials.
		t.Logf("first Fill after restart failed (allowed): %v", err)
		ok, err = f.st.Fill(t.Context(), k, tok, env, valueTTL)
	}
	if err != nil || ok {
		t.Fatalf("Fill after restart = %v, %v; want false, nil", ok, err)
	}
	f.mustAbsent(t, k.Value)
	f.claim(t, k) // the protocol works again
}

// TestStore_ErrorsWhenRedisDown proves every Store operation reports an
// error (and no false success) when Redis is unreachable.
func TestStore_ErrorsWhenRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	// No command retries and one dial attempt: each call fails at once.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialerRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	st := l2.NewStore(rdb, "tc")
	k := l2.KeysFor("tc", "ns", "k")
	srv.Kill()
	ctx := t.Context()
	if err := st.LoadScripts(ctx); err == nil {
		t.Errorf("LoadScripts on a dead server: nil error")
	}
	if r, err := st.ReadOrClaim(ctx, k, "tok", flagTTL); err == nil {
		t.Errorf("ReadOrClaim on a dead server = %+v, nil", r)
	}
	if ok, err := st.Fill(ctx, k, "tok", []byte("x"), valueTTL); err == nil || ok {
		t.Errorf("Fill on a dead server = %v, %v; want false and an error", ok, err)
	}
	if err := st.Release(ctx, k, "tok"); err == nil {
		t.Errorf("Release on a dead server: nil error")
	}
	if err := st.Write(ctx, k, []byte("x"), valueTTL); err == nil {
		t.Errorf("Write on a dead server: nil error")
	}
	if err := st.Invalidate(ctx, k); err == nil {
		t.Errorf("Invalidate(1) on a dead server: nil error")
	}
	if err := st.Invalidate(ctx, k, k); err == nil {
		t.Errorf("Invalidate(2) on a dead server: nil error")
	}
	if err := st.DeleteIfEqual(ctx, k, []byte("x")); err == nil {
		t.Errorf("DeleteIfEqual on a dead server: nil error")
	}
	if _, err := st.Apply(ctx, []l2.Change{{Keys: k}}, nil); err == nil {
		t.Errorf("Apply on a dead server: nil error")
	}
}
