package bus_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/bus"
)

// FuzzDecode proves Decode never panics, reports every failure as
// ErrMalformed, and that whatever it accepts Encode can write again and
// Decode restores unchanged, so a relayed message means what it meant.
// Seeds: testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := bus.Decode(b)
		if err != nil {
			if !errors.Is(err, bus.ErrMalformed) {
				t.Fatalf("Decode(%q) error %v does not wrap ErrMalformed", b, err)
			}
			if m != nil {
				t.Fatalf("Decode(%q) returned a message with its error", b)
			}
			return
		}
		if len(b) > bus.MaxMessageBytes {
			t.Fatalf("Decode accepted %d bytes, over MaxMessageBytes", len(b))
		}
		re, err := m.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded message %+v: %v", m, err)
		}
		if len(re) > len(b) {
			// Encode writes minimal uvarints; Decode may accept padded ones.
			t.Fatalf("re-encoding grew the message from %d to %d bytes", len(b), len(re))
		}
		m2, err := bus.Decode(re)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %v", b, err)
		}
		if !reflect.DeepEqual(m, m2) { // cmp.Diff only to report: it is slow
			t.Fatalf("re-encoding changed the message (-first +second):\n%s", cmp.Diff(m, m2))
		}
	})
}
