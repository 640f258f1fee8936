package l2_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tiercache/tiercache/l2"
)

// parsed is what ParseValueKey returns.
type parsed struct {
	NS, Key    string
	Hashed, OK bool
}

func parse(prefix, name string) parsed {
	ns, key, hashed, ok := l2.ParseValueKey(prefix, name)
	return parsed{ns, key, hashed, ok}
}

// TestParseValueKey_RoundTrip proves that ParseValueKey inverts KeysFor's
// value name for raw keys, whatever bytes the prefix, namespace and key
// hold.
func TestParseValueKey_RoundTrip(t *testing.T) {
	prefixes := []string{"tc", "", "app:v", "t*c?[x]\\", ":v:"}
	tests := []struct{ ns, key string }{
		{"ns", "k"},
		{"users", "42"},
		{"", ""},
		{"", "k"},
		{"ns", ""},
		{"a:b", "c:d"},
		{"a", "b:c"},
		{"a:=b", "c"},
		{"a", "=b"},
		{"{", "}"},
		{"}{", "{}"},
		{"ns}", "k}"},
		{"#", "#0123456789abcdef0123456789abcdef"},
		{"12", "3:4"},
		{"1:a:=b}", "x"},
		{"\x00", "\x00\x00"},
		{"ns\x00:=", "\xff\xfe"},
		{"*?[]\\", "*?[]\\"},
		{strings.Repeat("n", 1024), "k"},
		{"ns", strings.Repeat("k", l2.RawKeyMax)},
		{"ns", strings.Repeat("}", l2.RawKeyMax)},
	}
	for _, prefix := range prefixes {
		for _, tc := range tests {
			name := l2.KeysFor(prefix, tc.ns, tc.key).Value
			want := parsed{tc.ns, tc.key, false, true}
			if got := parse(prefix, name); got != want {
				t.Errorf("ParseValueKey(%q, %q) = %+v, want %+v", prefix, name, got, want)
			}
		}
	}
}

// TestParseValueKey_Hashed proves that a long key's name parses to its
// namespace with hashed set, and that the envelope then gives the key.
func TestParseValueKey_Hashed(t *testing.T) {
	for _, tc := range []struct{ ns, key string }{
		{"ns", strings.Repeat("k", l2.RawKeyMax+1)},
		{"a:b", strings.Repeat("x", 200)},
		{"{}", strings.Repeat("=", 1<<16)},
		{"", strings.Repeat("#", 300)},
	} {
		name := l2.KeysFor("tc", tc.ns, tc.key).Value
		if got, want := parse("tc", name), (parsed{tc.ns, "", true, true}); got != want {
			t.Errorf("ParseValueKey(%q) = %+v, want %+v", name, got, want)
		}
	}
}

// TestParseValueKey_Rejects proves that no other name parses: the other
// names the library writes under the prefix, other prefixes' names, and
// every near miss of the layout.
func TestParseValueKey_Rejects(t *testing.T) {
	k := l2.KeysFor("tc", "ns", "k")
	long := l2.KeysFor("tc", "ns", strings.Repeat("k", 200)).Value
	hash := long[len(long)-33 : len(long)-1]
	tests := []struct{ why, name string }{
		{"flag", k.Flag},
		{"meta", k.Meta},
		{"hashed flag", strings.Replace(long, ":v:", ":f:", 1)},
		{"group stamp", l2.GroupKey("tc", "g")},
		{"group stamp shaped like a value", l2.GroupKey("tc", "2:ns:=k")},
		{"bus sequence", "tc:seq"},
		{"group sequence", "tc:gseq"},
		{"fleet epoch", "tc:epoch"},
		{"bus channel", "tc:bus"},
		{"empty", ""},
		{"prefix only", "tc"},
		{"value head only", "tc:v:{"},
		{"other prefix", l2.KeysFor("tc2", "ns", "k").Value},
		{"prefix extended", l2.KeysFor("tc:x", "ns", "k").Value},
		{"shorter prefix", l2.KeysFor("t", "ns", "k").Value},
		{"no length", "tc:v:{:ns:=k}"},
		{"leading zero", "tc:v:{02:ns:=k}"},
		{"zero spelled 00", "tc:v:{00::=k}"},
		{"signed length", "tc:v:{+2:ns:=k}"},
		{"negative length", "tc:v:{-2:ns:=k}"},
		{"length too short", "tc:v:{1:ns:=k}"},
		{"length too long", "tc:v:{3:ns:=k}"},
		{"length past the end", "tc:v:{99:ns:=k}"},
		{"huge length", "tc:v:{99999999999999999999:ns:=k}"},
		{"no colon after length", "tc:v:{2ns:=k}"},
		{"no colon after namespace", "tc:v:{2:ns=k}"},
		{"no marker", "tc:v:{2:ns:k}"},
		{"unknown marker", "tc:v:{2:ns:~k}"},
		{"no closing brace", "tc:v:{2:ns:=k"},
		{"trailing byte", "tc:v:{2:ns:=k}x"},
		{"no opening brace", "tc:v:2:ns:=k}"},
		{"raw key too long", "tc:v:{2:ns:=" + strings.Repeat("k", l2.RawKeyMax+1) + "}"},
		{"short hash", "tc:v:{2:ns:#" + hash[:31] + "}"},
		{"long hash", "tc:v:{2:ns:#" + hash + "0}"},
		{"upper-case hash", "tc:v:{2:ns:#" + strings.ToUpper(strings.Repeat("ab", 16)) + "}"},
		{"non-hex hash", "tc:v:{2:ns:#" + strings.Repeat("g", 32) + "}"},
		{"empty hash", "tc:v:{2:ns:#}"},
	}
	for _, tc := range tests {
		if got := parse("tc", tc.name); got != (parsed{}) {
			t.Errorf("%s: ParseValueKey(%q) = %+v, want all zero", tc.why, tc.name, got)
		}
	}
}

