package l1_test

import (
	"testing"
	"time"

	"github.com/tiercache/tiercache/l1"
)

// leasedCache returns a Leased cache closed by t.Cleanup.
func leasedCache(t *testing.T) *l1.Cache {
	t.Helper()
	return newCache(t, l1.Config{Leased: true})
}

// TestLeased_ServesNothingBeforeRenew proves a leased cache serves no entry
// before its first Renew, and that the first Renew evicts what was filled
// while no lease ran.
func TestLeased_ServesNothingBeforeRenew(t *testing.T) {
	c := leasedCache(t)
	fill(t, c, 1, "unproven")
	mustMiss(t, c, 1)
	c.Renew(time.Now(), time.Hour)
	mustMiss(t, c, 1) // the entry filled before the first lease stays dead
	fill(t, c, 1, "fresh")
	mustGet(t, c, 1, "fresh")
}

// TestLeased_RenewInThePastServesNothing proves a Renew whose lease had
// already ended when it arrived (a very late pong) starts no lease.
func TestLeased_RenewInThePastServesNothing(t *testing.T) {
	c := leasedCache(t)
	c.Renew(time.Now().Add(-time.Hour), time.Minute)
	fill(t, c, 2, "v")
	mustMiss(t, c, 2)
}

// TestLeased_RenewNeverShortens proves an older Renew arriving after a newer
// one does not cut the running lease short, nor evict.
func TestLeased_RenewNeverShortens(t *testing.T) {
	c := leasedCache(t)
	c.Renew(time.Now(), time.Hour)
	fill(t, c, 3, "v")
	c.Renew(time.Now().Add(-2*time.Hour), time.Hour)
	mustGet(t, c, 3, "v")
}

// TestRevoke proves Revoke stops serving at once, that nothing filled
// before the next Renew ever serves through Get (the Renew evicts it), and
// that GetHeld still serves what was held, within its age, until an
// invalidation touches it.
func TestRevoke(t *testing.T) {
	c := leasedCache(t)
	c.Renew(time.Now(), time.Hour)
	fill(t, c, 4, "before")
	mustGet(t, c, 4, "before")
	old := c.Ticket(4)
	c.Revoke()
	mustMiss(t, c, 4)
	if v, ok := c.GetHeld(4, time.Hour); !ok || v != "before" {
		t.Fatalf("GetHeld after Revoke = %v, %v; want the held value", v, ok)
	}
	if _, ok := c.GetHeld(4, 0); ok {
		t.Fatal("GetHeld served an entry older than its maxAge")
	}
	c.Fill(4, "late", 1, time.Hour, old) // its read began before the Revoke
	fill(t, c, 4, "unproven")            // filled while no lease runs
	mustMiss(t, c, 4)
	c.Evict(4)
	if _, ok := c.GetHeld(4, time.Hour); ok {
		t.Fatal("GetHeld served an evicted entry")
	}
	fill(t, c, 4, "unproven")
	c.Renew(time.Now(), time.Hour)
	mustMiss(t, c, 4) // the lapse's fills were evicted by the Renew
	if _, ok := c.GetHeld(4, time.Hour); ok {
		t.Fatal("GetHeld served a fill from the lapse after the Renew")
	}
	fill(t, c, 4, "after")
	mustGet(t, c, 4, "after")
}

// TestUnleased_ServesWithoutRenew proves a cache with Leased false serves
// without ever being renewed.
func TestUnleased_ServesWithoutRenew(t *testing.T) {
	c := newCache(t, l1.Config{})
	fill(t, c, 5, "v")
	mustGet(t, c, 5, "v")
}

// TestClose_Idempotent proves a second Close is a no-op, not a panic.
func TestClose_Idempotent(t *testing.T) {
	c, err := l1.New(l1.Config{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.Close()
	c.Close()
}
