package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/tier"
)

// busStats is what stats measured; its JSON field names are stable.
type busStats struct {
	Channel string  `json:"channel"`
	Seconds float64 `json:"seconds"`
	// Messages counts every message, malformed ones included.
	Messages  int     `json:"messages"`
	PerSecond float64 `json:"messages_per_second"`
	// Keys counts keys invalidated (or written), Groups group
	// invalidations, the internal ones (InvalidateAll, the fleet group)
	// included, Flushes fleet flushes.
	Keys      int    `json:"keys"`
	Groups    int    `json:"groups"`
	Flushes   int    `json:"flushes"`
	Gaps      int    `json:"gaps"`
	Missed    uint64 `json:"missed"`
	Malformed int    `json:"malformed"`
	// Origins and Namespaces are sorted by messages, most first.
	Origins    []originStats    `json:"origins"`
	Namespaces []namespaceStats `json:"namespaces"`
}

// originStats is the traffic one node published.
type originStats struct {
	Origin    string  `json:"origin"`
	Messages  int     `json:"messages"`
	PerSecond float64 `json:"messages_per_second"`
	Keys      int     `json:"keys"`
	Groups    int     `json:"groups"`
	Flushes   int     `json:"flushes"`
}

// namespaceStats is the traffic about one namespace: messages that named
// keys of it, those keys, and invalidations of the whole namespace.
type namespaceStats struct {
	Namespace string `json:"namespace"`
	Messages  int    `json:"messages"`
	Keys      int    `json:"keys"`
	All       int    `json:"invalidate_all"`
}

// stats listens to the bus, then writes its traffic.
func stats(ctx context.Context, rdb redis.UniversalClient, o listenOptions, w io.Writer) error {
	if o.prefix == "" {
		o.prefix = tier.DefaultPrefix
	}
	s := busStats{Channel: o.prefix + ":bus"}
	origins := map[string]*originStats{}
	namespaces := map[string]*namespaceStats{}
	ns := func(name string) *namespaceStats {
		if namespaces[name] == nil {
			namespaces[name] = &namespaceStats{Namespace: name}
		}
		return namespaces[name]
	}
	start := time.Now()
	err := listen(ctx, rdb, o, func(e event) {
		s.Messages++
		if e.err != nil {
			s.Malformed++
			return
		}
		if e.gap != nil {
			s.Gaps++
			s.Missed += e.gap.Missing
		}
		m := e.msg
		id := hex.EncodeToString(m.Origin[:])
		org := origins[id]
		if org == nil {
			org = &originStats{Origin: id}
			origins[id] = org
		}
		org.Messages++
		if m.Kind == bus.KindKeys {
			for _, g := range m.Groups {
				n := ns(g.Namespace)
				n.Messages++
				n.Keys += len(g.Keys)
				org.Keys += len(g.Keys)
				s.Keys += len(g.Keys)
			}
			for _, g := range m.InvalidGroups {
				if name, ok := strings.CutPrefix(g, namespacePrefix); ok {
					ns(name).All++
				}
			}
			org.Groups += len(m.InvalidGroups)
			s.Groups += len(m.InvalidGroups)
			return
		}
		org.Flushes++
		s.Flushes++
	})
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	s.Seconds = time.Since(start).Seconds()
	rate := func(n int) float64 {
		if s.Seconds <= 0 {
			return 0
		}
		return float64(n) / s.Seconds
	}
	s.PerSecond = rate(s.Messages)
	for _, org := range origins {
		org.PerSecond = rate(org.Messages)
	}
	s.Origins = sorted(origins, func(a, b *originStats) int {
		return cmp.Or(cmp.Compare(b.Messages, a.Messages), strings.Compare(a.Origin, b.Origin))
	})
	s.Namespaces = sorted(namespaces, func(a, b *namespaceStats) int {
		return cmp.Or(cmp.Compare(b.Messages+b.All, a.Messages+a.All), strings.Compare(a.Namespace, b.Namespace))
	})
	if o.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	return writeStats(w, s)
}

// sorted returns the values of m, sorted by cmp.
func sorted[T any](m map[string]*T, cmp func(a, b *T) int) []T {
	ps := slices.SortedFunc(maps.Values(m), cmp)
	out := make([]T, len(ps))
	for i, p := range ps {
		out[i] = *p
	}
	return out
}

func writeStats(w io.Writer, s busStats) error {
	fmt.Fprintf(w, "bus %s, %.1fs: %d messages (%.1f/s), %d keys, %d groups, %d flushes; %d gaps (%d missed), %d malformed\n",
		show(s.Channel), s.Seconds, s.Messages, s.PerSecond, s.Keys, s.Groups, s.Flushes, s.Gaps, s.Missed, s.Malformed)
	if len(s.Origins) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "origin\tmessages\tmsg/s\tkeys\tgroups\tflushes\t")
		for _, o := range s.Origins {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%d\t%d\t\n", o.Origin[:8], o.Messages, o.PerSecond, o.Keys, o.Groups, o.Flushes)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(s.Namespaces) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "namespace\tmessages\tkeys\tinvalidate-all\t")
		for _, n := range s.Namespaces {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", show(n.Namespace), n.Messages, n.Keys, n.All)
		}
		return tw.Flush()
	}
	return nil
}
