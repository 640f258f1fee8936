package consistency_test

import (
	"fmt"

	"github.com/tiercache/tiercache/consistency"
)

// ExampleEpochs shows the fill fence: a ticket taken before a read is
// invalidated by any later bump of its key's stripe.
func ExampleEpochs() {
	e := consistency.NewEpochs(1024)
	const h = 42 // the key's hash

	t := e.Ticket(h) // before reading the value to store
	fmt.Println("before invalidation:", e.Valid(h, t))
	e.Bump(h) // an invalidation of the key arrives
	fmt.Println("after invalidation:", e.Valid(h, t))
	// Output:
	// before invalidation: true
	// after invalidation: false
}

// ExampleNewToken shows that every claim gets its own token.
func ExampleNewToken() {
	a, b := consistency.NewToken(), consistency.NewToken()
	fmt.Println(len(a), a != b)
	// Output: 32 true
}
