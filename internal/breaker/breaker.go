package breaker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrOpen is returned by Allow while the breaker refuses operations.
var ErrOpen = errors.New("breaker: open")

// State is where the breaker stands.
type State int

const (
	// Closed: operations go through; failures are counted.
	Closed State = iota
	// Open: operations fail at once until OpenFor has passed.
	Open
	// HalfOpen: one probe at a time goes through.
	HalfOpen
)

func (s State) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// Breaker is a circuit breaker. The zero value is not usable; use New.
type Breaker struct {
	threshold int
	openFor   time.Duration
	now       func() time.Time
	onChange  func(from, to State)

	mu       sync.Mutex
	state    State
	failures int
	openedAt time.Time
	probing  bool

	// closed is state == Closed, and clean is that with no failure
	// counted, both as of the last change under mu: they let Allow and
	// Done of the common case (closed, and Redis answers) skip the lock,
	// which every operation of a node would otherwise contend on.
	closed, clean atomic.Bool
}

// New returns a closed breaker that opens after threshold consecutive
// failures and stays open for openFor before it lets a probe through. now
// is its clock (time.Now if nil); onChange, if not nil, is called on every
// change of state, with the breaker's lock held: it must not call back.
func New(threshold int, openFor time.Duration, now func() time.Time, onChange func(from, to State)) *Breaker {
	if now == nil {
		now = time.Now
	}
	b := &Breaker{threshold: max(threshold, 1), openFor: openFor, now: now, onChange: onChange}
	b.closed.Store(true)
	b.clean.Store(true)
	return b
}

// Outcome is how an admitted operation ended.
type Outcome int

const (
	// Reached: Redis answered (with a value, or an error of its own).
	Reached Outcome = iota
	// Unreachable: Redis could not be reached (refused, dropped, timed out,
	// busy).
	Unreachable
	// Abandoned: the caller gave up first; it says nothing about Redis.
	Abandoned
)

// Allow reports whether an operation may go ahead, or ErrOpen, and whether
// it is the half-open breaker's probe. Every admitted operation must be
// followed by one call of Done with that probe flag.
func (b *Breaker) Allow() (probe bool, err error) {
	if b.closed.Load() {
		return false, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case Closed:
		return false, nil
	case Open:
		if b.now().Sub(b.openedAt) < b.openFor {
			return false, ErrOpen
		}
		b.setLocked(HalfOpen)
	}
	if b.probing {
		return false, ErrOpen
	}
	b.probing = true
	return true, nil
}

// Done records the outcome of an admitted operation. Only the probe's
// outcome moves a half-open breaker; an operation admitted while the
// breaker was closed and ending after it opened changes nothing. An
// abandoned operation changes nothing either, beyond freeing the probe.
func (b *Breaker) Done(probe bool, o Outcome) {
	if !probe && o != Unreachable && b.clean.Load() {
		return // closed with no failure counted: nothing to change
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.noteLocked()
	if probe {
		b.probing = false
		switch o {
		case Reached:
			b.failures = 0
			b.setLocked(Closed)
		case Unreachable:
			b.openedAt = b.now()
			b.setLocked(Open)
		}
		return
	}
	if b.state != Closed {
		return
	}
	switch o {
	case Reached:
		b.failures = 0
	case Unreachable:
		b.failures++
		if b.failures >= b.threshold {
			b.openedAt = b.now()
			b.setLocked(Open)
		}
	}
}

// Trip opens a closed breaker at once, without waiting for threshold
// failures: the caller saw proof that the other side is down (a refused
// connection). It reports whether it opened the breaker. An open or
// half-open breaker is left as it is, so that repeated proof does not
// postpone its probes.
func (b *Breaker) Trip() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != Closed {
		return false
	}
	b.openedAt = b.now()
	b.setLocked(Open)
	return true
}

// Expedite makes an open breaker's probe due now rather than openFor after
// it opened: the caller has a sign that the other side is back (it accepted
// a connection). A closed or half-open breaker is left as it is.
func (b *Breaker) Expedite() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Open {
		b.openedAt = b.now().Add(-b.openFor)
	}
}

// State returns the breaker's state.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// noteLocked publishes state and failures to the lock-free fast paths.
func (b *Breaker) noteLocked() {
	b.closed.Store(b.state == Closed)
	b.clean.Store(b.state == Closed && b.failures == 0)
}

func (b *Breaker) setLocked(to State) {
	from := b.state
	b.state = to
	b.noteLocked()
	if b.onChange != nil && from != to {
		b.onChange(from, to)
	}
}
