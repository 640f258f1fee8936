package l2_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/l2"
)

// checkSameHashTag fails unless k's value and flag names are prefix+":v:"
// and prefix+":f:" followed by the same text from the first '{' on, so that
// Redis Cluster hashes both to the same slot (R28).
func checkSameHashTag(t testing.TB, prefix string, k l2.Keys) {
	t.Helper()
	iv, ifl := strings.IndexByte(k.Value, '{'), strings.IndexByte(k.Flag, '{')
	if iv < 0 || ifl < 0 {
		t.Fatalf("no '{' in %q / %q", k.Value, k.Flag)
	}
	if got, want := k.Value[:iv], prefix+":v:"; got != want {
		t.Fatalf("value name %q: text before '{' is %q, want %q", k.Value, got, want)
	}
	if got, want := k.Flag[:ifl], prefix+":f:"; got != want {
		t.Fatalf("flag name %q: text before '{' is %q, want %q", k.Flag, got, want)
	}
	if k.Value[iv:] != k.Flag[ifl:] {
		t.Fatalf("value and flag differ after the first '{':\n value %q\n flag  %q", k.Value, k.Flag)
	}
	if !strings.HasSuffix(k.Value, "}") {
		t.Fatalf("value name %q does not end the hash tag with '}'", k.Value)
	}
}

// TestKeysFor_Layout proves the documented name layout on plain inputs.
func TestKeysFor_Layout(t *testing.T) {
	tests := []struct {
		prefix, ns, key string
		want            l2.Keys
	}{
		{"tc", "ns", "k", l2.Keys{Value: "tc:v:{2:ns:=k}", Flag: "tc:f:{2:ns:=k}", Meta: "tc:m:{2:ns:=k}"}},
		{"tc", "", "", l2.Keys{Value: "tc:v:{0::=}", Flag: "tc:f:{0::=}", Meta: "tc:m:{0::=}"}},
		{"app", "users", "42", l2.Keys{Value: "app:v:{5:users:=42}", Flag: "app:f:{5:users:=42}", Meta: "app:m:{5:users:=42}"}},
		{"", "a", "b", l2.Keys{Value: ":v:{1:a:=b}", Flag: ":f:{1:a:=b}", Meta: ":m:{1:a:=b}"}},
	}
	for _, tc := range tests {
		got := l2.KeysFor(tc.prefix, tc.ns, tc.key)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("KeysFor(%q, %q, %q) mismatch (-want +got):\n%s", tc.prefix, tc.ns, tc.key, diff)
		}
	}
}

// longKey returns a key of n bytes whose last byte is last.
func longKey(n int, last byte) string {
	b := []byte(strings.Repeat("k", n))
	b[n-1] = last
	return string(b)
}

// hashOf returns the "#<hash>" part of a hashed long key's value name.
func hashOf(t testing.TB, k l2.Keys) string {
	t.Helper()
	i := strings.LastIndexByte(k.Value, '#')
	if i < 0 {
		t.Fatalf("%q is not a hashed name", k.Value)
	}
	return k.Value[i : len(k.Value)-1]
}

// TestKeysFor_Injective proves tricky distinct (namespace, key) pairs all
// get distinct value and flag names, and that every value and flag pair
// shares its hash tag.
func TestKeysFor_Injective(t *testing.T) {
	const prefix = "tc"
	mib := strings.Repeat("m", 1<<20)
	raw := strings.Repeat("r", l2.RawKeyMax)
	pairs := []struct{ ns, key string }{
		// Separator shifting between namespace and key.
		{"a", "b:c"}, {"a:b", "c"}, {"a:", "b:c"}, {"a", ":b:c"},
		{"", "a"}, {"a", ""}, {"", ""}, {"", ":"}, {":", ""},
		// Forging the length prefix or the marker.
		{"1:a", ""}, {"1", "a"}, {"a", "=b"}, {"a=", "b"}, {"a:=b", ""}, {"a", "b:="},
		{"a:=", "b"}, {"a", ":=b"}, {"a:=b:=", "c"}, {"a", "b:=:=c"},
		{"2:ab", "c"}, {"ab", "c"}, {"a", "b}"}, {"a}", "b"},
		// Cluster braces, NUL, markers.
		{"ns", "{"}, {"ns", "}"}, {"ns", "{}"}, {"ns{", "}"}, {"ns}", "{"},
		{"ns", "\x00"}, {"ns\x00", ""}, {"ns", "\x00\x00"}, {"n\x00s", "k"},
		{"ns", "="}, {"ns", "#"}, {"ns", "=="}, {"ns", "#="},
		{"ns", "\xff\xfe"}, {"ns", "k\r\n"},
		// Around RawKeyMax: raw, hashed, and a raw key spelling a hash.
		{"ns", raw}, {"ns", raw + "r"}, {"ns", raw[:l2.RawKeyMax-1]},
		{"ns", longKey(l2.RawKeyMax+1, 's')}, {"ns2", raw + "r"},
		{"ns", mib}, {"ns", longKey(1<<20, 'x')}, {"", mib}, {"ns", mib + "m"},
		// Namespaces with multi-digit lengths.
		{strings.Repeat("n", 10), "k"}, {strings.Repeat("n", 1), "0:" + strings.Repeat("n", 9) + ":=k"},
	}
	// A raw key whose text is exactly the "#<hash>" of a hashed key.
	forged := hashOf(t, l2.KeysFor(prefix, "ns", raw+"r"))
	pairs = append(pairs, struct{ ns, key string }{"ns", forged})
	pairs = append(pairs, struct{ ns, key string }{"ns", forged[1:]})

	seen := map[string]int{}
	for i, p := range pairs {
		k := l2.KeysFor(prefix, p.ns, p.key)
		checkSameHashTag(t, prefix, k)
		for _, name := range []string{k.Value, k.Flag} {
			if j, dup := seen[name]; dup && j != i {
				t.Errorf("pairs %d and %d share the name %.80q:\n (%.40q, %.40q)\n (%.40q, %.40q)",
					j, i, name, pairs[j].ns, pairs[j].key, p.ns, p.key)
			}
			seen[name] = i
		}
	}
	// Sanity: the table itself has no duplicate pairs.
	type pair struct{ ns, key string }
	uniq := map[pair]bool{}
	for _, p := range pairs {
		if uniq[pair(p)] {
			t.Fatalf("test table repeats (%.40q, %.40q)", p.ns, p.key)
		}
		uniq[pair(p)] = true
	}
	if len(seen) != 2*len(pairs) {
		t.Errorf("%d names for %d pairs; want %d", len(seen), len(pairs), 2*len(pairs))
	}
}

