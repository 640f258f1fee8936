package sim

import (
	"sync"
	"time"
)

// clock is the one clock of a run: every event of every node, in every
// process, is stamped with it, in nanoseconds of the system's monotonic
// clock (CLOCK_MONOTONIC, one clock for every process of the machine)
// since the run's origin, t0. Stamps of different processes compare
// exactly as stamps of one process do, up to the precision of each
// process's anchor (see monotonic).
type clock struct{ t0 int64 }

// newClock returns a clock whose origin is now.
func newClock() *clock { return &clock{t0: monotonic()} }

func (c *clock) now() int64 { return monotonic() - c.t0 }

// anchor pairs a reading of CLOCK_MONOTONIC with a time.Time read at the
// same moment (to within err nanoseconds), so that a stamp costs a read of
// Go's monotonic clock (which on Linux is CLOCK_MONOTONIC, read through
// the vDSO) instead of a system call.
type anchor struct {
	mono int64
	at   time.Time
	err  int64
}

var processAnchor = sync.OnceValue(readAnchor)

// monotonic reads CLOCK_MONOTONIC, in nanoseconds.
func monotonic() int64 {
	a := processAnchor()
	return a.mono + int64(time.Since(a.at))
}
