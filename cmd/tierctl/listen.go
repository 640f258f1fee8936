package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/tier"
)

// listenOptions configure watch and stats.
type listenOptions struct {
	prefix string
	json   bool
	// n stops after n messages, malformed ones included (0: no limit).
	n int
	// dur stops after this long (0: only ctx or n stop it).
	dur time.Duration
	// ready, if set, is called once the subscription is confirmed: every
	// message published after it returns is seen (tests wait on it).
	ready func()
}

// event is one message the listener received.
type event struct {
	at   time.Time
	size int
	// msg is the decoded message, nil if it was malformed (err says why).
	msg *bus.Message
	err error
	// gap is set when the message's sequence number is not the last one
	// seen plus one.
	gap *gapInfo
}

// gapInfo describes a break in the bus's sequence numbers: missed messages
// (Missing > 0), or a number at or below the last one (a repeat, a
// reordering, or the counter reset with Redis).
type gapInfo struct {
	Expected uint64 `json:"expected"`
	Got      uint64 `json:"got"`
	Missing  uint64 `json:"missing"`
}

// seqTracker follows the sequence numbers since the listener started.
type seqTracker struct {
	seen bool
	last uint64
}

// observe records seq and returns the gap before it, if any.
func (t *seqTracker) observe(seq uint64) *gapInfo {
	defer func() { t.seen, t.last = true, seq }()
	if !t.seen || seq == t.last+1 {
		return nil
	}
	g := &gapInfo{Expected: t.last + 1, Got: seq}
	if seq > t.last {
		g.Missing = seq - t.last - 1
	}
	return g
}

// listen subscribes to the bus and hands each message to handle until ctx
// is done, o.dur has passed or o.n messages have come; those ends are not
// errors. It returns when the subscription is closed.
func listen(ctx context.Context, rdb redis.UniversalClient, o listenOptions, handle func(event)) error {
	if o.prefix == "" {
		o.prefix = tier.DefaultPrefix
	}
	if o.dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.dur)
		defer cancel()
	}
	ps := rdb.Subscribe(ctx, o.prefix+":bus")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("subscribe: %w", err)
	}
	if o.ready != nil {
		o.ready()
	}
	// The channel's goroutine resubscribes after a lost connection; the
	// messages lost meanwhile show up as a gap.
	ch := ps.Channel()
	var seq seqTracker
	for n := 0; o.n <= 0 || n < o.n; n++ {
		var m *redis.Message
		select {
		case <-ctx.Done():
			return nil
		case m = <-ch:
		}
		if m == nil {
			return errors.New("subscription closed")
		}
		e := event{at: time.Now(), size: len(m.Payload)}
		e.msg, e.err = bus.Decode([]byte(m.Payload))
		if e.err == nil {
			e.gap = seq.observe(e.msg.Seq)
		}
		handle(e)
	}
	return nil
}

// watchLine is one line of watch's JSON output; field names are stable.
type watchLine struct {
	Seq uint64 `json:"seq,omitempty"`
	// Sent is Redis's clock when it published the message (RFC 3339).
	Sent   string          `json:"sent,omitempty"`
	Origin string          `json:"origin,omitempty"`
	Kind   string          `json:"kind,omitempty"`
	Keys   []namespaceKeys `json:"keys,omitempty"`
	// Groups are the invalidated groups' names; the internal ones are
	// "\u0000all" (the fleet) and "\u0000ns\u0000NAMESPACE".
	Groups    []string `json:"groups,omitempty"`
	Gap       *gapInfo `json:"gap,omitempty"`
	Malformed string   `json:"malformed,omitempty"`
	Bytes     int      `json:"bytes,omitempty"`
	// Summary is set on the last line only.
	Summary *watchSummary `json:"summary,omitempty"`
}

// namespaceKeys are the keys of one namespace in a message.
type namespaceKeys struct {
	Namespace string   `json:"namespace"`
	Keys      []string `json:"keys"`
}

