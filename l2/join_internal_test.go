package l2

import (
	"slices"
	"testing"
)

// TestRace_R57_LeaderGivesUp proves that a batch handed to a caller that
// then gives up is handed to another caller of the batch that waits, that
// a batch none waits for is dropped and the queue goes to the next caller,
// and that the joiner is idle once the queue is empty.
func TestRace_R57_LeaderGivesUp(t *testing.T) {
	call := func() *peekCall { return &peekCall{done: make(chan []*peekCall, 1)} }
	a, b, c := call(), call(), call()
	var j joiner
	j.busy = true // a batch is in flight
	j.queue = []*peekCall{a, b}
	j.next()
	// a is made the leader of [a b], and gives up before it reads that.
	j.leave(a)
	batch := <-b.done
	if !slices.Equal(batch, []*peekCall{a, b}) {
		t.Fatalf("b received %v; want the batch [a b] to lead", batch)
	}
	// b gives up too, after c queued: nobody waits for [a b].
	j.mu.Lock()
	j.queue = append(j.queue, c)
	j.mu.Unlock()
	b.done <- batch // as handed to b, not yet read
	j.leave(b)
	select {
	case got := <-c.done:
		if !slices.Equal(got, []*peekCall{c}) {
			t.Fatalf("c received %v; want the batch [c] to lead", got)
		}
	default:
		t.Fatal("the dropped batch's turn did not go to c")
	}
	if !j.busy {
		t.Fatal("the joiner is idle while c leads a batch")
	}
	// c gives up as the leader of a batch of its own.
	c.done <- []*peekCall{c}
	j.leave(c)
	if j.busy || len(j.queue) != 0 {
		t.Fatalf("joiner busy %v, queue %d after every caller gave up; want idle", j.busy, len(j.queue))
	}
}
