package breaker

import (
	"errors"
	"sync"
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
}

// New returns a closed breaker that opens after threshold consecutive
// failures and stays open for openFor before it lets a probe through. now
// is its clock (time.Now if nil); onChange, if not nil, is called on every
// change of state, with the breaker's lock held: it must not call back.
func New(threshold int, openFor time.Duration, now func() time.Time, onChange func(from, to State)) *Breaker {
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: max(threshold, 1), openFor: openFor, now: now, onChange: onChange}
}

// Allow reports whether an operation may go ahead, or ErrOpen. Every
// admitted operation must be followed by one call of Done.
func (b *Breaker) Allow() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case Closed:
		return nil
	case Open:
		if b.now().Sub(b.openedAt) < b.openFor {
			return ErrOpen
		}
		b.setLocked(HalfOpen)
	}
	if b.probing {
		return ErrOpen
	}
	b.probing = true
	return nil
}

// Done records the outcome of an admitted operation: failed is true if it
// failed because Redis could not be reached.
func (b *Breaker) Done(failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	wasProbe := b.state == HalfOpen && b.probing
	if wasProbe {
		b.probing = false
	}
	if !failed {
		b.failures = 0
		if b.state != Closed {
			b.setLocked(Closed)
		}
		return
	}
	b.failures++
	if wasProbe || (b.state == Closed && b.failures >= b.threshold) {
		b.openedAt = b.now()
		b.setLocked(Open)
	}
}

// State returns the breaker's state.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *Breaker) setLocked(to State) {
	from := b.state
	b.state = to
	if b.onChange != nil && from != to {
		b.onChange(from, to)
	}
}
