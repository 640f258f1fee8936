package consistency_test

import (
	"testing"

	"github.com/tiercache/tiercache/consistency"
)

// TestNewToken_Format proves a token is TokenLen lowercase hex characters.
func TestNewToken_Format(t *testing.T) {
	for range 100 {
		tok := consistency.NewToken()
		if len(tok) != consistency.TokenLen {
			t.Fatalf("len(NewToken()) = %d (%q), want %d", len(tok), tok, consistency.TokenLen)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				t.Fatalf("NewToken() = %q: byte %d is %q, not lowercase hex", tok, i, c)
			}
		}
	}
}

// TestNewToken_Unique proves 10,000 tokens are pairwise distinct (R03, R05
// rely on no two claims sharing a token).
func TestNewToken_Unique(t *testing.T) {
	const n = 10_000
	seen := make(map[string]int, n)
	for i := range n {
		tok := consistency.NewToken()
		if j, dup := seen[tok]; dup {
			t.Fatalf("token %d equals token %d: %q", i, j, tok)
		}
		seen[tok] = i
	}
}

// TestNewToken_UniqueConcurrent proves tokens drawn from many goroutines at
// once are distinct too (and that NewToken is race-free).
func TestNewToken_UniqueConcurrent(t *testing.T) {
	const workers, each = 8, 1000
	out := make(chan []string, workers)
	for range workers {
		go func() {
			toks := make([]string, each)
			for i := range toks {
				toks[i] = consistency.NewToken()
			}
			out <- toks
		}()
	}
	seen := make(map[string]bool, workers*each)
	for range workers {
		for _, tok := range <-out {
			if seen[tok] {
				t.Fatalf("duplicate token %q", tok)
			}
			seen[tok] = true
		}
	}
}
