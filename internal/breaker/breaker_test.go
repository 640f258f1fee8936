package breaker_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/breaker"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func fail(b *breaker.Breaker, n int) {
	for range n {
		if probe, err := b.Allow(); err == nil {
			b.Done(probe, breaker.Unreachable)
		}
	}
}

// allowed reports whether Allow admits an operation, and ends it with o.
func allowed(b *breaker.Breaker, o breaker.Outcome) bool {
	probe, err := b.Allow()
	if err != nil {
		return false
	}
	b.Done(probe, o)
	return true
}

// The breaker opens after the threshold of consecutive failures, refuses
// until OpenFor has passed, lets exactly one probe through, and closes when
// it succeeds.
func TestBreakerCycle(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	var changes []string
	b := breaker.New(3, time.Second, c.now, func(from, to breaker.State) { changes = append(changes, from.String()+">"+to.String()) })
	fail(b, 2)
	if b.State() != breaker.Closed {
		t.Fatal("opened before the threshold")
	}
	if !allowed(b, breaker.Reached) { // a success resets the run
		t.Fatal("refused while closed")
	}
	fail(b, 2)
	if b.State() != breaker.Closed {
		t.Fatal("a success did not reset the count")
	}
	fail(b, 1)
	if b.State() != breaker.Open {
		t.Fatal("did not open at the threshold")
	}
	if _, err := b.Allow(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("Allow while open = %v", err)
	}
	c.add(time.Second)
	probe, err := b.Allow()
	if err != nil || !probe {
		t.Fatalf("no probe after OpenFor: %v, %v", probe, err)
	}
	if _, err := b.Allow(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatal("a second probe went through at once")
	}
	b.Done(true, breaker.Reached)
	if b.State() != breaker.Closed || !allowed(b, breaker.Reached) {
		t.Fatal("a successful probe did not close the breaker")
	}
	want := []string{"closed>open", "open>half-open", "half-open>closed"}
	if len(changes) != len(want) {
		t.Fatalf("changes = %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("changes = %v, want %v", changes, want)
		}
	}
}

// A failed probe opens the breaker again for another OpenFor.
func TestFailedProbeReopens(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	b := breaker.New(1, time.Second, c.now, nil)
	fail(b, 1)
	c.add(time.Second)
	if probe, err := b.Allow(); err != nil || !probe {
		t.Fatal("no probe")
	}
	b.Done(true, breaker.Unreachable)
	if _, err := b.Allow(); b.State() != breaker.Open || err == nil {
		t.Fatal("a failed probe did not reopen the breaker")
	}
	c.add(999 * time.Millisecond)
	if _, err := b.Allow(); err == nil {
		t.Fatal("reopened for less than OpenFor")
	}
}

// Concurrent callers see at most one probe at a time in half-open.
func TestOneProbeAtATime(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	b := breaker.New(1, time.Second, c.now, nil)
	fail(b, 1)
	c.add(time.Second)
	var mu sync.Mutex
	admitted := 0
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := b.Allow(); err == nil {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if admitted != 1 {
		t.Fatalf("%d probes admitted at once, want 1", admitted)
	}
}

// Callers that give up say nothing about Redis: they neither keep the
// breaker closed nor close it, and an abandoned probe frees its slot.
func TestAbandonedIsNeutral(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	b := breaker.New(2, time.Second, c.now, nil)
	fail(b, 1)
	allowed(b, breaker.Abandoned)
	fail(b, 1)
	if b.State() != breaker.Open {
		t.Fatal("an abandoned operation reset the run of failures")
	}
	c.add(time.Second)
	probe, err := b.Allow()
	if err != nil || !probe {
		t.Fatal("no probe")
	}
	b.Done(probe, breaker.Abandoned)
	if b.State() != breaker.HalfOpen {
		t.Fatalf("an abandoned probe moved the breaker to %v", b.State())
	}
	if probe, err := b.Allow(); err != nil || !probe {
		t.Fatal("an abandoned probe did not free its slot")
	}
}

// An operation admitted while closed that fails after the breaker opened
// does not take the place of the half-open probe.
func TestLateDoneIsNotTheProbe(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	b := breaker.New(1, time.Second, c.now, nil)
	lateProbe, _ := b.Allow() // admitted while closed
	fail(b, 1)                // opens
	c.add(time.Second)
	probe, err := b.Allow()
	if err != nil || !probe {
		t.Fatal("no probe")
	}
	b.Done(lateProbe, breaker.Unreachable) // the late one ends
	c.add(time.Second)
	if _, err := b.Allow(); err == nil {
		t.Fatal("a second probe was admitted while the first is in flight")
	}
	b.Done(probe, breaker.Reached)
	if b.State() != breaker.Closed {
		t.Fatalf("the probe's success left the breaker %v", b.State())
	}
}
