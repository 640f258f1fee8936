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

var (
	envEnc cbor.EncMode
	envDec cbor.DecMode
)

func init() {
	var err error
	if envEnc, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err) // static options; cannot fail
	}
	envDec, err = cbor.DecOptions{
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
	}.DecMode()
	if err != nil {
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
// panics, whatever the input.
func DecodeEnvelope(b []byte) (Envelope, error) {
	var w wireEnvelope
	if err := envDec.Unmarshal(b, &w); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if w.Version != EnvelopeVersion {
		return Envelope{}, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, w.Version, EnvelopeVersion)
	}
	return Envelope{Key: string(w.Key), Data: w.Data}, nil
}
