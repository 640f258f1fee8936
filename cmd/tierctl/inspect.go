package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/l2"
	"github.com/tiercache/tiercache/tier"
)

// inspectOptions configure inspect.
type inspectOptions struct {
	prefix string
	json   bool
	// ttl, freshFor and maxStale are the Cache's Config, which Redis does
	// not store: the zone of a remaining lifetime depends on them.
	ttl, freshFor, maxStale time.Duration
}

// Internal groups that every entry belongs to (tier/cache.go: fleetGroup,
// namespaceGroup); user group names cannot start with NUL.
const (
	fleetGroup      = "\x00all"
	namespacePrefix = "\x00ns\x00"
)

// groupLabel renders a group name for people: the internal groups by what
// they stand for, any other name quoted if it is not plain text.
func groupLabel(g string) string {
	if g == fleetGroup {
		return "(fleet)"
	}
	if ns, ok := strings.CutPrefix(g, namespacePrefix); ok {
		return "(namespace " + show(ns) + ")"
	}
	return show(g)
}

// show returns s as it is if it is printable text without spaces, else
// quoted: keys and names may hold any bytes.
func show(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == ' ' || r == '"' || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// keyReport is inspect's answer; its JSON field names are stable.
type keyReport struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	// ValueName is the value's Redis key; Hashed says the key was too long
	// to appear in it and is named by its hash.
	ValueName string `json:"value_name"`
	Hashed    bool   `json:"hashed"`
	Present   bool   `json:"present"`
	// Bytes is the stored envelope's size; DataBytes the encoded value's
	// within it; EnvelopeKey the key the envelope names, which a read
	// checks against the key asked for.
	Bytes       int    `json:"bytes,omitempty"`
	DataBytes   int    `json:"data_bytes,omitempty"`
	EnvelopeKey string `json:"envelope_key,omitempty"`
	// Corrupt is why the envelope did not decode: a read treats the value
	// as a miss and removes it.
	Corrupt string `json:"corrupt,omitempty"`
	// TTLMillis is the value's remaining lifetime in Redis: -1 no expiry,
	// -2 absent.
	TTLMillis int64 `json:"ttl_ms"`
	// Zone is "fresh", "stale-while-revalidate", "fail-safe",
	// "not-found" (a cached "not found" lives its TTL out), "no-expiry"
	// or "" when absent.
	Zone     string `json:"zone,omitempty"`
	Negative bool   `json:"negative"`
	// Meta is "ok", "negative" (the marker "n") or "missing": a value
	// whose meta list lost its marker has unknown groups and is refused.
	Meta   string        `json:"meta,omitempty"`
	Groups []groupReport `json:"groups,omitempty"`
	// Servable says whether the next read accepts the value: present, meta
	// intact, every group stamp current, envelope decodes for this key.
	Servable bool       `json:"servable"`
	Flag     flagReport `json:"flag"`
	// Waiting says readers marked the flag as waited on (the flag name
	// plus "w"); WaitingTTLMillis is the mark's remaining lifetime.
	Waiting          bool  `json:"waiting"`
	WaitingTTLMillis int64 `json:"waiting_ttl_ms,omitempty"`
}

// groupReport is one group of an entry.
type groupReport struct {
	Name string `json:"name"`
	// Label is Name for people: "(fleet)", "(namespace NS)" or the name.
	Label string `json:"label"`
	// Stamp is the stamp recorded at fill; Current the group's stamp now,
	// "" if it has vanished.
	Stamp   string `json:"stamp"`
	Current string `json:"current_stamp"`
	// State is "current", "stale" (stamp changed) or "missing" (stamp
	// gone: unknown, never assumed fresh).
	State string `json:"state"`
}

// flagReport is the state of a key's flag.
type flagReport struct {
	// State is "none", "claimed" (a fill in progress holds it) or
	// "failing" (a failure mark: readers serve the old value and leave the
	// source alone until it expires).
	State     string `json:"state"`
	Token     string `json:"token,omitempty"`
	TTLMillis int64  `json:"ttl_ms,omitempty"`
}

// inspect writes the state in Redis of key in namespace.
func inspect(ctx context.Context, rdb redis.UniversalClient, o inspectOptions, namespace, key string, w io.Writer) error {
	r, err := readKey(ctx, rdb, o, namespace, key)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return writeKeyReport(w, r, o)
}

