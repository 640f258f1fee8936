package pgnotify_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/tiercache/tiercache/pgnotify"
)

// FuzzParsePayload feeds ParsePayload arbitrary bytes, as a NOTIFY from
// any client can: it never panics, an error wraps ErrPayload, and what it
// accepts obeys the format's rules and survives Encode unchanged. The seed
// corpus, valid and invalid payloads, is in testdata/fuzz/FuzzParsePayload.
func FuzzParsePayload(f *testing.F) {
	f.Add([]byte(`{"ns":"products","keys":["42"],"groups":["category:7"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := pgnotify.ParsePayload(b)
		if err != nil {
			if !errors.Is(err, pgnotify.ErrPayload) {
				t.Fatalf("ParsePayload(%q): %v does not wrap ErrPayload", b, err)
			}
			return
		}
		switch {
		case len(b) > pgnotify.MaxPayloadBytes:
			t.Fatalf("accepted %d bytes", len(b))
		case n.Namespace == "" || len(n.Namespace) > pgnotify.MaxNamespaceBytes:
			t.Fatalf("accepted namespace %q", n.Namespace)
		case len(n.Keys) == 0 && len(n.Groups) == 0 && !n.All:
			t.Fatalf("accepted %q, which names nothing", b)
		}
		for _, k := range n.Keys {
			if k == "" {
				t.Fatalf("accepted an empty key in %q", b)
			}
		}
		for _, g := range n.Groups {
			if g == "" || len(g) > pgnotify.MaxGroupBytes || g[0] == 0 {
				t.Fatalf("accepted group %q", g)
			}
		}
		enc, err := n.Encode()
		if err != nil {
			t.Fatalf("Encode(%#v) of a parsed payload: %v", n, err)
		}
		again, err := pgnotify.ParsePayload(enc)
		if err != nil || !reflect.DeepEqual(again, n) {
			t.Fatalf("ParsePayload(Encode(%#v)) = %#v, %v", n, again, err)
		}
	})
}
