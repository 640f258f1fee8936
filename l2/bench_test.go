package l2_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/interleave"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
)

// BenchmarkApplyOneWrite compares the ways to store one value in two
// groups and announce it to one subscriber: a raw SET of as many bytes
// (the baseline), the apply script, and the lean write script, which Apply
// runs for a batch of one write on one server. Each row has a redis-server
// of its own, so that Redis's CPU is each row's alone, and the rows run in
// turn within every iteration, so that they share every moment of the run.
// Each row reports its mean time as "<row>-µs", its server's CPU time per
// operation as "<row>-redis-cpu-µs", and, from INFO commandstats, the time
// Redis spent per operation running the commands that Redis timed
// ("<row>-commands-µs": the SET, or those the script called) and, for a
// script, running it whole ("<row>-script-µs"), so that the difference is
// the script's own Lua. Each row but the first also reports its ratios to
// SET's: "<row>-x" and "<row>-redis-cpu-x".
func BenchmarkApplyOneWrite(b *testing.B) {
	ctx := context.Background()
	groups := []string{"\x00fleet", "\x00ns:bench"}
	env := []byte(strings.Repeat("e", 200))
	raw := strings.Repeat("v", 300) // about a header and env's bytes
	ann := &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: []byte(strings.Repeat("h", 40)), Body: []byte(strings.Repeat("b", 30))}
	const keys = 100
	ks := make([]l2.Keys, keys)
	for i := range ks {
		ks[i] = l2.KeysFor("tc", "bench", "user:"+strconv.Itoa(i))
	}
	write := func(i int) []l2.Change {
		return []l2.Change{{Keys: ks[i%keys], Write: true, Envelope: env, TTL: time.Hour, Groups: groups}}
	}
	type row struct {
		name string
		srv  *redistest.Server
		op   func(i int) error
	}
	rows := []*row{{name: "SET"}, {name: "apply-script"}, {name: "write-script"}}
	for _, r := range rows {
		r.srv = redistest.Start(b)
		rdb := r.srv.Client(b)
		redistest.Drain(b, rdb, channel) // the node a message goes to
		st := l2.NewStore(rdb, "tc")
		switch r.name {
		case "SET":
			r.op = func(i int) error { return rdb.Set(ctx, ks[i%keys].Value, raw, time.Hour).Err() }
		case "apply-script":
			r.op = func(i int) error { _, err := l2.ApplyScriptOnly(ctx, st, write(i), ann); return err }
		default:
			r.op = func(i int) error { _, err := st.Apply(ctx, write(i), ann); return err }
		}
		// The stamps exist, as they do for every write but a group's first.
		if err := r.op(0); err != nil {
			b.Fatalf("%s: %v", r.name, err)
		}
	}
	cpu := make([]time.Duration, len(rows))
	for k, r := range rows {
		r.srv.Do("CONFIG", "RESETSTAT")
		cpu[k] = -r.srv.Stats().CPU
	}
	runs := make([]interleave.Row, len(rows))
	for k, r := range rows {
		runs[k] = interleave.Row{Name: r.name, Op: r.op}
	}
	spent, n := interleave.Run(b, runs...)
	stats := make([]redistest.Stats, len(rows))
	for k, r := range rows {
		stats[k] = r.srv.Stats()
		cpu[k] += stats[k].CPU
	}
	for k, r := range rows {
		script, commands := commandTime(stats[k])
		b.ReportMetric(float64(spent[k])/float64(time.Microsecond)/float64(n), r.name+"-µs")
		b.ReportMetric(float64(cpu[k])/float64(time.Microsecond)/float64(n), r.name+"-redis-cpu-µs")
		b.ReportMetric(float64(commands)/float64(time.Microsecond)/float64(n), r.name+"-commands-µs")
		if script > 0 {
			b.ReportMetric(float64(script)/float64(time.Microsecond)/float64(n), r.name+"-script-µs")
		}
		if k > 0 {
			b.ReportMetric(float64(spent[k])/float64(spent[0]), r.name+"-x")
			b.ReportMetric(float64(cpu[k])/float64(cpu[0]), r.name+"-redis-cpu-x")
		}
	}
}

// commandTime returns, from a server's Stats since CONFIG RESETSTAT, the
// time spent in scripts (EVALSHA, EVAL) and in every other command but the
// statistics' own (CONFIG, INFO).
func commandTime(st redistest.Stats) (script, commands time.Duration) {
	for name, cs := range st.Commands {
		switch {
		case name == "evalsha" || name == "eval":
			script += cs.Time
		case !strings.HasPrefix(name, "config") && name != "info":
			commands += cs.Time
		}
	}
	return script, commands
}
