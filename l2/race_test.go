package l2_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/google/go-cmp/cmp"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/l2"
)

// brokenFill is the two-step fill R07 forbids: it checks the token with a
// GET, compares in Go, and only then writes the value and clears the flag.
// between runs in the gap, where an invalidation can slip in.
func brokenFill(ctx context.Context, rdb *redis.Client, k l2.Keys, token string, envelope []byte, ttl time.Duration, between func()) (bool, error) {
	got, err := rdb.Get(ctx, k.Flag).Result()
	if errors.Is(err, redis.Nil) || (err == nil && got != token) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	between()
	if err := rdb.Set(ctx, k.Value, envelope, ttl).Err(); err != nil {
		return false, err
	}
	if err := rdb.Del(ctx, k.Flag).Err(); err != nil {
		return false, err
	}
	return true, nil
}

// TestRace_R07_CheckThenWriteIsAtomic proves R07: a two-command
// check-then-write lets an invalidation between check and write leave a
// stale value in Redis (negative control), while Store.Fill, a single
// script, admits only two orders, and in both no stale value remains: an
// invalidation before it refuses the fill, one after it deletes the value.
func TestRace_R07_CheckThenWriteIsAtomic(t *testing.T) {
	t.Run("NegativeControl_TwoStepFill", func(t *testing.T) {
		f := newFixture(t)
		k := l2.KeysFor("tc", "ns", "k")
		tok := f.claim(t, k)
		stale := envelope(t, "k", "v1")
		invalidated := false
		ok, err := brokenFill(t.Context(), f.rdb, k, tok, stale, valueTTL, func() {
			if err := f.st.Invalidate(t.Context(), k); err != nil {
				t.Fatalf("Invalidate: %v", err)
			}
			invalidated = true
		})
		if err != nil {
			t.Fatalf("brokenFill: %v", err)
		}
		if !invalidated {
			t.Fatalf("the hook never ran: the interleaving was not driven")
		}
		if !ok {
			t.Fatalf("brokenFill = false; the negative control expects the stale fill to land")
		}
		// The bug: Invalidate returned, yet the value fetched before it
		// is now in Redis.
		f.mustHold(t, k.Value, string(stale))
	})
	t.Run("InvalidateBeforeFill", func(t *testing.T) {
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
	})
	t.Run("InvalidateAfterFill", func(t *testing.T) {
		f := newFixture(t)
		k := l2.KeysFor("tc", "ns", "k")
		tok := f.claim(t, k)
		ok, err := f.st.Fill(t.Context(), k, tok, envelope(t, "k", "v1"), valueTTL)
		if err != nil || !ok {
			t.Fatalf("Fill = %v, %v; want true, nil", ok, err)
		}
		if err := f.st.Invalidate(t.Context(), k); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		f.mustAbsent(t, k.Value)
		f.mustAbsent(t, k.Flag)
	})
}

// TestRace_R07_ConcurrentFillInvalidateLeavesNothing proves, with real
// concurrency, that whatever order Redis picks between a claimed fill and an
// invalidation of the same key, no value survives both: the end state does
// not depend on the interleaving, so it needs no timing.
func TestRace_R07_ConcurrentFillInvalidateLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	// Preloaded scripts make a fill one round trip, like an invalidation.
	if err := f.st.LoadScripts(ctx); err != nil {
		t.Fatalf("LoadScripts: %v", err)
	}
	const n = 200
	keys := make([]l2.Keys, n)
	toks := make([]string, n)
	for i := range n {
		keys[i] = l2.KeysFor("tc", "ns", fmt.Sprint("k", i))
		toks[i] = f.claim(t, keys[i])
	}
	env := envelope(t, "k", "fetched before the invalidation")
	errs := make(chan error, 2*n)
	var landed sync.Map
	var wg sync.WaitGroup
	for i := range n {
		fill := func() {
			ok, err := f.st.Fill(ctx, keys[i], toks[i], env, valueTTL)
			if err != nil {
				errs <- fmt.Errorf("Fill %d: %w", i, err)
			}
			if ok {
				landed.Store(i, true)
			}
		}
		invalidate := func() {
			if err := f.st.Invalidate(ctx, keys[i]); err != nil {
				errs <- fmt.Errorf("Invalidate %d: %w", i, err)
			}
		}
		if i%2 == 0 { // alternate which one starts first
			fill, invalidate = invalidate, fill
		}
		wg.Go(fill)
		wg.Go(invalidate)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Only the group clock, which the first claim created, is left.
	if got, err := f.rdb.Keys(ctx, "*").Result(); err != nil || !cmp.Equal(got, []string{"tc:gseq"}) {
		t.Fatalf("keys %q, %v after every key was invalidated; want only the group clock", got, err)
	}
	nLanded := 0
	landed.Range(func(any, any) bool { nLanded++; return true })
	t.Logf("%d of %d fills landed before their invalidation, %d were refused", nLanded, n, n-nLanded)
}