// readKey reads value, flag, meta and waiting mark in one transaction, then
// the stamps of the groups the meta names.
func readKey(ctx context.Context, rdb redis.UniversalClient, o inspectOptions, namespace, key string) (keyReport, error) {
	if o.prefix == "" {
		o.prefix = tier.DefaultPrefix
	}
	ks := l2.KeysFor(o.prefix, namespace, key)
	r := keyReport{Namespace: namespace, Key: key, ValueName: ks.Value, Hashed: len(key) > l2.RawKeyMax}
	var (
		value, flag                *redis.StringCmd
		valueTTL, flagTTL, waitTTL *redis.DurationCmd
		meta                       *redis.StringSliceCmd
	)
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		value = p.Get(ctx, ks.Value)
		valueTTL = p.PTTL(ctx, ks.Value)
		meta = p.LRange(ctx, ks.Meta, 0, -1)
		flag = p.Get(ctx, ks.Flag)
		flagTTL = p.PTTL(ctx, ks.Flag)
		waitTTL = p.PTTL(ctx, ks.Flag+"w")
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return r, fmt.Errorf("inspect: %w", err)
	}

	// The groups and the marker: in the value's header, or, for a value
	// of an earlier version, in its meta list.
	m := meta.Val()
	if b, err := value.Bytes(); err == nil {
		r.Present = true
		r.Bytes = len(b)
		r.TTLMillis = millis(valueTTL.Val())
		st, err := l2.ParseStored(string(b))
		switch {
		case err == nil:
			m = append([]string{"1"}, st.Pairs...)
			if st.Negative {
				m[0] = "n"
			}
			b = []byte(st.Envelope)
		case errors.Is(err, l2.ErrNoHeader):
		default:
			m = []string{"1"}
			r.Corrupt = err.Error()
		}
		if len(m) > 0 && m[0] == "n" {
			r.Meta, r.Negative = "negative", true
		} else if len(m) > 0 && m[0] == "1" {
			r.Meta = "ok"
		}
		if !r.Negative && r.Corrupt == "" { // a stored "not found" holds no envelope
			decodeValue(b, key, &r)
		}
	} else {
		r.TTLMillis = -2
	}

	r.Servable = r.Present && r.Corrupt == ""
	if r.Present && r.Meta == "" {
		r.Meta, r.Servable = "missing", false
	}
	if r.Present {
		r.Zone = zone(o, r.TTLMillis, r.Negative)
	}
	if len(m) > 1 {
		if err := readStamps(ctx, rdb, o.prefix, m[1:], &r); err != nil {
			return r, err
		}
	}

	r.Flag.State = "none"
	if f, err := flag.Result(); err == nil {
		r.Flag.State, r.Flag.Token = "claimed", f
		if t, ok := strings.CutPrefix(f, "!"); ok {
			r.Flag.State, r.Flag.Token = "failing", t
		}
		r.Flag.TTLMillis = millis(flagTTL.Val())
	}
	if d := waitTTL.Val(); d != -2 { // -2: absent
		r.Waiting, r.WaitingTTLMillis = true, millis(d)
	}
	return r, nil
}

// decodeValue reads the envelope of a present value, not the value inside:
// its codec is the application's.
func decodeValue(b []byte, key string, r *keyReport) {
	env, err := l2.DecodeEnvelope(b)
	switch {
	case err != nil:
		r.Corrupt = err.Error()
	case env.Key != key:
		r.EnvelopeKey = env.Key
		r.Corrupt = "the envelope names another key (a hash collision of long keys)"
	default:
		r.EnvelopeKey, r.DataBytes = env.Key, len(env.Data)
	}
}

// readStamps compares the stamps recorded in a meta list (name, stamp
// pairs) with the groups' stamps now.
func readStamps(ctx context.Context, rdb redis.UniversalClient, prefix string, pairs []string, r *keyReport) error {
	cmds := make([]*redis.StringCmd, 0, len(pairs)/2)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i+1 < len(pairs); i += 2 {
			cmds = append(cmds, p.Get(ctx, l2.GroupKey(prefix, pairs[i])))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("inspect: group stamps: %w", err)
	}
	for i, c := range cmds {
		g := groupReport{Name: pairs[2*i], Label: groupLabel(pairs[2*i]), Stamp: pairs[2*i+1], State: "current"}
		cur, err := c.Result()
		switch {
		case errors.Is(err, redis.Nil):
			g.State = "missing"
		case err != nil:
			return fmt.Errorf("inspect: group stamp: %w", err)
		case cur != g.Stamp:
			g.Current, g.State = cur, "stale"
		default:
			g.Current = cur
		}
		if g.State != "current" {
			r.Servable = false
		}
		r.Groups = append(r.Groups, g)
	}
	if len(pairs)%2 != 0 {
		// A meta list the scripts never write: its groups are unknown.
		r.Meta, r.Servable = "malformed", false
	}
	return nil
}

// millis converts a PTTL reply, which go-redis gives as -1 and -2 (no
// expiry, absent) or as a duration, to milliseconds with the same codes.
func millis(d time.Duration) int64 {
	if d < 0 {
		return int64(d)
	}
	return d.Milliseconds()
}

