package main

import (
	"fmt"
	"io"

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

// failures lists the checks that failed.
func failures(tour []tourStep) []string {
	var out []string
	for _, st := range tour {
		if st.Failed != "" {
			out = append(out, fmt.Sprintf("tour: %s: %s", st.Ask, st.Failed))
		}
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
