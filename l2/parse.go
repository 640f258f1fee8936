package l2

import (
	"strconv"
	"strings"
)

// hashHexLen is the length of the hash that replaces a long key in a name.
const hashHexLen = 32

// ParseValueKey is the inverse of KeysFor(prefix, ...).Value: it returns
// the namespace and key that name was built from. For a key longer than
// RawKeyMax the name holds only its hash: ParseValueKey then returns
// hashed=true and key="", and the caller reads the envelope stored under
// name (DecodeEnvelope) for the full key.
//
// ok is false for any name that KeysFor(prefix, ...).Value cannot return:
// the flag, meta and group-stamp names, the bus's names under prefix, the
// names of another prefix, and garbage. The parse is exact: for every
// namespace ns and every key k of at most RawKeyMax bytes,
// ParseValueKey(prefix, KeysFor(prefix, ns, k).Value) is (ns, k, false,
// true), whatever bytes ns and k hold, since the namespace is read by its
// length, not by a separator. It allocates nothing: the strings returned
// share name's memory.
func ParseValueKey(prefix, name string) (namespace, key string, hashed bool, ok bool) {
	kind, namespace, key, hashed, ok := ParseKey(prefix, name)
	if !ok || kind != 'v' {
		return "", "", false, false
	}
	return namespace, key, hashed, true
}

// ParseKey is ParseValueKey for the value, flag and meta names of
// KeysFor: kind is 'v', 'f' or 'm'.
func ParseKey(prefix, name string) (kind byte, namespace, key string, hashed bool, ok bool) {
	// name = prefix ":" kind ":{" len(ns) ":" ns ":" ("=" key | "#" 32 hex) "}"
	rest, found := strings.CutPrefix(name, prefix)
	if !found || len(rest) < 4 || rest[0] != ':' || rest[2] != ':' || rest[3] != '{' {
		return 0, "", "", false, false
	}
	switch kind = rest[1]; kind {
	case 'v', 'f', 'm':
	default:
		return 0, "", "", false, false
	}
	namespace, key, hashed, ok = parseBody(rest[4:])
	if !ok {
		return 0, "", "", false, false
	}
	return kind, namespace, key, hashed, true
}

// parseBody parses what follows "<prefix>:<kind>:{" in a name of KeysFor.
func parseBody(rest string) (namespace, key string, hashed bool, ok bool) {
	// The length, in the form strconv.AppendInt writes: decimal digits, no
	// sign, no leading zero unless it is "0". Any other spelling is not a
	// name KeysFor returns, so accepting it would make two names parse to
	// the same (namespace, key).
	digits := 0
	for digits < len(rest) && rest[digits] >= '0' && rest[digits] <= '9' {
		digits++
	}
	if digits == 0 || digits > 9 || (digits > 1 && rest[0] == '0') {
		return "", "", false, false
	}
	nsLen, err := strconv.Atoi(rest[:digits])
	if err != nil {
		return "", "", false, false
	}
	rest = rest[digits:]
	// ":" ns ":" marker ... "}": at least nsLen+4 bytes.
	if len(rest) < nsLen+4 || rest[0] != ':' || rest[1+nsLen] != ':' || rest[len(rest)-1] != '}' {
		return "", "", false, false
	}
	namespace = rest[1 : 1+nsLen]
	body := rest[2+nsLen : len(rest)-1] // marker and key or hash
	switch body[0] {
	case '=':
		key = body[1:]
		if len(key) > RawKeyMax {
			return "", "", false, false // KeysFor hashes such a key
		}
		return namespace, key, false, true
	case '#':
		if !isLowerHex(body[1:], hashHexLen) {
			return "", "", false, false
		}
		return namespace, "", true, true
	}
	return "", "", false, false
}

// isLowerHex reports whether s is n lower-case hex digits, the form
// hex.AppendEncode writes.
func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ValueKeyPattern returns a Redis glob (for SCAN's MATCH) that matches the
// value names of every key in namespace under prefix, raw and hashed, and
// no other name that KeysFor, GroupKey or the bus write: the namespace is
// matched with its length, so that neither a namespace that extends it
// ("a" and "a:b") nor one that it extends matches, and the glob
// metacharacters * ? [ ] \ of prefix and namespace are escaped. A name that
// someone else wrote may still match (for example "<prefix>:v:{1:a:=}}");
// ParseValueKey tells.
func ValueKeyPattern(prefix, namespace string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(namespace) + 32)
	appendGlobEscaped(&b, prefix)
	b.WriteString(":v:{")
	b.WriteString(strconv.Itoa(len(namespace)))
	b.WriteByte(':')
	appendGlobEscaped(&b, namespace)
	// The marker of a raw key or of a hash, anything, and the closing brace.
	b.WriteString(":[=#]*}")
	return b.String()
}

// appendGlobEscaped writes s to b with a backslash before each byte that is
// special to Redis's glob matcher (stringmatchlen), so that it matches
// itself only.
func appendGlobEscaped(b *strings.Builder, s string) {
	for i := range len(s) {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
}

// ValuePrefixPattern returns a Redis glob (for SCAN's MATCH) that matches
// the value names of every namespace under prefix.
func ValuePrefixPattern(prefix string) string {
	return prefixPattern(prefix, "v")
}

// ValueOrFlagPrefixPattern returns a Redis glob (for SCAN's MATCH) that
// matches the value and flag names of every namespace under prefix.
func ValueOrFlagPrefixPattern(prefix string) string {
	return prefixPattern(prefix, "[vf]")
}

func prefixPattern(prefix, kind string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 12)
	appendGlobEscaped(&b, prefix)
	b.WriteString(":" + kind + ":{*}")
	return b.String()
}