// zone names the freshness zone of a value with left ms of its Redis
// lifetime, under the Cache settings of o (tier/freshness.go: a value lives
// TTL+MaxStale; fresh while more than MaxStale+TTL-FreshFor is left,
// servable while more than MaxStale is left).
func zone(o inspectOptions, left int64, negative bool) string {
	switch {
	case left < 0:
		return "no-expiry"
	case negative:
		return "not-found"
	}
	ttl, fresh := o.ttl, o.freshFor
	if ttl <= 0 {
		ttl = tier.DefaultTTL
	}
	if fresh <= 0 || fresh > ttl {
		fresh = ttl
	}
	d := time.Duration(left) * time.Millisecond
	switch {
	case d > o.maxStale+ttl-fresh:
		return "fresh"
	case d > o.maxStale:
		return "stale-while-revalidate"
	}
	return "fail-safe"
}

func writeKeyReport(w io.Writer, r keyReport, o inspectOptions) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "key\t%s %s\n", show(r.Namespace), show(r.Key))
	name := show(r.ValueName)
	if r.Hashed {
		name += " (key hashed: longer than " + strconv.Itoa(l2.RawKeyMax) + " bytes)"
	}
	fmt.Fprintf(tw, "redis\t%s\n", name)
	if !r.Present {
		fmt.Fprintf(tw, "value\tabsent\n")
	} else {
		if r.Negative {
			fmt.Fprintf(tw, "value\tpresent: a cached \"not found\"\n")
		} else {
			fmt.Fprintf(tw, "value\tpresent, %d bytes (envelope for key %s, %d bytes of encoded value)\n", r.Bytes, show(r.EnvelopeKey), r.DataBytes)
		}
		if r.Corrupt != "" {
			fmt.Fprintf(tw, "corrupt\t%s: a read treats it as a miss and removes it\n", r.Corrupt)
		}
		fmt.Fprintf(tw, "ttl\t%s\n", ttlText(r.TTLMillis))
		fmt.Fprintf(tw, "zone\t%s\n", zoneText(r, o))
		neg := "no"
		if r.Negative {
			neg = `yes: a cached "not found"`
		}
		fmt.Fprintf(tw, "negative\t%s\n", neg)
		switch r.Meta {
		case "missing":
			fmt.Fprintf(tw, "meta\tmissing: the value's groups are unknown, so a read refuses it\n")
		case "malformed":
			fmt.Fprintf(tw, "meta\tmalformed: a read refuses the value\n")
		}
		for i, g := range r.Groups {
			head := ""
			if i == 0 {
				head = "groups"
			}
			state := g.State
			switch g.State {
			case "stale":
				state = "stale (stamp " + show(g.Stamp) + " is now " + show(g.Current) + ")"
			case "missing":
				state = "stale (stamp " + show(g.Stamp) + " has vanished)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", head, g.Label, state)
		}
		verdict := "yes: the next read accepts it"
		if !r.Servable {
			verdict = "no: the next read refuses and removes it"
		}
		fmt.Fprintf(tw, "servable\t%s\n", verdict)
	}
	switch r.Flag.State {
	case "none":
		fmt.Fprintf(tw, "flag\tnone\n")
	case "claimed":
		fmt.Fprintf(tw, "flag\tclaimed by a fill in progress, token %s, %s\n", show(r.Flag.Token), ttlText(r.Flag.TTLMillis))
	case "failing":
		fmt.Fprintf(tw, "flag\tfailing: the last refresh failed, old value served without calling the source; token %s, %s\n", show(r.Flag.Token), ttlText(r.Flag.TTLMillis))
	}
	if r.Waiting {
		fmt.Fprintf(tw, "waiting\tyes: readers wait for the flag's holder, %s\n", ttlText(r.WaitingTTLMillis))
	} else {
		fmt.Fprintf(tw, "waiting\tno\n")
	}
	return tw.Flush()
}

func ttlText(ms int64) string {
	if ms < 0 {
		return "no expiry"
	}
	return (time.Duration(ms) * time.Millisecond).String() + " left"
}

func zoneText(r keyReport, o inspectOptions) string {
	switch r.Zone {
	case "no-expiry":
		return "none: the value has no expiry (not written by tiercache)"
	case "not-found":
		return `"not found" lives its TTL out, with no refresh zone`
	}
	fresh := o.freshFor
	if fresh <= 0 {
		fresh = o.ttl
	}
	return fmt.Sprintf("%s (for -ttl %v -fresh-for %v -max-stale %v: the Cache's Config, which Redis does not store)", r.Zone, o.ttl, fresh, o.maxStale)
}
