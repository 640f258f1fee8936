package bus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Wire format, version 2. All integers are big-endian; lengths are uvarints.
//
//	offset  size  field
//	0       1     magic: 'T' (0x54)
//	1       1     version: 2
//	2       1     kind: 1 keys, 2 flush
//	3       16    origin: the publishing node's random ID
//	19      8     seq: the fleet's message sequence number, set by Redis
//	27      8     sent: Redis's clock when it published the message, in
//	              microseconds since the Unix epoch, set by Redis
//	35      ...   body (kind keys only):
//	              uvarint groups; per group:
//	                uvarint len, namespace bytes
//	                uvarint count; per key: uvarint len, key bytes
//	              uvarint count of invalidated groups; per group:
//	                uvarint len, name bytes
//
// A decoder rejects every other version, kind, or layout, and any message
// over MaxMessageBytes; trailing bytes are an error.
const (
	magic   = 'T'
	version = 2

	// HeadLen is the length of the header before the sequence number.
	HeadLen = 19
	// seqLen is the length of the sequence number.
	seqLen = 8
	// TailLen is the length of what the publishing script writes between
	// head and body: the sequence number, then its clock.
	TailLen = seqLen + 8

	// MaxMessageBytes is the largest message a node publishes or accepts.
	MaxMessageBytes = 2 << 20
	// MaxKeyBytes is the largest key a message can carry.
	MaxKeyBytes = 1 << 20
	// maxNamespaceBytes is the largest namespace a message can carry.
	maxNamespaceBytes = 1 << 10
	// MaxGroupBytes is the longest group name a message can carry.
	MaxGroupBytes = 1 << 10
)

// Kind is what a message asks its receivers to do.
type Kind byte

const (
	// KindKeys evicts the listed keys.
	KindKeys Kind = 1
	// KindFlush drops every L1 entry of every receiver.
	KindFlush Kind = 2
)

// NodeID identifies a node on the bus. Nodes draw it at random on start.
type NodeID [16]byte

// Group is the keys of one namespace in a message.
type Group struct {
	Namespace string
	Keys      []string
}

// Message is one decoded bus message.
type Message struct {
	Kind   Kind
	Origin NodeID
	// Seq is the fleet-wide sequence number that Redis assigned when it
	// published the message, in the same atomic step as the writes it
	// announces.
	Seq uint64
	// SentAt is Redis's clock when the script that published the message
	// ran, to the microsecond, read in the same atomic step; the zero Time
	// if unknown.
	// With a sample of Redis's clock (see ClockSample.Since), a receiver
	// measures how long the message took to reach it.
	SentAt time.Time
	Groups []Group
	// InvalidGroups names the groups (of keys, as in Config.Groups) that
	// were invalidated: every member is stale.
	InvalidGroups []string
}

// ErrMalformed reports bytes that are not a message of this version.
var ErrMalformed = errors.New("bus: malformed message")

// Split returns the message's encoding without its sequence number and
// clock, as the two parts that the publishing script joins around the
// TailLen bytes it writes: head is the first HeadLen bytes, body the rest.
// Seq and SentAt are ignored.
func (m *Message) Split() (head, body []byte, err error) {
	if m.Kind != KindKeys && m.Kind != KindFlush {
		return nil, nil, fmt.Errorf("bus encode: unknown kind %d", m.Kind)
	}
	head = make([]byte, 0, HeadLen)
	head = append(head, magic, version, byte(m.Kind))
	head = append(head, m.Origin[:]...)
	if m.Kind == KindFlush {
		if len(m.Groups) != 0 || len(m.InvalidGroups) != 0 {
			return nil, nil, errors.New("bus encode: a flush carries no keys")
		}
		return head, nil, nil
	}
	size := 2 * binary.MaxVarintLen64
	for _, g := range m.InvalidGroups {
		size += binary.MaxVarintLen64 + len(g)
	}
	for _, g := range m.Groups {
		size += 2*binary.MaxVarintLen64 + len(g.Namespace)
		for _, k := range g.Keys {
			size += binary.MaxVarintLen64 + len(k)
		}
	}
	body = make([]byte, 0, size)
	body = binary.AppendUvarint(body, uint64(len(m.Groups)))
	for _, g := range m.Groups {
		if len(g.Namespace) == 0 || len(g.Namespace) > maxNamespaceBytes {
			return nil, nil, fmt.Errorf("bus encode: namespace of %d bytes", len(g.Namespace))
		}
		body = binary.AppendUvarint(body, uint64(len(g.Namespace)))
		body = append(body, g.Namespace...)
		body = binary.AppendUvarint(body, uint64(len(g.Keys)))
		for _, k := range g.Keys {
			if len(k) == 0 || len(k) > MaxKeyBytes {
				return nil, nil, fmt.Errorf("bus encode: key of %d bytes", len(k))
			}
			body = binary.AppendUvarint(body, uint64(len(k)))
			body = append(body, k...)
		}
	}
	body = binary.AppendUvarint(body, uint64(len(m.InvalidGroups)))
	for _, g := range m.InvalidGroups {
		if len(g) == 0 || len(g) > MaxGroupBytes {
			return nil, nil, fmt.Errorf("bus encode: group name of %d bytes", len(g))
		}
		body = binary.AppendUvarint(body, uint64(len(g)))
		body = append(body, g...)
	}
	if HeadLen+TailLen+len(body) > MaxMessageBytes {
		return nil, nil, fmt.Errorf("bus encode: message of %d bytes, limit %d", HeadLen+TailLen+len(body), MaxMessageBytes)
	}
	return head, body, nil
}

