package l1_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tiercache/tiercache/l1"
)

// user is a value stored through a Slot: l1's part first.
type user struct {
	l1.Entry
	name string
}

// TestSlotsKeepTheirOwn proves that a Slot reads back only what it stored:
// an entry of another Slot under the same hash, even of the same type, or
// one that Cache.Fill stored, is a miss; and that Evict reaches every
// Slot's entries.
func TestSlotsKeepTheirOwn(t *testing.T) {
	c := newCache(t, l1.Config{})
	a, err := l1.NewSlot[user](c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := l1.NewSlot[user](c)
	if err != nil {
		t.Fatal(err)
	}
	const h = 7
	if !a.Fill(h, &user{name: "alice"}, 8, time.Hour, c.Ticket(h)) {
		t.Fatal("Fill of a fresh ticket = false")
	}
	c.Wait()
	if u, ok := a.Get(h); !ok || u.name != "alice" {
		t.Fatalf("a.Get = %+v, %v; want alice", u, ok)
	}
	if u, ok := b.Get(h); ok {
		t.Fatalf("another Slot read a's entry: %+v", u)
	}
	if v, ok := c.Get(h); ok {
		t.Fatalf("Cache.Get read a Slot's entry: %v", v)
	}
	if u, ok := a.GetHeld(h, time.Hour); !ok || u.name != "alice" {
		t.Fatalf("a.GetHeld = %+v, %v; want alice", u, ok)
	}
	if _, ok := b.GetHeld(h, time.Hour); ok {
		t.Fatal("another Slot's GetHeld read a's entry")
	}
	fill(t, c, h, "boxed") // Cache.Fill replaces a's entry
	if _, ok := a.Get(h); ok {
		t.Fatal("a read the entry Cache.Fill stored")
	}
	mustGet(t, c, h, "boxed")
	if !a.Fill(h, &user{name: "bob"}, 8, time.Hour, c.Ticket(h)) {
		t.Fatal("Fill of a fresh ticket = false")
	}
	c.Wait()
	c.Evict(h)
	if _, ok := a.Get(h); ok {
		t.Fatal("a Slot's entry served after Evict")
	}
}

// TestSlotFlagsAreTheCallers proves that an entry's Flags are left to the
// caller: Fill keeps them, and they change atomically.
func TestSlotFlagsAreTheCallers(t *testing.T) {
	c := newCache(t, l1.Config{})
	s, err := l1.NewSlot[user](c)
	if err != nil {
		t.Fatal(err)
	}
	u := &user{name: "carol"}
	u.Flags.Store(1)
	if !s.Fill(3, u, 8, time.Hour, c.Ticket(3)) {
		t.Fatal("Fill of a fresh ticket = false")
	}
	c.Wait()
	got, ok := s.Get(3)
	if !ok || got != u {
		t.Fatalf("Get = %p, %v; want the entry filled, %p", got, ok, u)
	}
	if f := got.Flags.Load(); f != 1 {
		t.Fatalf("Flags after Fill = %d; want 1", f)
	}
	if old := got.Flags.Or(2); old != 1 || u.Flags.Load() != 3 {
		t.Fatalf("Flags.Or(2) = %d, then %d; want 1, then 3", old, u.Flags.Load())
	}
}

// TestNewSlotRefusesOtherTypes proves that NewSlot takes only a struct that
// begins with an embedded Entry, the layout its reads rely on.
func TestNewSlotRefusesOtherTypes(t *testing.T) {
	c := newCache(t, l1.Config{})
	type second struct {
		name string
		l1.Entry
	}
	type named struct {
		e    l1.Entry
		name string
	}
	type pointer struct {
		*l1.Entry
	}
	for name, newSlot := range map[string]func() error{
		"string":         func() error { _, err := l1.NewSlot[string](c); return err },
		"empty struct":   func() error { _, err := l1.NewSlot[struct{}](c); return err },
		"Entry second":   func() error { _, err := l1.NewSlot[second](c); return err },
		"Entry named":    func() error { _, err := l1.NewSlot[named](c); return err },
		"*Entry":         func() error { _, err := l1.NewSlot[pointer](c); return err },
		"pointer to one": func() error { _, err := l1.NewSlot[*user](c); return err },
	} {
		if err := newSlot(); !errors.Is(err, l1.ErrSlotType) {
			t.Errorf("NewSlot of %s: %v; want ErrSlotType", name, err)
		}
	}
	if _, err := l1.NewSlot[user](c); err != nil {
		t.Fatalf("NewSlot of a struct that begins with an Entry: %v", err)
	}
}