// TestParseValueKey_NoAlloc proves the documented cost.
func TestParseValueKey_NoAlloc(t *testing.T) {
	name := l2.KeysFor("tc", "users", "42").Value
	if n := testing.AllocsPerRun(100, func() { l2.ParseValueKey("tc", name) }); n != 0 {
		t.Fatalf("ParseValueKey allocates %v times", n)
	}
}

// TestValueKeyPattern_Layout pins the glob and its escapes.
func TestValueKeyPattern_Layout(t *testing.T) {
	tests := []struct{ prefix, ns, want string }{
		{"tc", "users", "tc:v:{5:users:[=#]*}"},
		{"tc", "", "tc:v:{0::[=#]*}"},
		{"tc", "a*", `tc:v:{2:a\*:[=#]*}`},
		{"t?c", "[a]", `t\?c:v:{3:\[a\]:[=#]*}`},
		{`t\`, `a\`, `t\\:v:{2:a\\:[=#]*}`},
		{"tc", "{a}^-", "tc:v:{5:{a}^-:[=#]*}"},
	}
	for _, tc := range tests {
		if got := l2.ValueKeyPattern(tc.prefix, tc.ns); got != tc.want {
			t.Errorf("ValueKeyPattern(%q, %q) = %q, want %q", tc.prefix, tc.ns, got, tc.want)
		}
	}
	if got, want := l2.ValuePrefixPattern("t*c"), `t\*c:v:{*}`; got != want {
		t.Errorf("ValuePrefixPattern = %q, want %q", got, want)
	}
}

// scanAll returns every name SCAN MATCH match returns, sorted and without
// repeats.
func scanAll(t *testing.T, f *fixture, match string) []string {
	t.Helper()
	var names []string
	var cursor uint64
	for {
		page, next, err := f.rdb.Scan(t.Context(), cursor, match, 512).Result()
		if err != nil {
			t.Fatalf("SCAN MATCH %q: %v", match, err)
		}
		names = append(names, page...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// TestValueKeyPattern_Redis proves, against Redis's own matcher, that SCAN
// MATCH ValueKeyPattern(prefix, ns) returns exactly the value names of ns:
// not those of namespaces that extend it, that it extends, or that differ
// only where a glob would match loosely, nor any other name the library
// writes; and that ValuePrefixPattern returns every value name and nothing
// else.
func TestValueKeyPattern_Redis(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	namespaces := []string{"a", "a*", "a:b", "[a]", "a\\", "b", "aa", "?", "*", "a:", ":a", "1:a", "{a}", "a\x00"}
	keys := []string{"k", "=", "#", "x:y", "}", "{", strings.Repeat("l", 200)}
	for _, prefix := range []string{"tc", "t*c?[x]\\", "tc2"} {
		t.Run(strconv.Quote(prefix), func(t *testing.T) {
			f.srv.Flush()
			want := map[string][]string{}
			var all []string
			pipe := f.rdb.Pipeline()
			for _, ns := range namespaces {
				for _, key := range keys {
					k := l2.KeysFor(prefix, ns, key)
					env, err := l2.EncodeEnvelope(key, []byte("v"))
					if err != nil {
						t.Fatal(err)
					}
					pipe.Set(ctx, k.Value, env, 0)
					pipe.Set(ctx, k.Flag, "token", 0)
					pipe.RPush(ctx, k.Meta, "g", "1:t")
					want[ns] = append(want[ns], k.Value)
					all = append(all, k.Value)
				}
				pipe.Set(ctx, l2.GroupKey(prefix, ns), "1:t", 0)
			}
			// The bus's names, and value names of prefixes that extend or
			// are extended by this one.
			for _, name := range []string{prefix + ":seq", prefix + ":gseq", prefix + ":epoch"} {
				pipe.Set(ctx, name, "1", 0)
			}
			for _, other := range []string{prefix + "x", prefix[:len(prefix)-1], prefix + ":v"} {
				for _, ns := range namespaces {
					pipe.Set(ctx, l2.KeysFor(other, ns, "k").Value, "v", 0)
				}
			}
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
			for _, ns := range namespaces {
				got := scanAll(t, f, l2.ValueKeyPattern(prefix, ns))
				slices.Sort(want[ns])
				if diff := cmp.Diff(want[ns], got); diff != "" {
					t.Errorf("SCAN MATCH ValueKeyPattern(%q, %q) mismatch (-want +got):\n%s", prefix, ns, diff)
				}
				for _, name := range got {
					if p := parse(prefix, name); !p.OK || p.NS != ns {
						t.Errorf("matched %q parses to %+v", name, p)
					}
				}
			}
			slices.Sort(all)
			if diff := cmp.Diff(all, scanAll(t, f, l2.ValuePrefixPattern(prefix))); diff != "" {
				t.Errorf("SCAN MATCH ValuePrefixPattern(%q) mismatch (-want +got):\n%s", prefix, diff)
			}
		})
	}
}

// FuzzParseValueKey proves that ParseValueKey inverts KeysFor's value name,
// raw and hashed, and that whatever name it accepts is one KeysFor returns:
// it never panics, and parsing is exact both ways.
// Seeds: testdata/fuzz/FuzzParseValueKey.
func FuzzParseValueKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, ns, key, name string) {
		for _, prefix := range []string{"tc", ""} {
			k := l2.KeysFor(prefix, ns, key)
			want := parsed{ns, key, false, true}
			if len(key) > l2.RawKeyMax {
				want = parsed{ns, "", true, true}
			}
			if got := parse(prefix, k.Value); got != want {
				t.Fatalf("ParseValueKey(%q, KeysFor(%q, %q).Value = %q) = %+v, want %+v", prefix, ns, key, k.Value, got, want)
			}
			for _, other := range []string{k.Flag, k.Meta, l2.GroupKey(prefix, ns)} {
				if got := parse(prefix, other); got != (parsed{}) {
					t.Fatalf("ParseValueKey(%q, %q) = %+v, want all zero", prefix, other, got)
				}
			}
			p := parse(prefix, name)
			switch {
			case !p.OK:
				if p != (parsed{}) {
					t.Fatalf("ParseValueKey(%q, %q) = %+v: not ok but not zero", prefix, name, p)
				}
			case !p.Hashed:
				if back := l2.KeysFor(prefix, p.NS, p.Key).Value; back != name {
					t.Fatalf("ParseValueKey(%q, %q) = %+v, but KeysFor gives %q", prefix, name, p, back)
				}
			default:
				// The hash cannot be inverted; the rest of the name must be
				// what KeysFor writes around a hash.
				if len(name) < 34 {
					t.Fatalf("ParseValueKey(%q, %q) = %+v: too short for a hash", prefix, name, p)
				}
				hash := name[len(name)-33 : len(name)-1]
				back := prefix + ":v:{" + strconv.Itoa(len(p.NS)) + ":" + p.NS + ":#" + hash + "}"
				if back != name || p.Key != "" || strings.Trim(hash, "0123456789abcdef") != "" {
					t.Fatalf("ParseValueKey(%q, %q) = %+v: not a hashed value name", prefix, name, p)
				}
			}
		}
	})
}
