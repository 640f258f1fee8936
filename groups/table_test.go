package groups_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/tiercache/tiercache/groups"
)

// A ref stays valid until its group is invalidated, and never again after.
func TestRefValidUntilInvalidated(t *testing.T) {
	tb := groups.New(0)
	refs := tb.Refs([]string{"a", "b"})
	if !refs[0].Valid() || !refs[1].Valid() {
		t.Fatal("fresh refs are invalid")
	}
	tb.Invalidate("a")
	if refs[0].Valid() {
		t.Fatal("a ref to an invalidated group is valid")
	}
	if !refs[1].Valid() {
		t.Fatal("invalidating a made a ref to b invalid")
	}
	again := tb.Refs([]string{"a"})
	tb.Invalidate("b")
	if !again[0].Valid() || refs[0].Valid() {
		t.Fatal("a new ref to a should be valid and the old one never again")
	}
}

// Invalidate bumps the generation, even for groups the table does not know.
func TestGenBumpsOnEveryInvalidate(t *testing.T) {
	tb := groups.New(0)
	g := tb.Gen()
	tb.Invalidate("never-seen")
	if tb.Gen() == g {
		t.Fatal("generation unchanged")
	}
}

// A full table forgets an unpinned group; refs to it are invalid for good,
// and pinned groups are never forgotten.
func TestBoundedTableForgets(t *testing.T) {
	tb := groups.New(2)
	tb.Pin("ns")
	pinned := tb.Refs([]string{"ns"})[0]
	first := tb.Refs([]string{"a", "b"})
	tb.Refs([]string{"c"}) // a or b is forgotten
	if tb.Len() != 3 {
		t.Fatalf("table tracks %d groups, want 2 plus the pinned one", tb.Len())
	}
	if first[0].Valid() && first[1].Valid() {
		t.Fatal("no ref to a forgotten group became invalid")
	}
	for range 100 {
		tb.Refs([]string{fmt.Sprint("x", tb.Len())})
	}
	if !pinned.Valid() {
		t.Fatal("a pinned group was forgotten")
	}
}

// R31 on the node: a fill that took the generation before an invalidation
// either sees the generation moved or holds refs that die with it, for every
// interleaving of the fill's two steps with the invalidation's.
func TestRace_R31_FillAgainstInvalidate(t *testing.T) {
	tb := groups.New(0)
	tb.Refs([]string{"g"})
	const rounds = 2000
	var wg sync.WaitGroup
	var mu sync.Mutex
	violations := 0
	for range rounds {
		gen := tb.Gen()
		wg.Add(2)
		done := make(chan struct{})
		go func() {
			defer wg.Done()
			tb.Invalidate("g")
			close(done)
		}()
		go func() {
			defer wg.Done()
			refs := tb.Refs([]string{"g"})
			stored := tb.Gen() == gen
			<-done
			// The invalidation has finished: an entry that was stored must
			// not be valid any more.
			if stored && refs[0].Valid() {
				mu.Lock()
				violations++
				mu.Unlock()
			}
		}()
		wg.Wait()
	}
	if violations != 0 {
		t.Fatalf("%d fills kept a valid entry across an invalidation", violations)
	}
}
