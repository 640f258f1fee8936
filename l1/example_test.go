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
