package l1_test

import (
	"fmt"
	"time"

	"github.com/tiercache/tiercache/l1"
)

// ExampleCache_Fill shows a fenced fill: take the ticket before reading the
// value, fill with it, and an Evict afterwards hides the entry.
func ExampleCache_Fill() {
	c, err := l1.New(l1.Config{MaxBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	h := l1.Hash(l1.Seed("users"), "42")

	t := c.Ticket(h) // before reading the value from L2 or the source
	c.Fill(h, "alice", 5, time.Minute, t)
	c.Wait() // tests only: apply ristretto's buffered Set
	v, ok := c.Get(h)
	fmt.Println(v, ok)

	c.Evict(h)
	v, ok = c.Get(h)
	fmt.Println(v, ok)
	// Output:
	// alice true
	// <nil> false
}

// ExampleSlot stores values of a type of the caller's that begins with an
// l1.Entry: one allocation an entry, which L1 holds itself.
func ExampleSlot() {
	type user struct {
		l1.Entry
		name string
	}
	c, err := l1.New(l1.Config{MaxBytes: 1 << 20})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	users, err := l1.NewSlot[user](c)
	if err != nil {
		panic(err)
	}
	h := l1.Hash(l1.Seed("users"), "42")

	t := c.Ticket(h) // before reading the value from L2 or the source
	users.Fill(h, &user{name: "alice"}, 64, time.Minute, t)
	c.Wait() // tests only: apply ristretto's buffered Set
	u, ok := users.Get(h)
	fmt.Println(u.name, ok)
	// Output:
	// alice true
}