// TestKeysFor_ValueAndFlagShareHashTag proves R28: the value and the flag
// of any key have the same text after the first '{' and differ only in the
// kind letter, whatever braces the namespace or key hold.
func TestKeysFor_ValueAndFlagShareHashTag(t *testing.T) {
	for _, prefix := range []string{"tc", "", "my:app"} {
		for _, p := range []struct{ ns, key string }{
			{"ns", "k"}, {"", ""}, {"{", "}"}, {"}", "{"}, {"ns", "{x}"},
			{"ns", strings.Repeat("}", l2.RawKeyMax)}, {"ns", strings.Repeat("{", l2.RawKeyMax+1)},
		} {
			k := l2.KeysFor(prefix, p.ns, p.key)
			checkSameHashTag(t, prefix, k)
			if len(k.Value) != len(k.Flag) {
				t.Fatalf("len(Value) = %d, len(Flag) = %d", len(k.Value), len(k.Flag))
			}
			var diffs []int
			for i := range len(k.Value) {
				if k.Value[i] != k.Flag[i] {
					diffs = append(diffs, i)
				}
			}
			if want := []int{len(prefix) + 1}; !cmp.Equal(diffs, want) {
				t.Errorf("KeysFor(%q, %q, %q): names differ at %v, want only at %v (the kind letter)", prefix, p.ns, p.key, diffs, want)
			}
		}
	}
}

// TestKeysFor_LongKeysHashed proves keys up to RawKeyMax bytes appear
// verbatim, longer ones are replaced by a 32-hex-digit hash so the name
// length is bounded, and the hash depends on every byte.
func TestKeysFor_LongKeysHashed(t *testing.T) {
	const prefix, ns = "tc", "ns"
	// hashedLen is the length of a hashed name: prefix ":v:{" len ":" ns ":#" hash "}".
	hashedLen := len(prefix) + len(":v:{") + len(strconv.Itoa(len(ns))) + 1 + len(ns) + 2 + 32 + 1

	raw := strings.Repeat("x", l2.RawKeyMax)
	if k := l2.KeysFor(prefix, ns, raw); !strings.HasSuffix(k.Value, ":="+raw+"}") {
		t.Errorf("a key of RawKeyMax bytes is not verbatim: %q", k.Value)
	}
	for _, n := range []int{l2.RawKeyMax + 1, 1000, 1 << 20} {
		k := l2.KeysFor(prefix, ns, strings.Repeat("x", n))
		if len(k.Value) != hashedLen || len(k.Flag) != hashedLen {
			t.Errorf("key of %d bytes: name lengths %d, %d; want %d", n, len(k.Value), len(k.Flag), hashedLen)
		}
		h := hashOf(t, k)
		if len(h) != 33 || strings.Trim(h[1:], "0123456789abcdef") != "" {
			t.Errorf("key of %d bytes: hash part %q is not '#' and 32 hex digits", n, h)
		}
	}
	a := l2.KeysFor(prefix, ns, longKey(1<<20, 'a'))
	b := l2.KeysFor(prefix, ns, longKey(1<<20, 'b'))
	c := l2.KeysFor(prefix, ns, "b"+longKey(1<<20, 'a')[1:])
	if a.Value == b.Value || a.Value == c.Value || b.Value == c.Value {
		t.Errorf("1 MiB keys differing in one byte share a name")
	}
	if a2 := l2.KeysFor(prefix, ns, longKey(1<<20, 'a')); a2 != a {
		t.Errorf("KeysFor is not deterministic for long keys")
	}
}

// TestKeysFor_PrefixSeparates proves different prefixes give different
// names for the same key.
func TestKeysFor_PrefixSeparates(t *testing.T) {
	a, b := l2.KeysFor("a", "ns", "k"), l2.KeysFor("b", "ns", "k")
	if a.Value == b.Value || a.Flag == b.Flag {
		t.Fatalf("prefixes a and b collide: %+v %+v", a, b)
	}
}