// Encode returns the whole encoding of m, with its Seq: what a receiver gets.
func (m *Message) Encode() ([]byte, error) {
	head, body, err := m.Split()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(head)+TailLen+len(body))
	b = append(b, head...)
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	var sent uint64
	if !m.SentAt.IsZero() {
		sent = uint64(m.SentAt.UnixMicro())
	}
	b = binary.BigEndian.AppendUint64(b, sent)
	return append(b, body...), nil
}

// Decode parses a message. Any error wraps ErrMalformed; it never panics
// and allocates in proportion to len(b) only.
func Decode(b []byte) (*Message, error) {
	if len(b) > MaxMessageBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(b), MaxMessageBytes)
	}
	if len(b) < HeadLen+TailLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than a header", ErrMalformed, len(b))
	}
	if b[0] != magic || b[1] != version {
		return nil, fmt.Errorf("%w: magic/version %#x %d", ErrMalformed, b[0], b[1])
	}
	m := &Message{Kind: Kind(b[2])}
	copy(m.Origin[:], b[3:19])
	m.Seq = binary.BigEndian.Uint64(b[19:27])
	if sent := binary.BigEndian.Uint64(b[27:35]); sent != 0 {
		if sent > math.MaxInt64 {
			return nil, fmt.Errorf("%w: sent time %d out of range", ErrMalformed, sent)
		}
		m.SentAt = time.UnixMicro(int64(sent)).UTC()
	}
	r := reader{b: b[HeadLen+TailLen:]}
	switch m.Kind {
	case KindFlush:
	case KindKeys:
		groups := r.count()
		for range groups {
			if r.err != nil {
				break
			}
			g := Group{Namespace: r.bytes(maxNamespaceBytes)}
			keys := r.count()
			for range keys {
				if r.err != nil {
					break
				}
				g.Keys = append(g.Keys, r.bytes(MaxKeyBytes))
			}
			m.Groups = append(m.Groups, g)
		}
		names := r.count()
		for range names {
			if r.err != nil {
				break
			}
			m.InvalidGroups = append(m.InvalidGroups, r.bytes(MaxGroupBytes))
		}
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", ErrMalformed, m.Kind)
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return m, nil
}

// reader consumes a body; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: bad length", ErrMalformed)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a number of items, each at least one byte long, so that a
// forged count cannot make the decoder loop or allocate past the input.
func (r *reader) count() int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: count %d exceeds the %d bytes left", ErrMalformed, n, len(r.b))
		return 0
	}
	return int(n)
}

// bytes reads a length-prefixed, non-empty string of at most limit bytes.
func (r *reader) bytes(limit int) string {
	n := r.uvarint()
	switch {
	case r.err != nil:
		return ""
	case n == 0 || n > uint64(limit):
		r.err = fmt.Errorf("%w: field of %d bytes (limit %d)", ErrMalformed, n, limit)
		return ""
	case n > uint64(len(r.b)):
		r.err = fmt.Errorf("%w: field of %d bytes, %d left", ErrMalformed, n, len(r.b))
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
