package l2_test

import (
	"fmt"

	"github.com/tiercache/tiercache/l2"
)

// ExampleKeysFor shows the Redis names of a key: value and flag share the
// hash tag, so they live in one cluster slot.
func ExampleKeysFor() {
	k := l2.KeysFor("tc", "users", "42")
	fmt.Println(k.Value)
	fmt.Println(k.Flag)
	// Output:
	// tc:v:{5:users:=42}
	// tc:f:{5:users:=42}
}

// ExampleDecodeEnvelope shows the envelope round trip and how foreign bytes
// are reported.
func ExampleDecodeEnvelope() {
	b, err := l2.EncodeEnvelope("users:42", []byte(`{"name":"alice"}`))
	if err != nil {
		panic(err)
	}
	e, err := l2.DecodeEnvelope(b)
	fmt.Println(e.Key, string(e.Data), err)

	_, err = l2.DecodeEnvelope([]byte("not an envelope"))
	fmt.Println(err != nil)
	// Output:
	// users:42 {"name":"alice"} <nil>
	// true
}
