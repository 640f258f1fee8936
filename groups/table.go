package groups

import (
	"math"
	"sync"
	"sync/atomic"
)

// DefaultMaxGroups is the size of a Table made with max <= 0.
const DefaultMaxGroups = 1 << 16

// forgotten is the version of a group the table no longer tracks.
const forgotten = math.MaxUint64

// state is one group's version on this node.
type state struct {
	version atomic.Uint64
}

// Ref is an entry's view of one of its groups: valid while the group has not
// been invalidated (or forgotten) since the ref was taken.
type Ref struct {
	st      *state
	version uint64
}

// Valid reports whether the group is unchanged since the ref was taken.
func (r Ref) Valid() bool {
	return r.st.version.Load() == r.version
}

// Table is a node's bounded table of groups. The zero value is not usable;
// use New.
type Table struct {
	gen    atomic.Uint64
	mu     sync.Mutex
	m      map[string]*state
	pinned map[string]bool
	max    int
}

// New returns a Table that tracks at most max groups (pinned ones aside);
// max <= 0 means DefaultMaxGroups.
func New(max int) *Table {
	if max <= 0 {
		max = DefaultMaxGroups
	}
	return &Table{m: make(map[string]*state), pinned: make(map[string]bool), max: max}
}

// Gen returns the table's generation, which every Invalidate bumps. Take it
// before reading the value an entry will hold.
func (t *Table) Gen() uint64 { return t.gen.Load() }

// Refs returns refs to the named groups at their current versions, adding
// the groups the table does not know yet.
func (t *Table) Refs(names []string) []Ref {
	refs := make([]Ref, len(names))
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, name := range names {
		st := t.m[name]
		if st == nil {
			t.makeRoomLocked()
			st = &state{}
			t.m[name] = st
		}
		refs[i] = Ref{st: st, version: st.version.Load()}
	}
	return refs
}

// Pin makes the table track name for good: the group of a namespace, which
// every entry of it belongs to.
func (t *Table) Pin(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pinned[name] = true
	if t.m[name] == nil {
		t.m[name] = &state{}
	}
}

// Invalidate makes every ref to the named groups invalid, and bumps the
// generation, before it returns. Groups the table does not track have no
// refs to invalidate.
func (t *Table) Invalidate(names ...string) {
	// The generation first: a fill that checks it after this point refuses;
	// one that checked it before took its refs before the versions below
	// move, so those refs die with them. (Versions first would let a fill
	// take the new versions and still see the old generation.)
	t.gen.Add(1)
	t.mu.Lock()
	for _, name := range names {
		if st := t.m[name]; st != nil {
			st.version.Add(1)
		}
	}
	t.mu.Unlock()
}

// Len returns the number of groups tracked.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// makeRoomLocked forgets one unpinned group if the table is full: refs to it
// are invalid for good.
func (t *Table) makeRoomLocked() {
	if len(t.m)-len(t.pinned) < t.max {
		return
	}
	for name, st := range t.m { // map order: an arbitrary victim
		if t.pinned[name] {
			continue
		}
		st.version.Store(forgotten)
		delete(t.m, name)
		return
	}
}
