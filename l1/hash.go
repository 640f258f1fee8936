package l1

import (
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// Seed returns the hash seed of a namespace, for [Hash].
func Seed(namespace string) uint64 {
	return xxhash.Sum64String(namespace)
}

// Hash returns the L1 key of a key's string form in the namespace whose
// [Seed] is seed. Every node computes the same hash for the same key, so an
// invalidation that names the key evicts the right entry everywhere. Two keys
// may share a hash: callers keep the full key in the entry and treat a
// mismatch as a miss.
func Hash(seed uint64, key string) uint64 {
	return mix(xxhash.Sum64String(key)) ^ seed
}

// HashBytes is Hash for a key held in a byte slice.
func HashBytes(seed uint64, key []byte) uint64 {
	return mix(xxhash.Sum64(key)) ^ seed
}

// mix makes the combination asymmetric: with a plain XOR, key b of
// namespace a and key a of namespace b would share a slot and a stripe, and
// every namespace's key named like itself would hash to zero.
func mix(h uint64) uint64 {
	return bits.RotateLeft64(h*0x9e3779b97f4a7c15, 31)
}
