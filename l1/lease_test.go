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

// TestRevoke proves Revoke stops serving and evicts at once, refuses fills
// under tickets taken before it, and that a later Renew serves new fills
// only.
func TestRevoke(t *testing.T) {
	c := leasedCache(t)
	c.Renew(time.Now(), time.Hour)
	fill(t, c, 4, "before")
	mustGet(t, c, 4, "before")
	old := c.Ticket(4)
	c.Revoke()
	mustMiss(t, c, 4)
	if c.Fill(4, "stale", 1, time.Hour, old) {
		t.Fatalf("Fill with a ticket from before Revoke = true")
	}
	fill(t, c, 4, "unproven") // filled while no lease runs
	mustMiss(t, c, 4)
	c.Renew(time.Now(), time.Hour)
	mustMiss(t, c, 4) // the lapse's fills were evicted by the Renew
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
