package sim

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// WriteTable writes the result as a table a person reads in ten seconds:
// the run, the tiers, the phases, the faults, and the verdict last.
func (r *Result) WriteTable(w io.Writer) error {
	c := r.Config
	var b strings.Builder
	keys := "uniform"
	if c.Zipf > 0 {
		keys = fmt.Sprintf("zipf s=%g", c.Zipf)
	}
	nodes := "nodes"
	if c.Procs {
		nodes = "node processes"
	}
	fmt.Fprintf(&b, "fleet    %d %s x %d workers, %d keys (%s), mix read/inv/set/group %d/%d/%d/%d, seed %d\n",
		c.Nodes, nodes, c.Goroutines, c.Keys, keys, c.Mix.Read, c.Mix.Invalidate, c.Mix.Set, c.Mix.Group, c.Seed)
	if f := freshness(c); f != "" {
		fmt.Fprintf(&b, "cache    %s\n", f)
	}
	fmt.Fprintf(&b, "redis    %s\n", r.Backend)
	if c.WaitReplicas > 0 {
		wt := c.WaitTimeout
		if wt == 0 {
			wt = c.RedisTimeout
		}
		fmt.Fprintf(&b, "writes   wait for %s to acknowledge them, at most %s (WaitReplicas, WaitTimeout)\n", plural(int64(c.WaitReplicas), "replica"), wt)
	}
	if r.Break != BreakNone {
		fmt.Fprintf(&b, "BROKEN   negative control %q: the protocol is broken on purpose\n", r.Break)
	}
	switch {
	case c.Drives > 0 && c.Break == CoarseLease:
		fmt.Fprintf(&b, "driven   %s (of %d needed) in which a read the moment the node resumed ran before it caught up\n", plural(r.Driven, "pause"), c.Drives)
	case c.Drives > 0:
		fmt.Fprintf(&b, "driven   the race forced %d times (of %d) through tier's hooks, each on a key of its own\n", r.Driven, c.Drives)
	}
	if r.Short != "" {
		fmt.Fprintf(&b, "SHORT    %s: this run proves nothing\n", r.Short)
	}
	if p := r.Procs; p != nil {
		fmt.Fprintf(&b, "procs    %d started, %d killed (and started again); %s, %s stopped in all; %s the moment a paused node resumed, %d answered by the L1 entry it held before\n",
			p.Started, p.Killed, plural(int64(p.Pauses), "pause"), p.Paused.Round(time.Millisecond), plural(p.ResumeReads, "read"), p.ResumeStale)
	}
	fmt.Fprintf(&b, "ran      %s: %s ops, %s key writes (%s pending replay, %s failed)\n",
		r.Elapsed.Round(time.Millisecond), count(r.Ops), count(r.Writes), count(r.WritesPending), count(r.WritesFailed))
	fmt.Fprintf(&b, "source   %s reads, herd factor %.2f source reads per key write\n", count(r.SourceReads), r.HerdFactor)
	f := r.Fleet
	fmt.Fprintf(&b, "fills    %s landed, %s refused; %s waits for a claimant, %s uncached fetches\n",
		count(int64(f.FillsLanded)), count(int64(f.FillsRefused)), count(int64(f.Waits)), count(int64(f.UncachedFetches)))
	if freshness(c) != "" {
		fmt.Fprintf(&b, "stale    %s permitted-stale reads (%s behind the required version, within the bound); tier: %s stale served, %s fail-safe, %s refreshes, %s cached not-found\n",
			count(r.Total.PermittedStale), count(r.Total.PermittedBehind), count(int64(f.StaleServed)), count(int64(f.FailSafe)), count(int64(f.Refreshes)), count(int64(f.NegativeHits)))
	}
	if r.NotFound > 0 || r.ManyReads > 0 {
		fmt.Fprintf(&b, "reads    %s answered not found; %s keys read by GetMany (not in the tiers below)\n", count(r.NotFound), count(r.ManyReads))
	}
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tier\treads\tshare\tp50\tp99\t")
	for _, t := range r.Tiers {
		fmt.Fprintf(tw, "%s\t%s\t%.1f%%\t%s\t%s\t\n", t.Tier, count(t.Reads), 100*t.Ratio, dur(t.P50), dur(t.P99))
	}
	_ = tw.Flush()
	b.WriteString("\n")

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\treads\terrors\tfresh\tstale<=bound\tpermitted\tVIOLATIONS\tryw\tinversions\tage p50\tage p99\tage max\t")
	for _, p := range append(slices.Clone(r.Phases), r.Total) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", p.Name, count(p.Reads), count(p.Errors), count(p.Fresh),
			count(p.StaleInBound), count(p.PermittedStale), count(p.Violations), count(p.RYW), count(p.Inversions),
			dur(p.AgeP50), dur(p.AgeP99), dur(p.AgeMax))
	}
	_ = tw.Flush()
	r.writeShards(&b)

	if len(r.Faults) > 0 {
		b.WriteString("\nfaults")
		for i, f := range r.Faults {
			sep := "  "
			if i > 0 {
				sep = "        "
			}
			what := string(f.Kind)
			if faultKinds[f.Kind] {
				what += fmt.Sprintf(" (node %d)", f.Node)
			}
			if f.Skipped != "" {
				fmt.Fprintf(&b, "%s%-20s SKIPPED BY BACKEND: %s\n", sep, what, f.Skipped)
				continue
			}
			fmt.Fprintf(&b, "%s%-20s %s .. %s", sep, what, f.Start.Round(time.Millisecond), f.End.Round(time.Millisecond))
			if f.Detail != "" {
				fmt.Fprintf(&b, "  %s", f.Detail)
			}
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "\nbound    stale L1 reads on other nodes are allowed up to %s after the write returned (LeaseTTL %s + slack %s)\n",
		r.Bound, c.LeaseTTL, c.Slack)
	if v := r.Violations(); v > 0 {
		fmt.Fprintf(&b, "RESULT   %s VIOLATIONS", count(v))
		for _, cl := range sortedKeys(r.Total.ByClass) {
			fmt.Fprintf(&b, "  %s=%d", cl, r.Total.ByClass[cl])
		}
		b.WriteString("\n")
		for _, e := range r.Examples[:min(5, len(r.Examples))] {
			fmt.Fprintf(&b, "  e.g. %s at %s (%s): node %d key %d from %s got v%d, required v%d, age %s; read took %s, shared %v; newer write %s\n",
				e.Class, e.At.Round(time.Millisecond), e.Phase, e.Node, e.Key, e.Source, e.Got, e.Required, dur(e.Age), dur(e.Took), e.Shared, e.Write)
		}
	} else {
		b.WriteString("RESULT   0 violations\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeShards writes the shards of a run on a Redis Cluster: what each
// served, and its reads and writes per phase.
func (r *Result) writeShards(b *strings.Builder) {
	if len(r.Shards) == 0 {
		return
	}
	b.WriteString("\n")
	for i, sh := range r.Shards {
		label := "shards"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(b, "%-8s %d  slots %s (%s), master %s", label, sh.Index, sh.Slots, plural(int64(sh.Keys), "key"), strings.Join(sh.Masters, " → "))
		if sh.Bus {
			b.WriteString(", the bus")
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shard\tphase\treads\terrors\tfresh\tstale<=bound\tpermitted\tVIOLATIONS\tage max\twrites\tpending\tfailed\t")
	for _, sh := range r.Shards {
		for _, sp := range append(slices.Clone(sh.Phases), sh.Total) {
			p := sp.Reads
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", sh.Index, p.Name, count(p.Reads), count(p.Errors), count(p.Fresh),
				count(p.StaleInBound), count(p.PermittedStale), count(p.Violations), dur(p.AgeMax), count(sp.Writes), count(sp.Pending), count(sp.Failed))
		}
	}
	_ = tw.Flush()
}

// freshness describes the Cache's freshness settings and the workload's
// freshness options, "" if none is set.
func freshness(c Config) string {
	var parts []string
	if c.FreshFor > 0 && c.FreshFor < c.TTL {
		parts = append(parts, fmt.Sprintf("fresh for %s of TTL %s", c.FreshFor, c.TTL))
	} else if c.TTL != DefaultTTL {
		parts = append(parts, fmt.Sprintf("TTL %s", c.TTL))
	}
	if c.MaxStale > 0 {
		parts = append(parts, fmt.Sprintf("max stale %s (fetch timeout %s, throttle %s)", c.MaxStale, c.FetchTimeout, c.FailSafeThrottle))
	}
	if c.EarlyRefresh > 0 {
		parts = append(parts, fmt.Sprintf("early refresh %g", c.EarlyRefresh))
	}
	if c.NotFoundTTL > 0 {
		parts = append(parts, fmt.Sprintf("not-found TTL %s", c.NotFoundTTL))
	}
	if c.Losers != tier.LoserWait {
		parts = append(parts, "losers "+c.Losers.String())
	}
	if c.Absent {
		parts = append(parts, "keys absent until inserted")
	}
	if c.Many > 0 {
		parts = append(parts, fmt.Sprintf("%d%% of reads GetMany of %d keys", c.Many, c.ManyKeys))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys(m map[string]int64) []string {
	ks := make([]string, 0, len(m))
	for k, n := range m {
		if n > 0 {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

// plural is n things, "1 pause" or "2 pauses".
func plural(n int64, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return count(n) + " " + thing + "s"
}

// count formats n with thousands separators.
func count(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// dur formats a duration with three significant figures, "-" for zero.
func dur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Microsecond:
		return d.String()
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
