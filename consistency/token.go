package consistency

import (
	"crypto/rand"
	"encoding/hex"
)

// TokenLen is the length in bytes of a token returned by [NewToken].
const TokenLen = 32

// NewToken returns a fresh random claim token: 128 bits from crypto/rand,
// hex-encoded. Two claims never share a token, so a fill can tell its own
// claim from a later one of the same key (docs/RACES.md R03, R05).
func NewToken() string {
	var b [16]byte
	// crypto/rand.Read never returns an error on supported platforms (Go 1.24+);
	// it crashes the program irrecoverably instead.
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
