package l2_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/l2"
)

// TestReadOrClaimWith_RefreshZone proves a present value is a plain Hit
// above Claim.Below, and below it is claimed once (StaleClaimed, with the
// value) while every other reader gets StaleBusy with the value too. The
// zone is moved with PEXPIRE: Redis's clock is the only one consulted.
func TestReadOrClaimWith_RefreshZone(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	env := envelope(t, "k", "v1")
	if err := f.st.Write(t.Context(), k, env, valueTTL); err != nil {
		t.Fatalf("Write: %v", err)
	}
	zone := l2.Claim{Below: 10 * time.Minute}
	r, err := f.st.ReadOrClaimWith(t.Context(), k, consistency.NewToken(), flagTTL, zone)
	if err != nil || r.State != l2.Hit {
		t.Fatalf("above the zone: %+v, %v; want Hit", r, err)
	}
	f.mustAbsent(t, k.Flag)

	if err := f.rdb.PExpire(t.Context(), k.Value, 5*time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	tok := consistency.NewToken()
	r, err = f.st.ReadOrClaimWith(t.Context(), k, tok, flagTTL, zone)
	if err != nil || r.State != l2.StaleClaimed || !cmp.Equal(r.Value, env) || r.TTL > 5*time.Minute || r.TTL <= 0 {
		t.Fatalf("in the zone: %+v, %v; want StaleClaimed with the value", r, err)
	}
	f.mustHold(t, k.Flag, tok)
	r, err = f.st.ReadOrClaimWith(t.Context(), k, consistency.NewToken(), flagTTL, zone)
	if err != nil || r.State != l2.StaleBusy || !cmp.Equal(r.Value, env) || r.Failing {
		t.Fatalf("second reader in the zone: %+v, %v; want StaleBusy with the value", r, err)
	}
	// A plain ReadOrClaim knows no zone: the value is a hit.
	if r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Hit {
		t.Fatalf("ReadOrClaim in the zone: %+v, %v; want Hit", r, err)
	}
	// The refresh lands like any fill, under the claim.
	env2 := envelope(t, "k", "v2")
	if ok, err := f.st.FillInGroups(t.Context(), k, tok, env2, valueTTL, nil, r.Clock); err != nil || !ok {
		t.Fatalf("refresh fill = %v, %v; want landed", ok, err)
	}
	r, err = f.st.ReadOrClaimWith(t.Context(), k, consistency.NewToken(), flagTTL, zone)
	if err != nil || r.State != l2.Hit || !cmp.Equal(r.Value, env2) {
		t.Fatalf("after the refresh: %+v, %v; want Hit of v2", r, err)
	}
}

// TestRace_R34_RefreshRefusedByInvalidation proves a refresh claimed in the
// zone is a fill like any other: an invalidation in between refuses it.
func TestRace_R34_RefreshRefusedByInvalidation(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	if err := f.st.Write(t.Context(), k, envelope(t, "k", "v1"), time.Minute); err != nil {
		t.Fatalf("Write: %v", err)
	}
	tok := consistency.NewToken()
	r, err := f.st.ReadOrClaimWith(t.Context(), k, tok, flagTTL, l2.Claim{Always: true})
	if err != nil || r.State != l2.StaleClaimed {
		t.Fatalf("Always: %+v, %v; want StaleClaimed", r, err)
	}
	if err := f.st.Invalidate(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.st.FillInGroups(t.Context(), k, tok, envelope(t, "k", "v1-refetched"), time.Minute, nil, r.Clock); err != nil || ok {
		t.Fatalf("refresh after invalidation = %v, %v; want refused", ok, err)
	}
	f.mustAbsent(t, k.Value)
}

// TestMarkFailing proves a failure mark blocks claims for its lifetime,
// shows as Failing to readers with and without a value, is set only by the
// flag's holder, and is cleared by an invalidation.
func TestMarkFailing(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok := f.claim(t, k)
	if err := f.st.MarkFailing(t.Context(), k, "not-the-holder", time.Minute); err != nil {
		t.Fatal(err)
	}
	f.mustHold(t, k.Flag, tok)
	if err := f.st.MarkFailing(t.Context(), k, tok, time.Minute); err != nil {
		t.Fatal(err)
	}
	if left := f.pttl(t, k.Flag); left <= flagTTL || left > time.Minute {
		t.Errorf("mark lifetime %v; want the mark's (1m)", left)
	}
	r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL)
	if err != nil || r.State != l2.Busy || !r.Failing {
		t.Fatalf("read of a marked key: %+v, %v; want Busy, Failing", r, err)
	}
	// A fill under the old token no longer holds the flag.
	if ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v"), time.Minute); err != nil || ok {
		t.Fatalf("fill under a failure mark = %v, %v; want refused", ok, err)
	}
	if err := f.st.Invalidate(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	if r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Claimed {
		t.Fatalf("after invalidation: %+v, %v; want Claimed", r, err)
	}
	if err := f.st.MarkFailing(t.Context(), k, tok, 0); err == nil {
		t.Error("MarkFailing with a zero duration: no error")
	}
}

// TestFillEntry_Negative proves a stored "not found" reads back as Negative,
// keeps its own TTL, is never claimed by the refresh zone, and is removed
// by an invalidation like any value (R11).
func TestFillEntry_Negative(t *testing.T) {
	f := newFixture(t)
	k := l2.KeysFor("tc", "ns", "k")
	tok, clock := f.claimClock(t, k)
	ok, err := f.st.FillEntry(t.Context(), k, tok, l2.Entry{TTL: 2 * time.Second, Negative: true, Groups: []string{"g"}}, clock)
	if err != nil || !ok {
		t.Fatalf("FillEntry negative = %v, %v", ok, err)
	}
	r, err := f.st.ReadOrClaimWith(t.Context(), k, consistency.NewToken(), flagTTL, l2.Claim{Below: time.Hour})
	if err != nil || r.State != l2.Hit || !r.Negative || !cmp.Equal(r.Groups, []string{"g"}) {
		t.Fatalf("read = %+v, %v; want a negative Hit in group g", r, err)
	}
	if r.TTL > 2*time.Second {
		t.Errorf("negative TTL %v; want at most 2s", r.TTL)
	}
	if err := f.st.Invalidate(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	if r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Claimed {
		t.Fatalf("after invalidation: %+v, %v; want Claimed", r, err)
	}
}

// TestWake proves the flag's holder announces its fill, release or failure
// on the wake channel exactly when a reader found the flag held, and stays
// silent otherwise.
func TestWake(t *testing.T) {
	f := newFixture(t)
	sub := f.srv.Client(t).Subscribe(t.Context(), l2.BusKeysFor("tc", false).Wake)
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(t.Context()); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	// next returns the payload of the wake message the test's last step
	// caused, or "" if it caused none: a PING through the subscription is
	// answered after every message published before it, so what has not
	// arrived by its pong was never sent.
	next := func() string {
		t.Helper()
		if err := sub.Ping(t.Context(), "fence"); err != nil {
			t.Fatal(err)
		}
		got := ""
		for {
			m, err := sub.Receive(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *redis.Message:
				got = m.Payload
			case *redis.Pong:
				return got
			}
		}
	}
	for name, finish := range map[string]func(k l2.Keys, tok string) error{
		"fill": func(k l2.Keys, tok string) error {
			_, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v"), time.Minute)
			return err
		},
		"release": func(k l2.Keys, tok string) error { return f.st.Release(t.Context(), k, tok) },
		"fail":    func(k l2.Keys, tok string) error { return f.st.MarkFailing(t.Context(), k, tok, time.Minute) },
	} {
		t.Run(name, func(t *testing.T) {
			k := l2.KeysFor("tc", "wake", name)
			tok := f.claim(t, k)
			if err := finish(k, consistency.NewToken()); err != nil { // not the holder: nothing
				t.Fatal(err)
			}
			if r, err := f.st.ReadOrClaim(t.Context(), k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Busy {
				t.Fatalf("reader: %+v, %v; want Busy", r, err)
			}
			if err := finish(k, tok); err != nil {
				t.Fatal(err)
			}
			if got := next(); got != k.Value {
				t.Fatalf("wake message %q; want %q", got, k.Value)
			}
			// Nobody waits any more: the next holder finishes silently.
			if err := f.rdb.Del(t.Context(), k.Value, k.Flag, k.Meta).Err(); err != nil {
				t.Fatal(err)
			}
			tok = f.claim(t, k)
			if err := finish(k, tok); err != nil {
				t.Fatal(err)
			}
			if got := next(); got != "" {
				t.Fatalf("wake message %q with no reader waiting", got)
			}
		})
	}
}
