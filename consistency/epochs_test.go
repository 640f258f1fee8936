package consistency_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tiercache/tiercache/consistency"
)

// TestEpochs_TicketValidUntilBump proves a ticket stays valid while nothing
// bumps its stripe and becomes invalid at the first Bump of it.
func TestEpochs_TicketValidUntilBump(t *testing.T) {
	e := consistency.NewEpochs(16)
	const h = 0xdead_beef_0000_0005
	tk := e.Ticket(h)
	for i := range 3 {
		if !e.Valid(h, tk) {
			t.Fatalf("Valid = false on check %d with no bump", i)
		}
	}
	if got := e.Ticket(h); got != tk {
		t.Fatalf("Ticket changed without a bump: %d -> %d", tk, got)
	}
	e.Bump(h)
	if e.Valid(h, tk) {
		t.Fatalf("Valid = true after Bump of the ticket's own key")
	}
	fresh := e.Ticket(h)
	if !e.Valid(h, fresh) {
		t.Fatalf("a ticket taken after the Bump is not valid")
	}
}

// TestEpochs_BumpAllInvalidatesEveryStripe proves BumpAll invalidates the
// tickets of every stripe, and that tickets taken afterwards are valid.
func TestEpochs_BumpAllInvalidatesEveryStripe(t *testing.T) {
	e := consistency.NewEpochs(8)
	tickets := make([]consistency.Ticket, 8)
	for h := range uint64(8) {
		tickets[h] = e.Ticket(h)
	}
	e.Bump(3) // stripes at different epochs must all be covered
	e.BumpAll()
	for h := range uint64(8) {
		if e.Valid(h, tickets[h]) {
			t.Errorf("stripe %d: ticket still valid after BumpAll", h)
		}
		if tk := e.Ticket(h); !e.Valid(h, tk) {
			t.Errorf("stripe %d: ticket taken after BumpAll is not valid", h)
		}
	}
}

// TestEpochs_NeverValidAgain proves an invalidated ticket stays invalid
// through any further sequence of Bump and BumpAll, on any stripe.
func TestEpochs_NeverValidAgain(t *testing.T) {
	for _, first := range []string{"Bump", "BumpAll"} {
		t.Run(first, func(t *testing.T) {
			e := consistency.NewEpochs(4)
			const h = 2
			tk := e.Ticket(h)
			if first == "Bump" {
				e.Bump(h)
			} else {
				e.BumpAll()
			}
			for i := range 1000 {
				switch i % 4 {
				case 0:
					e.Bump(h)
				case 1:
					e.Bump(h + 1) // another stripe
				case 2:
					e.BumpAll()
				case 3:
					e.Bump(h + 4) // same stripe, another hash
				}
				if e.Valid(h, tk) {
					t.Fatalf("ticket valid again after %d further bumps", i+1)
				}
			}
		})
	}
}

// TestEpochs_ZeroTicket proves the zero Ticket is the epoch of a fresh table
// and is invalid after any bump of its stripe, as the Ticket doc promises.
func TestEpochs_ZeroTicket(t *testing.T) {
	e := consistency.NewEpochs(4)
	if !e.Valid(1, 0) {
		t.Fatalf("zero ticket not valid on a fresh table")
	}
	e.Bump(1)
	if e.Valid(1, 0) {
		t.Fatalf("zero ticket valid after Bump of its stripe")
	}
	if !e.Valid(2, 0) {
		t.Fatalf("zero ticket of an untouched stripe invalidated by another stripe's Bump")
	}
	e.BumpAll()
	if e.Valid(2, 0) {
		t.Fatalf("zero ticket valid after BumpAll")
	}
}

// TestEpochs_OtherStripesUnaffectedByBump proves Bump(h) leaves the tickets
// of keys whose hashes differ in the low (stripe) bits valid.
func TestEpochs_OtherStripesUnaffectedByBump(t *testing.T) {
	e := consistency.NewEpochs(16)
	const base uint64 = 0xabcd_0000_0000_0010 // low 4 bits zero
	others := []uint64{base + 1, base + 2, base + 7, base + 15, base ^ 0x8}
	tickets := make([]consistency.Ticket, len(others))
	for i, h := range others {
		tickets[i] = e.Ticket(h)
	}
	own := e.Ticket(base)
	e.Bump(base)
	if e.Valid(base, own) {
		t.Fatalf("own ticket valid after Bump")
	}
	for i, h := range others {
		if !e.Valid(h, tickets[i]) {
			t.Errorf("hash %#x (stripe %d): ticket invalidated by Bump of stripe %d", h, h&15, base&15)
		}
	}
	// High bits do not select a stripe: base and base+16 share one.
	shared := e.Ticket(base + 16)
	e.Bump(base)
	if e.Valid(base+16, shared) {
		t.Errorf("hash %#x shares stripe %d with %#x but survived its Bump", base+16, base&15, base)
	}
}

