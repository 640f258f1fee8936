package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
)

func (s *shop) writeHeader(w io.Writer) {
	where := s.opts.DSN
	if cfg, err := pgx.ParseConfig(s.opts.DSN); err == nil {
		where = fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database) // no password
	}
	fmt.Fprintf(w, "shop     %d API servers (this program again, with -serve), %d products in %d categories, %d currencies\n",
		servers, s.opts.Products, s.opts.Categories, len(currencies))
	fmt.Fprintf(w, "postgres %s, schema %s (dropped at the end); the trigger on products notifies channel %s\n", where, s.schema, s.schema)
	fmt.Fprintf(w, "redis    private redis-server %s\n", s.redis.Addr())
	for _, p := range s.procs {
		role := ""
		if p.listener {
			role = ", and the pgnotify Listener"
		}
		fmt.Fprintf(w, "server %d %s%s\n", p.n, p.url, role)
	}
}

func writeTour(w io.Writer, steps []tourStep) {
	width := 0
	for _, st := range steps {
		width = max(width, len(st.Ask))
	}
	fmt.Fprintln(w)
	for i, st := range steps {
		label := ""
		if i == 0 {
			label = "tour"
		}
		saw := st.Saw
		if st.Failed != "" {
			saw = "FAILED: " + st.Failed
		}
		fmt.Fprintf(w, "%-9s%-*s  %s\n", label, width, st.Ask, saw)
	}
}

func (r *loadResult) write(w io.Writer) {
	var reads, probes int64
	for k, n := range r.Requests {
		if k == kindProbe {
			probes += n
		} else {
			reads += n
		}
	}
	fmt.Fprintf(w, "ran      %v: %s requests from %d readers (%s/s), %s of the writer's probes; %d failed\n",
		round(r.For), thousands(reads), r.Readers, thousands(int64(float64(reads)/r.For.Seconds())), thousands(probes), r.Failed)
	var mix []string
	for k := range kindProbe {
		mix = append(mix, fmt.Sprintf("%s %s", kindNames[k], thousands(r.Requests[k])))
	}
	fmt.Fprintf(w, "         %s\n\n", strings.Join(mix, ", "))

	// The cache's name is the last cell, after the last tab: tabwriter
	// leaves it unaligned, on the left.
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\trequests\tgets\tl1\tl2\tnot found\tsource\thit ratio\t  cache")
	for n, st := range r.Stats {
		for i, c := range st.Caches {
			server, requests := "", ""
			if i == 0 {
				server, requests = strconv.Itoa(n), thousands(r.ByServer[n])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f%%\t  %s\n", server, requests,
				thousands(int64(c.Gets)), thousands(int64(c.L1Hits)), thousands(int64(c.L2Hits)),
				thousands(int64(c.NegativeHits)), thousands(int64(c.Misses)), 100*c.HitRatio, c.Namespace)
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for n, st := range r.Stats {
		parts := []string{fmt.Sprintf("bus messages applied: %s, L1 drops: %d", thousands(int64(st.Node.BusApplied)), st.Node.Drops)}
		for _, rs := range st.Resources {
			parts = append(parts, fmt.Sprintf("%s: %d entries (loads from PostgreSQL %d, from Redis %d)", rs.Name, rs.Entries, rs.Loads, rs.Fetched))
		}
		if l := st.Listener; l != nil {
			parts = append(parts, fmt.Sprintf("pgnotify Listener: notifications %s, applied %s", thousands(int64(l.Received)), thousands(int64(l.Applied))))
		}
		fmt.Fprintf(w, "server %d %s\n", n, strings.Join(parts, "; "))
	}

	seen := 0
	var byID, onPage []time.Duration
	for _, wr := range r.Writes {
		if len(wr.Unseen) == 0 {
			seen++
			byID, onPage = append(byID, wr.Product), append(onPage, wr.Page)
		}
	}
	fmt.Fprintf(w, "\nwrites   %d UPDATEs straight to PostgreSQL, not through the API; seen on all %d servers: %d; not seen: %d\n",
		len(r.Writes), servers, seen, len(r.Writes)-seen)
	fmt.Fprintf(w, "delay    %-40s %9s %9s %9s\n", fmt.Sprintf("commit to the new name on all %d servers", servers), "p50", "p99", "max")
	for _, row := range []struct {
		what string
		d    []time.Duration
	}{{"GET /products/{id}", byID}, {"GET /categories/{id}/products", onPage}} {
		fmt.Fprintf(w, "           %-38s %9s %9s %9s\n", row.what, quantile(row.d, 0.5), quantile(row.d, 0.99), quantile(row.d, 1))
	}
	fmt.Fprintf(w, "bound    %v (the servers' NodeConfig.LeaseTTL): every write seen everywhere by the load's end plus that; no read older than a write committed that long before it\n", r.Grace)
	fmt.Fprintf(w, "reads    %s products read (by id, in batches, on pages, by probes): %d stale beyond the bound\n", thousands(int64(r.Checked)), r.Stale)
	fmt.Fprintf(w, "         %s reads of the products cache, per server: %d went back to a revision older than one already read there (allowed within the bound)\n",
		thousands(int64(r.Monotonic)), r.Backwards)
	for _, e := range r.BackExamples {
		fmt.Fprintf(w, "           %s\n", e)
	}
}

// failures lists the checks that failed.
func failures(tour []tourStep, r *loadResult) []string {
	var out []string
	for _, st := range tour {
		if st.Failed != "" {
			out = append(out, fmt.Sprintf("tour: %s: %s", st.Ask, st.Failed))
		}
	}
	if r == nil {
		return out
	}
	if r.Failed > 0 {
		out = append(out, fmt.Sprintf("requests failed: %d, e.g. %s", r.Failed, strings.Join(r.Failures, "; ")))
	}
	for n, c := range r.ByServer {
		if c == 0 {
			out = append(out, fmt.Sprintf("server %d answered no request of the load", n))
		}
	}
	if len(r.Writes) == 0 {
		out = append(out, "the writer made no write: nothing was checked of freshness")
	}
	var unseen []string
	for _, wr := range r.Writes {
		if len(wr.Unseen) > 0 {
			unseen = append(unseen, fmt.Sprintf("product %d rev %d on %s", wr.ID, wr.Rev, strings.Join(wr.Unseen, ", ")))
		}
	}
	if len(unseen) > 0 {
		out = append(out, fmt.Sprintf("writes not seen everywhere %v after the load: %d, e.g. %s", r.Grace, len(unseen), strings.Join(unseen[:min(len(unseen), keepFailures)], "; ")))
	}
	if r.Stale > 0 {
		out = append(out, fmt.Sprintf("reads stale beyond the bound: %d, e.g. %s", r.Stale, strings.Join(r.StaleExamples, "; ")))
	}
	return out
}

func writeVerdict(w io.Writer, failed []string) {
	if len(failed) == 0 {
		fmt.Fprintln(w, "RESULT   ok: every check passed")
		return
	}
	fmt.Fprintf(w, "RESULT   %d checks FAILED\n", len(failed))
	for _, f := range failed {
		fmt.Fprintf(w, "  %s\n", f)
	}
}

// quantile is the nearest-rank q-quantile of ds, "-" if there are none.
func quantile(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return round(s[max(i, 0)]).String()
}

// thousands writes n with commas: 12,345.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
