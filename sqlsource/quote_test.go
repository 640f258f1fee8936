package sqlsource

import (
	"strings"
	"testing"
)

// A quoted name is one token that ends at its last byte and means the name
// exactly: every quote character inside is doubled, so none can end it
// early, and undoubling gives the name back.
func FuzzQuote(f *testing.F) {
	for _, s := range []string{"users", `a"b`, "a`b", `"`, "``", "select", "Key Col", "é", "a\x00b", "", "x ", "🙂", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for _, d := range []Dialect{Postgres, MySQL} {
			q, err := d.quote(name)
			if err != nil {
				continue
			}
			mark := q[:1]
			if mark != map[Dialect]string{Postgres: `"`, MySQL: "`"}[d] || len(q) < 3 || !strings.HasSuffix(q, mark) {
				t.Fatalf("%v: quote(%q) = %q: not one quoted token", d, name, q)
			}
			inner := q[1 : len(q)-1]
			for i := 0; i < len(inner); i++ {
				if inner[i] == mark[0] {
					if i+1 == len(inner) || inner[i+1] != mark[0] {
						t.Fatalf("%v: quote(%q) = %q: a quote character at %d is not doubled, and ends the name", d, name, q, i+1)
					}
					i++
				}
			}
			if got := strings.ReplaceAll(inner, mark+mark, mark); got != name {
				t.Fatalf("%v: quote(%q) = %q, which means %q", d, name, q, got)
			}
		}
	})
}
