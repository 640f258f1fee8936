package tier

import "sync/atomic"

// presence is what a node has seen of which keys Redis holds: one bit per
// bucket of key hashes, set when the node read a key's value from Redis or
// stored one there, cleared when it learns that the key was invalidated.
// A Get that L1 cannot answer reads a key whose bit is set with plain
// commands first (peek: Redis most likely holds it), and any other key
// with the read script at once (a miss most likely: one round trip to
// claim, not two). It is a hint only: a wrong bit costs a round trip,
// never a wrong answer, since peek checks what it reads and leaves
// anything it cannot trust to the script.
type presence struct {
	words []atomic.Uint64
}

// presenceBits is the number of buckets: 2^20 bits, 128 KiB a node.
const presenceBits = 1 << 20

func newPresence() *presence {
	return &presence{words: make([]atomic.Uint64, presenceBits/64)}
}

func (p *presence) word(h uint64) (*atomic.Uint64, uint64) {
	return &p.words[(h>>6)%(presenceBits/64)], 1 << (h & 63)
}

// mark records that Redis holds the key hashed h.
func (p *presence) mark(h uint64) {
	if w, bit := p.word(h); w.Load()&bit == 0 {
		w.Or(bit)
	}
}

// clear records that the key hashed h was invalidated.
func (p *presence) clear(h uint64) {
	if w, bit := p.word(h); w.Load()&bit != 0 {
		w.And(^bit)
	}
}

// has reports whether Redis likely holds the key hashed h.
func (p *presence) has(h uint64) bool {
	w, bit := p.word(h)
	return w.Load()&bit != 0
}