// TestRace_R03_FlagABA_Store proves R03 at the store level: A claims, W
// invalidates, B claims, A fills. With unique tokens A's stale fill is
// refused and B's lands; with a constant token (the original cachecow flag,
// negative control) A's stale fill lands and B's fresh one is refused.
func TestRace_R03_FlagABA_Store(t *testing.T) {
	run := func(t *testing.T, tokA, tokB string) (okA, okB bool, final string) {
		t.Helper()
		f := newFixture(t)
		ctx := t.Context()
		k := l2.KeysFor("tc", "ns", "k")
		if r, err := f.st.ReadOrClaim(ctx, k, tokA, flagTTL); err != nil || r.State != l2.Claimed {
			t.Fatalf("A: ReadOrClaim = %+v, %v; want Claimed", r, err)
		}
		// A reads v1 from the source; W writes v2 and invalidates.
		if err := f.st.Invalidate(ctx, k); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		if r, err := f.st.ReadOrClaim(ctx, k, tokB, flagTTL); err != nil || r.State != l2.Claimed {
			t.Fatalf("B: ReadOrClaim = %+v, %v; want Claimed", r, err)
		}
		// B reads v2 slowly; A fills v1 first.
		var err error
		if okA, err = f.st.Fill(ctx, k, tokA, envelope(t, "k", "v1"), valueTTL); err != nil {
			t.Fatalf("A: Fill: %v", err)
		}
		if okB, err = f.st.Fill(ctx, k, tokB, envelope(t, "k", "v2"), valueTTL); err != nil {
			t.Fatalf("B: Fill: %v", err)
		}
		raw, ok := f.get(t, k.Value)
		if !ok {
			t.Fatalf("no value after both fills")
		}
		st, err := l2.ParseStored(raw)
		if err != nil {
			t.Fatalf("ParseStored: %v", err)
		}
		e, err := l2.DecodeEnvelope([]byte(st.Envelope))
		if err != nil {
			t.Fatalf("DecodeEnvelope: %v", err)
		}
		return okA, okB, string(e.Data)
	}
	t.Run("UniqueTokens", func(t *testing.T) {
		okA, okB, final := run(t, consistency.NewToken(), consistency.NewToken())
		if okA {
			t.Errorf("A's stale fill landed")
		}
		if !okB {
			t.Errorf("B's fresh fill was refused")
		}
		if final != "v2" {
			t.Errorf("value = %q; want v2", final)
		}
	})
	t.Run("NegativeControl_ConstantToken", func(t *testing.T) {
		const constant = "1"
		okA, okB, final := run(t, constant, constant)
		if !okA || okB || final != "v1" {
			t.Fatalf("constant token: A landed %v, B landed %v, value %q; want true, false, v1 (the R03 bug)", okA, okB, final)
		}
	})
}

// TestRace_R01_InvalidateDuringFetch_Store proves R01 at the store level: a
// fill whose claim was invalidated is refused, and the next reader misses,
// claims, and fills the new value.
func TestRace_R01_InvalidateDuringFetch_Store(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	tokA := f.claim(t, k)
	// A reads v1; W writes v2 to the source and invalidates.
	if err := f.st.Invalidate(ctx, k); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	if ok, err := f.st.Fill(ctx, k, tokA, envelope(t, "k", "v1"), valueTTL); err != nil || ok {
		t.Fatalf("A's Fill = %v, %v; want false, nil", ok, err)
	}
	tokC := f.claim(t, k) // the next reader misses
	v2 := envelope(t, "k", "v2")
	if ok, err := f.st.Fill(ctx, k, tokC, v2, valueTTL); err != nil || !ok {
		t.Fatalf("C's Fill = %v, %v; want true, nil", ok, err)
	}
	r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL)
	if err != nil || r.State != l2.Hit || string(r.Value) != string(v2) {
		t.Fatalf("ReadOrClaim = %+v, %v; want a Hit of v2", r, err)
	}
}

// TestRace_R02_ClaimIsExclusive proves the store half of R02: of many
// concurrent claimants of one missing key exactly one gets the flag, the
// others are Busy, and after its fill all of them hit.
func TestRace_R02_ClaimIsExclusive(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "hot")
	const n = 50
	type result struct {
		tok string
		r   l2.Read
		err error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			tok := consistency.NewToken()
			r, err := f.st.ReadOrClaim(ctx, k, tok, flagTTL)
			results <- result{tok, r, err}
		})
	}
	wg.Wait()
	close(results)
	var winner string
	for res := range results {
		switch {
		case res.err != nil:
			t.Fatalf("ReadOrClaim: %v", res.err)
		case res.r.State == l2.Claimed:
			if winner != "" {
				t.Fatalf("two claimants got the flag")
			}
			winner = res.tok
		case res.r.State != l2.Busy:
			t.Fatalf("ReadOrClaim = %+v; want Claimed or Busy", res.r)
		}
	}
	if winner == "" {
		t.Fatalf("nobody got the flag")
	}
	env := envelope(t, "hot", "v")
	if ok, err := f.st.Fill(ctx, k, winner, env, valueTTL); err != nil || !ok {
		t.Fatalf("winner's Fill = %v, %v", ok, err)
	}
	if r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Hit {
		t.Fatalf("after the fill: ReadOrClaim = %+v, %v; want Hit", r, err)
	}
}
