package consistency

import "sync/atomic"

// DefaultStripes is the number of stripes [NewEpochs] uses when given zero.
// 65,536 stripes take 512 KiB.
const DefaultStripes = 1 << 16

// Ticket is the epoch of one key's stripe at the moment it was taken. The
// zero Ticket is never valid after any bump of its stripe.
type Ticket uint64

// Epochs is a striped table of fill epochs. The zero value is not usable; use
// [NewEpochs].
type Epochs struct {
	global  atomic.Uint64
	mask    uint64
	stripes []atomic.Uint64
}

// NewEpochs returns a table with n stripes, rounded up to a power of two;
// n <= 0 means [DefaultStripes]. Memory is 8 bytes per stripe. More stripes
// mean fewer false invalidations between keys that share one.
func NewEpochs(n int) *Epochs {
	if n <= 0 {
		n = DefaultStripes
	}
	size := 1
	for size < n {
		size <<= 1
	}
	return &Epochs{mask: uint64(size - 1), stripes: make([]atomic.Uint64, size)}
}

// Ticket returns the current epoch of h's stripe. Take it before reading
// the value that a later fill will store.
func (e *Epochs) Ticket(h uint64) Ticket {
	// Both counters only grow, so their sum changes whenever either does.
	return Ticket(e.global.Load() + e.stripes[h&e.mask].Load())
}

// Valid reports whether no bump of h's stripe, and no BumpAll, happened since
// t was taken.
func (e *Epochs) Valid(h uint64, t Ticket) bool {
	return e.Ticket(h) == t
}

// Bump invalidates every ticket of h's stripe.
func (e *Epochs) Bump(h uint64) {
	e.stripes[h&e.mask].Add(1)
}

// BumpAll invalidates every ticket of every stripe, in O(1).
func (e *Epochs) BumpAll() {
	e.global.Add(1)
}
