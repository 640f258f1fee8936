package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/sim"
)

func TestMain(m *testing.M) {
	sim.NodeProcess() // -procs starts this binary as its nodes
	redis.SetLogger(quietRedis{})
	goleak.VerifyTestMain(m)
}

// On the embedded Redis, every fault class runs or is reported as skipped
// by the backend, the table ends with the verdict, the plots are written,
// and the exit status is 0.
func TestEmbeddedAllFaults(t *testing.T) {
	dir := t.TempDir()
	var out, errs bytes.Buffer
	code := run([]string{"-embedded", "-q", "-duration", "1500ms", "-keys", "32", "-report", dir}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errs)
	}
	if !strings.Contains(errs.String(), "embedded miniredis") || !strings.Contains(out.String(), "RESULT   0 violations") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", &out, &errs)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "sub-cut") && strings.Contains(line, "..") {
			t.Fatalf("the embedded Redis cannot kill subscriptions, yet the fault reads as injected: %q", line)
		}
	}
	for _, f := range []string{"staleness.png", "latency.png", "source_reads.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Fatalf("plot %s: %v", f, err)
		}
	}
}

// A negative control exits 1 and says why, in JSON too.
func TestBreakExitsNonZero(t *testing.T) {
	var out, errs bytes.Buffer
	code := run([]string{"-embedded", "-q", "-json", "-break", "no-forget"}, &out, &errs)
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstderr:\n%s", code, &errs)
	}
	var res struct {
		Total struct {
			Violations int64 `json:"violations"`
		} `json:"total"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Total.Violations == 0 {
		t.Fatalf("JSON %v: %s", err, &out)
	}
}

// The freshness flags reach the run: the table names them, and stale
// serving, negative caching and GetMany happen without a violation.
func TestFreshnessFlags(t *testing.T) {
	var out, errs bytes.Buffer
	code := run([]string{"-embedded", "-q", "-duration", "700ms", "-keys", "16", "-faults", "none", "-mix", "90/6/4/0",
		"-ttl", "40ms", "-fresh-for", "20ms", "-max-stale", "300ms", "-fetch-timeout", "30ms", "-fail-safe-throttle", "20ms",
		"-losers", "serve-stale", "-early-refresh", "2", "-absent", "-not-found-ttl", "1m", "-many", "20", "-many-keys", "3"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errs)
	}
	for _, want := range []string{"fresh for 20ms of TTL 40ms", "max stale 300ms", "losers serve-stale", "early refresh 2",
		"not-found TTL 1m0s", "keys absent until inserted", "20% of reads GetMany of 3 keys", "RESULT   0 violations"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in the table:\n%s", want, &out)
		}
	}
	if code := run([]string{"-embedded", "-q", "-losers", "never"}, &out, &errs); code != 2 {
		t.Fatalf("-losers never: exit %d, want 2", code)
	}
}

// -procs runs every node as its own process (this test binary started
// again), with the pause and node-kill faults, and -break coarse-lease
// shows its bug there.
func TestProcs(t *testing.T) {
	var out, errs bytes.Buffer
	code := run([]string{"-q", "-procs", "-faults", "pause,node-kill", "-duration", "2s", "-keys", "32", "-lease", "200ms"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errs)
	}
	for _, want := range []string{"3 node processes x 4 workers", "pause (node ", "node-kill (node ", "1 killed", "RESULT   0 violations"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in the table:\n%s", want, &out)
		}
	}
	out.Reset()
	if code := run([]string{"-q", "-break", "coarse-lease"}, &out, &errs); code != 1 {
		t.Fatalf("-break coarse-lease: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, &out, &errs)
	}
	if !strings.Contains(out.String(), "l1-beyond-bound") {
		t.Fatalf("-break coarse-lease without stale L1 reads:\n%s", &out)
	}
}

// -cluster runs the fleet on a private Redis Cluster with the failover and
// reshard faults: no read is a violation, both faults ran (a master
// replaced by its replica, a hot key's slot and the bus's moved), writes
// waited for a replica, group invalidations were left out of the mix, and
// the table counts every shard.
func TestCluster(t *testing.T) {
	var out, errs bytes.Buffer
	code := run([]string{"-cluster", "-q", "-faults", "reshard,failover", "-duration", "2s", "-keys", "32"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &out, &errs)
	}
	for _, want := range []string{"private Redis Cluster, 3 masters with 1 replica each", "mix read/inv/set/group 90/6/4/0",
		"wait for 1 replica to acknowledge them", "shards   0  slots 0-5460", "promoted", "back as its replica", "(the bus) shard",
		"  failover  ", "  reshard  ", "RESULT   0 violations"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q in the table:\n%s\nstderr:\n%s", want, &out, &errs)
		}
	}
	if strings.Contains(out.String(), "SKIPPED") || !strings.Contains(errs.String(), "each of the 16,384 slots") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", &out, &errs)
	}
	t.Logf("\n%s", &out)
}

// -redis with several addresses names a cluster's seeds: the run asks them
// for the cluster's slots. -cluster cannot be the embedded Redis.
func TestClusterFlags(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run([]string{"-q", "-redis", "127.0.0.1:1,127.0.0.1:2", "-faults", "none"}, &out, &errs); code != 2 || !strings.Contains(errs.String(), "CLUSTER SLOTS") {
		t.Fatalf("-redis A,B with no cluster there: exit %d, want 2 and CLUSTER SLOTS asked\nstderr:\n%s", code, &errs)
	}
	errs.Reset()
	if code := run([]string{"-q", "-cluster", "-embedded"}, &out, &errs); code != 2 || !strings.Contains(errs.String(), "no cluster") {
		t.Fatalf("-cluster -embedded: exit %d, want 2\nstderr:\n%s", code, &errs)
	}
}
