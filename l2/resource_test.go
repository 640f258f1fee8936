package l2_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tiercache/tiercache/l2"
)

// R46: a store switches the version in one fenced step and then deletes the
// old version's chunks, so a reader holding the old meta gets
// ErrResourceMoved, never a mix; a store whose claim was lost changes
// nothing and leaves no chunks behind.
func TestRace_R46_ResourceVersionSwitch(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.ResourceKeysFor("tc", "rates")
	store := func(token string, data []byte) l2.ResourceMeta {
		t.Helper()
		if ok, err := f.st.ClaimResource(ctx, k, token, time.Minute); err != nil || !ok {
			t.Fatalf("ClaimResource(%s) = %v, %v", token, ok, err)
		}
		m, stored, err := f.st.StoreResource(ctx, k, token, data, 4, time.Hour, time.Minute)
		if err != nil || !stored {
			t.Fatalf("StoreResource(%s) = %v, %v", token, stored, err)
		}
		return m
	}
	v1 := store("v1", []byte("0123456789"))
	if v1.Chunks != 3 || v1.Bytes != 10 {
		t.Fatalf("meta %+v; want 3 chunks of at most 4 bytes", v1)
	}
	st, err := f.st.ReadResourceState(ctx, k)
	if err != nil || !st.Present || !st.Fresh || st.Claimed || st.Meta != v1 {
		t.Fatalf("state %+v, %v; want v1, fresh, unclaimed", st, err)
	}
	if b, err := f.st.ReadResource(ctx, k, v1); err != nil || !bytes.Equal(b, []byte("0123456789")) {
		t.Fatalf("ReadResource(v1) = %q, %v", b, err)
	}

	v2 := store("v2", []byte("abcdef"))
	if _, err := f.st.ReadResource(ctx, k, v1); !errors.Is(err, l2.ErrResourceMoved) {
		t.Fatalf("ReadResource of the replaced version = %v; want ErrResourceMoved", err)
	}
	if b, err := f.st.ReadResource(ctx, k, v2); err != nil || string(b) != "abcdef" {
		t.Fatalf("ReadResource(v2) = %q, %v", b, err)
	}
	if n := len(f.rdb.Keys(ctx, "tc:r:{rates}:c:v1:*").Val()); n != 0 {
		t.Fatalf("%d chunks of the replaced version remain", n)
	}

	// A loader whose claim expired and was taken over stores nothing.
	if ok, err := f.st.ClaimResource(ctx, k, "slow", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	f.rdb.Set(ctx, k.Flag, "other", time.Minute) // the claim taken over
	if _, stored, err := f.st.StoreResource(ctx, k, "slow", []byte("stale!"), 4, time.Hour, time.Minute); err != nil || stored {
		t.Fatalf("a store under a lost claim = %v, %v; want not stored", stored, err)
	}
	if st, _ := f.st.ReadResourceState(ctx, k); st.Meta != v2 {
		t.Fatalf("meta after a refused store = %+v; want v2", st.Meta)
	}
	if n := len(f.rdb.Keys(ctx, "tc:r:{rates}:c:slow:*").Val()); n != 0 {
		t.Fatalf("%d chunks of the refused store remain", n)
	}

	// A chunk evicted (or corrupted) is detected by length and checksum.
	f.rdb.Set(ctx, k.Chunk(v2.Version, 0), "ABCD", time.Hour)
	if _, err := f.st.ReadResource(ctx, k, v2); !errors.Is(err, l2.ErrResourceMoved) {
		t.Fatalf("ReadResource of a corrupted version = %v; want ErrResourceMoved", err)
	}
}

// A failed load's throttle mark keeps others from claiming until it ends.
func TestReleaseResourceThrottles(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.ResourceKeysFor("tc", "r")
	if ok, err := f.st.ClaimResource(ctx, k, "a", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := f.st.ReleaseResource(ctx, k, "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.st.ClaimResource(ctx, k, "b", time.Minute); ok {
		t.Fatal("claimed during the throttle")
	}
	if v, _ := f.get(t, k.Flag); v != "!a" {
		t.Fatalf("flag = %q; want the failure mark", v)
	}
	if err := f.st.ReleaseResource(ctx, k, "b", 0); err != nil { // not b's: no effect
		t.Fatal(err)
	}
	if v, _ := f.get(t, k.Flag); v != "!a" {
		t.Fatalf("another token's release changed the flag to %q", v)
	}
}

// A store after SCRIPT FLUSH (a restarted or replaced Redis) loads its
// script again and switches the version (R23).
func TestStoreResourceAfterScriptFlush(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.ResourceKeysFor("tc", "rates")
	if err := f.st.LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.st.ClaimResource(ctx, k, "v1", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	m, stored, err := f.st.StoreResource(ctx, k, "v1", []byte("data"), 4, time.Hour, 500*time.Microsecond)
	if err != nil || !stored {
		t.Fatalf("StoreResource after SCRIPT FLUSH = %v, %v", stored, err)
	}
	if b, err := f.st.ReadResource(ctx, k, m); err != nil || string(b) != "data" {
		t.Fatalf("ReadResource = %q, %v", b, err)
	}
}
