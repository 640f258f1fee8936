package tier

import "testing"

// FuzzStructKeyInjective proves the canonical form of a struct key is
// injective: two keys have one form only if they are equal.
func FuzzStructKeyInjective(f *testing.F) {
	f.Add(int64(1), "a", true, uint8(2), int64(1), "a", true, uint8(2))
	f.Add(int64(1), "1:a", false, uint8(0), int64(11), ":a", false, uint8(0))
	f.Add(int64(-1), "", true, uint8(255), int64(1), "-", true, uint8(255))
	type key struct {
		N     int64
		S     string
		B     bool
		Inner struct {
			U uint8
			T string
		}
	}
	kr, err := newKeyer[key]("ns", 1<<20, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, n1 int64, s1 string, b1 bool, u1 uint8, n2 int64, s2 string, b2 bool, u2 uint8) {
		k1, k2 := key{N: n1, S: s1, B: b1}, key{N: n2, S: s2, B: b2}
		k1.Inner.U, k1.Inner.T = u1, s2
		k2.Inner.U, k2.Inner.T = u2, s1
		f1, _ := kr.form(k1)
		f2, _ := kr.form(k2)
		if (f1 == f2) != (k1 == k2) {
			t.Fatalf("keys %+v and %+v: forms %q and %q", k1, k2, f1, f2)
		}
	})
}