// TestNewEpochs_RoundsUpToPowerOfTwo proves NewEpochs(n) has the next power
// of two stripes (zero or negative: DefaultStripes), observed through which
// hashes share a stripe.
func TestNewEpochs_RoundsUpToPowerOfTwo(t *testing.T) {
	tests := []struct {
		n       int
		stripes uint64
	}{
		{n: 1, stripes: 1},
		{n: 2, stripes: 2},
		{n: 3, stripes: 4},
		{n: 4, stripes: 4},
		{n: 5, stripes: 8},
		{n: 1000, stripes: 1024},
		{n: 0, stripes: consistency.DefaultStripes},
		{n: -7, stripes: consistency.DefaultStripes},
	}
	for _, tc := range tests {
		e := consistency.NewEpochs(tc.n)
		const h = 0x1234_5678_0000_0000
		// sharesStripe bumps h and reports whether other's ticket died.
		sharesStripe := func(other uint64) bool {
			tk := e.Ticket(other)
			e.Bump(h)
			return !e.Valid(other, tk)
		}
		if !sharesStripe(h + tc.stripes) {
			t.Errorf("NewEpochs(%d): h and h+%d do not share a stripe; want %d stripes", tc.n, tc.stripes, tc.stripes)
		}
		if tc.stripes > 1 {
			for _, d := range []uint64{1, tc.stripes / 2, tc.stripes - 1} {
				if sharesStripe(h + d) {
					t.Errorf("NewEpochs(%d): h and h+%d share a stripe; want %d stripes", tc.n, d, tc.stripes)
				}
			}
		}
	}
}

// TestEpochs_ConcurrentBumpValidate proves the guarantee of the package doc
// under -race: if a ticket was taken before a Bump (of its stripe) or a
// BumpAll that happened-before Valid, Valid is false, and once false it stays
// false.
//
// Happens-before is established through sequentially consistent atomics:
// every bumper increments started, bumps, then increments completed. A
// validator takes a ticket and then loads started (s0): a bump whose started
// increment returned more than s0 began after the ticket was taken. If a
// later load of completed exceeds s0, at least one such bump has finished
// and its completion happened-before the load, hence before the Valid call.
func TestEpochs_ConcurrentBumpValidate(t *testing.T) {
	const (
		stripes    = 4
		hashes     = 16 // 4 hashes per stripe
		bumpers    = 4
		validators = 8
		bumps      = 3000
		checks     = 3000
	)
	e := consistency.NewEpochs(stripes)
	type counters struct{ started, completed atomic.Uint64 }
	var perStripe [stripes]counters
	var all counters

	var wg sync.WaitGroup
	for b := range bumpers {
		wg.Go(func() {
			for i := range bumps {
				if (i+b)%7 == 0 {
					all.started.Add(1)
					e.BumpAll()
					all.completed.Add(1)
					continue
				}
				h := uint64(i*31+b) % hashes
				c := &perStripe[h%stripes]
				c.started.Add(1)
				e.Bump(h)
				c.completed.Add(1)
			}
		})
	}
	errs := make(chan string, validators)
	for v := range validators {
		wg.Go(func() {
			for i := range checks {
				h := uint64(i*7+v) % hashes
				c := &perStripe[h%stripes]
				tk := e.Ticket(h)
				s0, a0 := c.started.Load(), all.started.Load()
				invalidated := false
				// Watch the ticket over a few checks while bumps go on.
				for range 4 {
					mustBeInvalid := c.completed.Load() > s0 || all.completed.Load() > a0
					valid := e.Valid(h, tk)
					switch {
					case valid && invalidated:
						errs <- "a ticket became valid again after being invalid"
						return
					case valid && mustBeInvalid:
						errs <- "Valid = true although a bump that began after the ticket had completed"
						return
					}
					invalidated = invalidated || !valid
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	// Sanity: the run really bumped every stripe.
	for i := range perStripe {
		if perStripe[i].completed.Load() == 0 {
			t.Errorf("stripe %d was never bumped: the test exercised nothing there", i)
		}
	}
}