// watchSummary counts what watch saw.
type watchSummary struct {
	Messages  int    `json:"messages"`
	Gaps      int    `json:"gaps"`
	Missed    uint64 `json:"missed"`
	Malformed int    `json:"malformed"`
}

// watch writes each bus message as it comes, then a summary line.
func watch(ctx context.Context, rdb redis.UniversalClient, o listenOptions, w io.Writer) error {
	var sum watchSummary
	var werr error
	enc := json.NewEncoder(w)
	err := listen(ctx, rdb, o, func(e event) {
		sum.Messages++
		if e.err != nil {
			sum.Malformed++
		}
		if e.gap != nil {
			sum.Gaps++
			sum.Missed += e.gap.Missing
		}
		if werr != nil {
			return
		}
		if o.json {
			werr = enc.Encode(lineOf(e))
		} else {
			_, werr = io.WriteString(w, textOf(e))
		}
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	if o.json {
		err = enc.Encode(watchLine{Summary: &sum})
	} else {
		_, err = fmt.Fprintf(w, "-- %d messages, %d gaps (%d missed), %d malformed\n", sum.Messages, sum.Gaps, sum.Missed, sum.Malformed)
	}
	return err
}

func lineOf(e event) watchLine {
	if e.err != nil {
		return watchLine{Malformed: e.err.Error(), Bytes: e.size}
	}
	m := e.msg
	l := watchLine{Seq: m.Seq, Origin: hex.EncodeToString(m.Origin[:]), Kind: kindName(m.Kind), Groups: m.InvalidGroups, Gap: e.gap}
	if !m.SentAt.IsZero() {
		l.Sent = m.SentAt.Format(time.RFC3339Nano)
	}
	for _, g := range m.Groups {
		l.Keys = append(l.Keys, namespaceKeys{Namespace: g.Namespace, Keys: g.Keys})
	}
	return l
}

// textOf renders one event as text lines: a gap line before the message
// it precedes.
func textOf(e event) string {
	var b strings.Builder
	if e.err != nil {
		fmt.Fprintf(&b, "MALFORMED  %d bytes: %v\n", e.size, e.err)
		return b.String()
	}
	if g := e.gap; g != nil {
		if g.Missing > 0 {
			fmt.Fprintf(&b, "GAP  expected seq %d, got %d: %d messages missed\n", g.Expected, g.Got, g.Missing)
		} else {
			fmt.Fprintf(&b, "GAP  expected seq %d, got %d: repeated, reordered, or the counter was reset\n", g.Expected, g.Got)
		}
	}
	m := e.msg
	what := kindName(m.Kind)
	if m.Kind == bus.KindKeys {
		what = "invalidate"
	}
	fmt.Fprintf(&b, "seq %d  origin %s", m.Seq, shortID(m.Origin))
	if !m.SentAt.IsZero() {
		fmt.Fprintf(&b, "  sent %s", m.SentAt.Format("15:04:05.000000"))
	}
	fmt.Fprintf(&b, "  %s", what)
	for _, g := range m.Groups {
		keys := make([]string, len(g.Keys))
		for i, k := range g.Keys {
			keys[i] = show(k)
		}
		fmt.Fprintf(&b, "  %s[%s]", show(g.Namespace), strings.Join(keys, " "))
	}
	if len(m.InvalidGroups) > 0 {
		labels := make([]string, len(m.InvalidGroups))
		for i, g := range m.InvalidGroups {
			labels[i] = groupLabel(g)
		}
		fmt.Fprintf(&b, "  groups %s", strings.Join(labels, " "))
	}
	b.WriteByte('\n')
	return b.String()
}

func kindName(k bus.Kind) string {
	switch k {
	case bus.KindKeys:
		return "keys"
	case bus.KindFlush:
		return "flush"
	}
	return fmt.Sprintf("kind-%d", k)
}

// shortID is the first 4 bytes of a node id in hex, enough to tell a
// fleet's nodes apart by eye.
func shortID(id bus.NodeID) string { return hex.EncodeToString(id[:4]) }
