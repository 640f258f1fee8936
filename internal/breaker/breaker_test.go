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
		if b.Allow() == nil {
			b.Done(true)
		}
	}
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
	if b.Allow() != nil {
		t.Fatal("refused while closed")
	}
	b.Done(false) // a success resets the run
	fail(b, 2)
	if b.State() != breaker.Closed {
		t.Fatal("a success did not reset the count")
	}
	fail(b, 1)
	if b.State() != breaker.Open {
		t.Fatal("did not open at the threshold")
	}
	if err := b.Allow(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("Allow while open = %v", err)
	}
	c.add(time.Second)
	if b.Allow() != nil {
		t.Fatal("no probe after OpenFor")
	}
	if err := b.Allow(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatal("a second probe went through at once")
	}
	b.Done(false)
	if b.State() != breaker.Closed || b.Allow() != nil {
		t.Fatal("a successful probe did not close the breaker")
	}
	b.Done(false)
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
	if b.Allow() != nil {
		t.Fatal("no probe")
	}
	b.Done(true)
	if b.State() != breaker.Open || b.Allow() == nil {
		t.Fatal("a failed probe did not reopen the breaker")
	}
	c.add(999 * time.Millisecond)
	if b.Allow() == nil {
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
			if b.Allow() == nil {
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
