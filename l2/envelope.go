package l2

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// EnvelopeVersion is the format version of envelopes this package writes.
const EnvelopeVersion = 1

// ErrCorrupt reports stored bytes that are not a valid envelope of this
// format version: garbage, truncation, or another version.
var ErrCorrupt = errors.New("l2: corrupt or foreign envelope")

// Envelope is a stored value with the metadata needed to trust it.
type Envelope struct {
	// Key is the full user key, checked on read so that a hash collision of
	// long keys is a miss.
	Key string
	// Data is the value as its codec encoded it.
	Data []byte
}

type wireEnvelope struct {
	_       struct{} `cbor:",toarray"`
	Version uint64
	// Key is a byte string, not a text string: user keys may be any bytes,
	// and CBOR text must be valid UTF-8.
	Key  []byte
	Data []byte
}

var envEnc cbor.EncMode

func init() {
	var err error
	if envEnc, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err) // static options; cannot fail
	}
}

// EncodeEnvelope returns the stored form of data under key.
func EncodeEnvelope(key string, data []byte) ([]byte, error) {
	b, err := envEnc.Marshal(wireEnvelope{Version: EnvelopeVersion, Key: []byte(key), Data: data})
	if err != nil {
		return nil, fmt.Errorf("l2 envelope: %w", err)
	}
	return b, nil
}

// DecodeEnvelope parses stored bytes. Any error wraps ErrCorrupt. It never
// panics, whatever the input. Data shares b's memory.
func DecodeEnvelope(b []byte) (Envelope, error) {
	key, data, err := SplitEnvelope(b)
	if err != nil {
		return Envelope{}, err
	}
	return Envelope{Key: string(key), Data: data}, nil
}

// SplitEnvelope is DecodeEnvelope without a copy: key and data share b's
// memory. It reads the one shape EncodeEnvelope writes, a CBOR array of
// the version and two definite-length byte strings (or null), and nothing
// after it.
func SplitEnvelope(b []byte) (key, data []byte, err error) {
	if len(b) == 0 || b[0] != 0x83 {
		return nil, nil, fmt.Errorf("%w: not an array of 3", ErrCorrupt)
	}
	version, rest, ok := cborHead(b[1:], 0)
	if !ok {
		return nil, nil, fmt.Errorf("%w: version", ErrCorrupt)
	}
	if version != EnvelopeVersion {
		return nil, nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, version, EnvelopeVersion)
	}
	if key, rest, ok = cborBytes(rest); !ok {
		return nil, nil, fmt.Errorf("%w: key", ErrCorrupt)
	}
	if data, rest, ok = cborBytes(rest); !ok {
		return nil, nil, fmt.Errorf("%w: data", ErrCorrupt)
	}
	if len(rest) != 0 {
		return nil, nil, fmt.Errorf("%w: %d bytes after the envelope", ErrCorrupt, len(rest))
	}
	return key, data, nil
}

// cborHead reads the head of a CBOR item of major type major with a
// definite argument, and returns the argument.
func cborHead(b []byte, major byte) (uint64, []byte, bool) {
	if len(b) == 0 || b[0]>>5 != major {
		return 0, b, false
	}
	info := b[0] & 0x1f
	b = b[1:]
	var n int
	switch {
	case info < 24:
		return uint64(info), b, true
	case info == 24:
		n = 1
	case info == 25:
		n = 2
	case info == 26:
		n = 4
	case info == 27:
		n = 8
	default:
		return 0, b, false // reserved, or an indefinite length
	}
	if len(b) < n {
		return 0, b, false
	}
	var v uint64
	for _, c := range b[:n] {
		v = v<<8 | uint64(c)
	}
	return v, b[n:], true
}

// cborBytes reads a definite-length CBOR byte string, or null (how nil
// data is encoded) as nil.
func cborBytes(b []byte) ([]byte, []byte, bool) {
	if len(b) > 0 && b[0] == 0xf6 {
		return nil, b[1:], true
	}
	n, rest, ok := cborHead(b, 2)
	if !ok || n > uint64(len(rest)) {
		return nil, b, false
	}
	return rest[:n], rest[n:], true
}
