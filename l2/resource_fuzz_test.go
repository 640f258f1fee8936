package l2_test

import (
	"errors"
	"testing"

	"github.com/tiercache/tiercache/l2"
)

// FuzzResourceMeta proves ParseResourceMeta never panics, reports every
// failure as ErrBadResourceMeta, and that what it accepts Encode writes
// back unchanged. Seeds: testdata/fuzz/FuzzResourceMeta.
func FuzzResourceMeta(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		m, err := l2.ParseResourceMeta(s)
		if err != nil {
			if !errors.Is(err, l2.ErrBadResourceMeta) {
				t.Fatalf("ParseResourceMeta(%q) error %v does not wrap ErrBadResourceMeta", s, err)
			}
			return
		}
		again, err := l2.ParseResourceMeta(m.Encode())
		if err != nil || again != m {
			t.Fatalf("ParseResourceMeta(%q) = %+v; its encoding %q parses as %+v, %v", s, m, m.Encode(), again, err)
		}
	})
}
