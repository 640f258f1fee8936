package sim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// simulate runs cfg against a private redis-server started with args.
func simulate(t *testing.T, cfg Config, args ...string) *Result {
	t.Helper()
	res, err := Run(context.Background(), cfg, privateRedis{redistest.Start(t, args...)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// noViolations fails the test if any read was a violation, and prints
// the table so the failure can be read.
func noViolations(t *testing.T, res *Result) {
	t.Helper()
	if res.Violations() != 0 {
		var b testWriter
		_ = res.WriteTable(&b)
		t.Fatalf("%d violations:\n%s", res.Violations(), b)
	}
	if res.Total.Fresh == 0 {
		t.Fatal("no read was judged")
	}
}

type testWriter string

func (w *testWriter) Write(p []byte) (int, error) { *w += testWriter(p); return len(p), nil }

// Each fault class, in a short fleet run: the fault is injected, reads
// happen during it, and none is a violation.
func TestFaultClasses(t *testing.T) {
	for _, kind := range AllFaults {
		t.Run(string(kind), func(t *testing.T) {
			cfg := Config{Keys: 32, Duration: 1500 * time.Millisecond, Seed: 1, Faults: Schedule([]FaultKind{kind}, DefaultNodes, 1)}
			res := simulate(t, cfg)
			noViolations(t, res)
			if len(res.Faults) != 1 || res.Faults[0].Skipped != "" {
				t.Fatalf("the fault was not injected: %+v", res.Faults)
			}
			var during int64
			for _, p := range res.Phases {
				if p.Name == string(kind) {
					during = p.Reads
				}
			}
			if during == 0 {
				t.Fatalf("no read began during the %s window", kind)
			}
		})
	}
}

// The faults of node processes, in a short run of node processes: one
// node stopped (SIGSTOP) for twice its lease while the others write keys
// it had just read into L1, then continued, its reads racing its own
// catching up; one node killed (SIGKILL) and started again. No read is a
// violation.
func TestProcFaults(t *testing.T) {
	cfg := Config{Procs: true, Keys: 32, Duration: 2 * time.Second, Seed: 1, Faults: Schedule(ProcFaults, DefaultNodes, 1)}
	res := simulate(t, cfg)
	noViolations(t, res)
	var w testWriter
	_ = res.WriteTable(&w)
	p := res.Procs
	switch {
	case len(res.Faults) != 2 || res.Faults[0].Skipped != "" || res.Faults[1].Skipped != "":
		t.Fatalf("the faults were not injected: %+v", res.Faults)
	case p.Pauses == 0 || p.Paused < 2*DefaultLeaseTTL || p.ResumeReads == 0:
		t.Fatalf("no pause of twice the lease with reads after it: %+v\n%s", p, w)
	case p.Killed != 1 || p.Started != DefaultNodes+1:
		t.Fatalf("the node was not killed and started again: %+v\n%s", p, w)
	}
	for _, ph := range res.Phases {
		if ph.Name != Steady && ph.Reads == 0 {
			t.Fatalf("no read began during the %s window:\n%s", ph.Name, w)
		}
	}
	t.Logf("\n%s", w)
}

// In one process there is no process to stop or kill: the faults that
// need node processes are reported as skipped, never silently left out.
func TestProcFaultsSkippedInOneProcess(t *testing.T) {
	res := simulate(t, Config{Keys: 8, Duration: 300 * time.Millisecond, Faults: Schedule(ProcFaults, DefaultNodes, 1)})
	noViolations(t, res)
	for _, f := range res.Faults {
		if !strings.Contains(f.Skipped, "own process") {
			t.Fatalf("fault %s not skipped: %+v", f.Kind, f)
		}
	}
}

// Every named scenario runs clean, and the freshness scenarios do what
// they are for: a scenario whose mode silently never engaged would prove
// nothing.
func TestScenarios(t *testing.T) {
	for _, s := range Scenarios {
		t.Run(s.Name, func(t *testing.T) {
			cfg := s.Build(1)
			cfg.Duration = 700 * time.Millisecond
			res := simulate(t, cfg, s.RedisArgs...)
			noViolations(t, res)
			if check := engaged[s.Name]; check != nil {
				f := res.Fleet
				t.Logf("permitted-stale %d (behind %d), not found %d, GetMany keys %d; fleet %+v",
					res.Total.PermittedStale, res.Total.PermittedBehind, res.NotFound, res.ManyReads, f)
				if msg := check(res); msg != "" {
					var w testWriter
					_ = res.WriteTable(&w)
					t.Fatalf("%s:\n%s", msg, w)
				}
			}
		})
	}
}

// onlyClaimantsFill says why not, if more values were offered to Redis
// than claimed fetches could have produced: a fetch without a claim
// (a loser's, R10) must never fill.
func onlyClaimantsFill(res *Result) string {
	f := res.Fleet
	if fills := f.FillsLanded + f.FillsRefused; int64(fills) > res.SourceReads-int64(f.UncachedFetches) {
		return fmt.Sprintf("%d fills from %d source reads of which %d uncached: a fetch without a claim filled", fills, res.SourceReads, f.UncachedFetches)
	}
	return ""
}

// engaged checks, per freshness scenario, that its mode was exercised: it
// returns why not, or "".
var engaged = map[string]func(*Result) string{
	"R10": func(res *Result) string {
		if res.Fleet.Waits == 0 {
			return "no loser waited for a claimant"
		}
		return onlyClaimantsFill(res)
	},
	"R10-serve-stale": func(res *Result) string {
		if res.Total.PermittedStale == 0 {
			return "no loser was served a stale value"
		}
		return onlyClaimantsFill(res)
	},
	"R10-fetch": func(res *Result) string {
		if res.Fleet.UncachedFetches == 0 {
			return "no loser fetched without caching"
		}
		return onlyClaimantsFill(res)
	},
	"R11": func(res *Result) string {
		switch {
		case res.NotFound == 0 || res.Fleet.NegativeHits == 0:
			return "no read was answered by a cached \"not found\""
		case res.ManyReads == 0:
			return "no GetMany"
		}
		return ""
	},
	"R34": func(res *Result) string {
		switch {
		case res.Total.PermittedStale == 0:
			return "no permitted-stale read: stale serving never happened"
		case res.Fleet.Refreshes == 0:
			return "no background refresh"
		}
		return ""
	},
	"R35": func(res *Result) string {
		if res.Fleet.Refreshes == 0 {
			return "no early refresh"
		}
		return ""
	},
}

// The negative controls: with the protocol broken on purpose, the checker
// reports violations. A checker that saw nothing here would prove nothing.
// Each control's driver forces its race Drives times, whatever the load on
// the machine, and every drive must show as a violation of its own key.
func TestNegativeControls(t *testing.T) {
	for _, b := range Breaks {
		t.Run(string(b), func(t *testing.T) {
			cfg := NegativeControl(b, 1)
			res := simulate(t, cfg)
			t.Logf("%s: %d violations %v (%d on the %d driven races) in %s, %d key writes", b, res.Violations(), res.Total.ByClass,
				res.DrivenViolations, res.Driven, res.Elapsed.Round(time.Millisecond), res.Writes)
			var w testWriter
			_ = res.WriteTable(&w)
			switch {
			case res.Short != "":
				t.Fatalf("the control's run was cut short, %s:\n%s", res.Short, w)
			case res.Violations() == 0:
				t.Fatalf("the protocol is broken (%s) and the checker saw no violation:\n%s", b, w)
			case res.DrivenViolations < int64(cfg.Drives):
				t.Fatalf("the race was driven %d times and the checker saw %d violations of its keys:\n%s", res.Driven, res.DrivenViolations, w)
			}
		})
	}
}

// The same seed gives every worker the same operations and the run the
// same fault schedule: in a run of a fixed number of operations, the
// counts of reads and writes are the seed's, whatever the interleaving.
func TestSeedFixesTheSchedule(t *testing.T) {
	counts := func(seed int64) [2]int64 {
		res := simulate(t, Config{Ops: 3000, Keys: 16, Seed: seed})
		return [2]int64{res.Total.Reads, res.Writes}
	}
	a, b, c := counts(7), counts(7), counts(8)
	if a != b {
		t.Fatalf("seed 7 gave reads, writes %v, then %v", a, b)
	}
	if a == c {
		t.Fatalf("seeds 7 and 8 gave the same reads, writes %v", a)
	}
	if s1, s2 := Schedule(AllFaults, 5, 3), Schedule(AllFaults, 5, 3); !slices.Equal(s1, s2) {
		t.Fatalf("schedules of one seed differ:\n%v\n%v", s1, s2)
	}
	prev := 0.0
	for _, f := range Schedule(AllFaults, 5, 3) {
		if f.Start < prev || f.End <= f.Start || f.End > 1 || f.Node < 0 || f.Node >= 5 {
			t.Fatalf("bad window %+v after %v", f, prev)
		}
		prev = f.End
	}
}
