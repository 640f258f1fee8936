package l2

import (
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// RawKeyMax is the longest user key, in bytes, that appears verbatim in a
// Redis key name; longer keys are replaced by their 128-bit hash.
const RawKeyMax = 128

// Keys names the Redis keys of one cached key.
type Keys struct {
	// Value holds the envelope.
	Value string
	// Flag holds the token of the fill in progress, if any.
	Flag string
	// Meta is where a value written by an earlier version of this package
	// keeps its groups: a Redis list of the marker "1", then name, stamp,
	// name, stamp... Values now carry them in their header (ParseStored);
	// the read script still consults Meta for a value without one, and
	// every change deletes it with the value.
	Meta string
}

// KeysFor returns the Redis keys of key in namespace under prefix. The
// mapping is injective in (namespace, key) for raw keys, and collision
// resistant (128 bits) for keys longer than RawKeyMax. The prefix must not
// contain '{' or '}'.
func KeysFor(prefix, namespace, key string) Keys {
	// One string holds the three names, which differ in one letter.
	var (
		w   strings.Builder
		buf [32]byte
	)
	hash := keyHash(buf[:0], key)
	w.Grow(3 * keyLen(prefix, namespace, key))
	writeKey(&w, prefix, 'v', namespace, key, hash)
	l := w.Len()
	writeKey(&w, prefix, 'f', namespace, key, hash)
	writeKey(&w, prefix, 'm', namespace, key, hash)
	all := w.String()
	return Keys{Value: all[:l], Flag: all[l : 2*l], Meta: all[2*l:]}
}

// ValueKey returns KeysFor(prefix, namespace, key).Value alone.
func ValueKey(prefix, namespace, key string) string {
	var (
		w   strings.Builder
		buf [32]byte
	)
	w.Grow(keyLen(prefix, namespace, key))
	writeKey(&w, prefix, 'v', namespace, key, keyHash(buf[:0], key))
	return w.String()
}

// keyHash appends to b, and returns, the hex hash that names a key longer
// than RawKeyMax; nil for a shorter key, named as it is.
func keyHash(b []byte, key string) []byte {
	if len(key) <= RawKeyMax {
		return nil
	}
	return appendHash128(b, key)
}

// keyLen bounds the length of a key's name.
func keyLen(prefix, namespace, key string) int {
	// body = "{" len(ns) ":" ns ":" marker key-or-hash "}"
	n := len(prefix) + 3 + 1 + 20 + 1 + len(namespace) + 2 + 32 + 1
	if len(key) <= RawKeyMax {
		n += len(key)
	}
	return n
}

// writeKey writes the name of key's Redis key of kind ('v', 'f', 'm') in
// namespace; hash is keyHash's for key.
func writeKey(w *strings.Builder, prefix string, kind byte, namespace, key string, hash []byte) {
	var buf [20]byte
	w.WriteString(prefix)
	w.WriteByte(':')
	w.WriteByte(kind)
	w.WriteString(":{")
	w.Write(strconv.AppendInt(buf[:0], int64(len(namespace)), 10))
	w.WriteByte(':')
	w.WriteString(namespace)
	w.WriteByte(':')
	if hash == nil {
		w.WriteByte('=')
		w.WriteString(key)
	} else {
		w.WriteByte('#')
		w.Write(hash)
	}
	w.WriteByte('}')
}

// GroupKey returns the name of group's stamp under prefix:
// "<prefix>:g:{<len(group)>:<group>}". The scripts build the same name in
// Lua; keep the two in step.
func GroupKey(prefix, group string) string {
	return prefix + ":g:{" + strconv.Itoa(len(group)) + ":" + group + "}"
}

// appendHash128 appends 32 hex digits of two independent 64-bit xxhash sums.
func appendHash128(b []byte, key string) []byte {
	var sum [16]byte
	d := xxhash.NewWithSeed(0)
	_, _ = d.WriteString(key)
	putUint64(sum[:8], d.Sum64())
	d.ResetWithSeed(0x9e3779b97f4a7c15)
	_, _ = d.WriteString(key)
	putUint64(sum[8:], d.Sum64())
	return hex.AppendEncode(b, sum[:])
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
}
