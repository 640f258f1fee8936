package pgnotify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/tier"
)

// Limits of a payload, the ones PostgreSQL and package tier set.
const (
	// MaxPayloadBytes is the longest payload ParsePayload accepts and
	// Notification.Encode produces. PostgreSQL refuses a NOTIFY payload of
	// 8000 bytes or more (in its default build), so a payload the server
	// delivers is always shorter.
	MaxPayloadBytes = 8000
	// MaxNamespaceBytes is the longest namespace, tier.Config.Namespace's
	// limit.
	MaxNamespaceBytes = tier.MaxNamespaceBytes
	// MaxGroupBytes is the longest group name, tier's limit.
	MaxGroupBytes = bus.MaxGroupBytes
)

// Notification is what one payload says has changed: keys of one
// namespace by their string form, groups, or the whole namespace.
//
// On the wire it is a JSON object, as the trigger of TriggerSQL sends it:
//
//	{"ns":"products","keys":["42"],"groups":["category:7","category:9"]}
//	{"ns":"products","all":true}
//
// "ns" is required; at least one of "keys", "groups" and "all" must name
// something. Keys and groups are JSON strings, never numbers: a key is its
// string form, the one tier.Config.Key gives (an integer's decimal form by
// default), which is what PostgreSQL's ::text cast of an integer column
// gives too.
type Notification struct {
	// Namespace is the tier.Config.Namespace whose entries changed. Keys
	// belong to it; Groups are the node's, as Node.InvalidateGroup's are,
	// and Namespace tells the Listener which configured namespace their
	// members live in.
	Namespace string
	// Keys are the string forms of the changed keys of Namespace. Each is
	// non-empty.
	Keys []string
	// Groups are groups whose members changed. Each is 1 to MaxGroupBytes
	// bytes and does not start with NUL, as tier requires.
	Groups []string
	// All says every entry of Namespace changed (a TRUNCATE, or a change
	// too large for one payload).
	All bool
}

// wire is a Notification as JSON.
type wire struct {
	NS     *string  `json:"ns"`
	Keys   []string `json:"keys,omitempty"`
	Groups []string `json:"groups,omitempty"`
	All    bool     `json:"all,omitempty"`
}

// ParsePayload decodes a notification's payload. It never panics; an
// error wraps ErrPayload and says what is wrong: bytes that are not one
// JSON object of the format's fields (no others), not valid UTF-8, longer
// than MaxPayloadBytes; a missing or empty namespace, or one longer than
// MaxNamespaceBytes; a payload that names nothing; an empty key; a group
// that tier would refuse. A string holding U+FFFD is refused too: it is
// what encoding/json makes of an escaped lone surrogate, and a key changed
// so would invalidate the wrong entry.
func ParsePayload(b []byte) (Notification, error) {
	switch {
	case len(b) == 0:
		return Notification{}, fmt.Errorf("%w: empty", ErrPayload)
	case len(b) > MaxPayloadBytes:
		return Notification{}, fmt.Errorf("%w: %d bytes, limit %d", ErrPayload, len(b), MaxPayloadBytes)
	case !utf8.Valid(b):
		return Notification{}, fmt.Errorf("%w: not valid UTF-8", ErrPayload)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Notification{}, fmt.Errorf("%w: field %q: %v (keys and groups are JSON strings)", ErrPayload, te.Field, err)
		}
		return Notification{}, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Notification{}, fmt.Errorf("%w: data after the JSON object", ErrPayload)
	}
	if w.NS == nil {
		return Notification{}, fmt.Errorf(`%w: no "ns"`, ErrPayload)
	}
	n := Notification{Namespace: *w.NS, Keys: w.Keys, Groups: w.Groups, All: w.All}
	if len(n.Keys) == 0 {
		n.Keys = nil
	}
	if len(n.Groups) == 0 {
		n.Groups = nil
	}
	if err := n.check(); err != nil {
		return Notification{}, err
	}
	return n, nil
}

// check returns an error wrapping ErrPayload if n breaks the format's
// rules.
func (n Notification) check() error {
	if err := checkNamespace(n.Namespace); err != nil {
		return fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if len(n.Keys) == 0 && len(n.Groups) == 0 && !n.All {
		return fmt.Errorf(`%w: names nothing: no "keys", no "groups" and no "all"`, ErrPayload)
	}
	for i, k := range n.Keys {
		switch {
		case k == "":
			return fmt.Errorf("%w: key %d is empty", ErrPayload, i)
		case !cleanString(k):
			return fmt.Errorf("%w: key %d is not valid UTF-8 or holds U+FFFD", ErrPayload, i)
		}
	}
	for i, g := range n.Groups {
		if err := checkGroup(g); err != nil {
			return fmt.Errorf("%w: group %d: %v", ErrPayload, i, err)
		}
	}
	return nil
}

// checkNamespace says why ns cannot be a namespace of a payload or a
// Config, or nil.
func checkNamespace(ns string) error {
	if err := tier.CheckNamespace(ns); err != nil {
		return err
	}
	if !cleanString(ns) {
		return errors.New("namespace is not valid UTF-8 or holds U+FFFD")
	}
	return nil
}

// checkGroup says why g cannot be a group name, or nil.
func checkGroup(g string) error {
	if err := tier.CheckGroup(g); err != nil {
		return err
	}
	if !cleanString(g) {
		return errors.New("group name is not valid UTF-8 or holds U+FFFD")
	}
	return nil
}

// cleanString reports whether s is valid UTF-8 without U+FFFD, so that it
// survives JSON unchanged both ways.
func cleanString(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, utf8.RuneError)
}

// Encode returns n's payload, for a program that sends its own
// notifications (SELECT pg_notify($1, $2) in the transaction of a write,
// so that the notification is sent if and only if the write commits).
// It fails, with an error wrapping ErrPayload, where ParsePayload would,
// so that what Encode returns always parses back to n.
func (n Notification) Encode() ([]byte, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	ns := n.Namespace
	if err := enc.Encode(wire{NS: &ns, Keys: n.Keys, Groups: n.Groups, All: n.All}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxPayloadBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrPayload, len(b), MaxPayloadBytes)
	}
	return b, nil
}
