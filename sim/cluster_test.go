package sim

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// clusterMix is a workload without group invalidations, each of which
// runs a script in every slot of a cluster and would leave a short run
// few operations.
var clusterMix = Mix{Read: 90, Invalidate: 6, Set: 4}

// runOn runs cfg against b and fails the test if the run could not be set
// up or carried out.
func runOn(t *testing.T, cfg Config, b Backend) *Result {
	t.Helper()
	res, err := Run(context.Background(), cfg, b)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// table is the result's table, for failure messages.
func table(res *Result) string {
	var w testWriter
	_ = res.WriteTable(&w)
	return string(w)
}

// On a private Redis Cluster (3 masters with a replica each), one run
// after another:
//
//   - every fault class of a run in one process, and the cluster's own
//     (a master SIGKILLed, replaced by its replica and back as a replica;
//     slots of a hot key and of the bus moved while the nodes use them),
//     runs without a violation, and the table counts every read and write
//     for the shard that served it;
//   - group invalidations, which touch every slot, stay correct while
//     slots move;
//   - the negative controls that run in one process are still caught;
//   - pointed at the same cluster as one it does not own, the run skips
//     the faults that would change it.
func TestCluster(t *testing.T) {
	b, stop, err := LaunchCluster()
	if err != nil {
		t.Fatalf("LaunchCluster: %v", err)
	}
	t.Cleanup(stop)

	t.Run("faults", func(t *testing.T) {
		cfg := Config{Keys: 32, Duration: 2 * time.Second, Seed: 1, Mix: clusterMix, WaitReplicas: 1,
			Faults: Schedule(slices.Concat(AllFaults, ClusterFaults), DefaultNodes, 1)}
		res := runOn(t, cfg, b)
		noViolations(t, res)
		tb := table(res)
		for _, f := range res.Faults {
			if f.Skipped != "" {
				t.Fatalf("fault %s skipped on a private cluster: %s\n%s", f.Kind, f.Skipped, tb)
			}
		}
		checkClusterFaults(t, res, tb)
		var reads, writes int64
		for _, sh := range res.Shards {
			reads += sh.Total.Reads.Reads
			writes += sh.Total.Writes
		}
		if len(res.Shards) != 3 || reads != res.Total.Reads || writes != res.Writes {
			t.Fatalf("%d shards count %d reads and %d writes of %d and %d:\n%s", len(res.Shards), reads, writes, res.Total.Reads, res.Writes, tb)
		}
		t.Logf("\n%s", tb)
	})

	t.Run("groups", func(t *testing.T) {
		cfg := Config{Keys: 16, Groups: 2, Duration: time.Second, Seed: 2, Mix: Mix{Read: 80, Invalidate: 10, Set: 5, Group: 5},
			RedisTimeout: time.Second, WaitReplicas: 1, Faults: []Fault{{Kind: Reshard, Start: 0.2, End: 0.8}}}
		res := runOn(t, cfg, b)
		noViolations(t, res)
		if len(res.Moves) == 0 {
			t.Fatalf("no slot moved:\n%s", table(res))
		}
	})

	t.Run("controls", func(t *testing.T) {
		for _, brk := range []Break{ConstantFlag, PublishBeforeDelete, NoL1Fence, NoForget} {
			t.Run(string(brk), func(t *testing.T) {
				cfg := NegativeControl(brk, 1)
				cfg.WaitReplicas = 1
				res := runOn(t, cfg, b)
				switch {
				case res.Short != "":
					t.Fatalf("the control's run was cut short, %s:\n%s", res.Short, table(res))
				case res.DrivenViolations < int64(cfg.Drives):
					t.Fatalf("the race was driven %d times and the checker saw %d violations of its keys:\n%s", res.Driven, res.DrivenViolations, table(res))
				}
			})
		}
	})

	t.Run("not owned", func(t *testing.T) {
		cfg := Config{Keys: 8, Duration: 300 * time.Millisecond, Mix: clusterMix,
			Faults: Schedule([]FaultKind{Restart, Flush, Failover, Reshard}, DefaultNodes, 1)}
		res := runOn(t, cfg, ExternalCluster(b.(ClusterBackend).Seeds()))
		noViolations(t, res)
		for _, f := range res.Faults {
			if !strings.Contains(f.Skipped, "does not own") {
				t.Fatalf("fault %s not skipped on a cluster the run does not own: %+v", f.Kind, f)
			}
		}
		if len(res.Shards) != 3 {
			t.Fatalf("%d shards:\n%s", len(res.Shards), table(res))
		}
	})
}

// checkClusterFaults fails the test unless the failover replaced a master
// while reads went on, and the reshard moved a hot key's slot and the
// bus's.
func checkClusterFaults(t *testing.T, res *Result, tb string) {
	t.Helper()
	var replaced bool
	for _, sh := range res.Shards {
		replaced = replaced || len(sh.Masters) == 2
	}
	var key, bus bool
	for _, m := range res.Moves {
		key, bus = key || m.Key >= 0, bus || m.Key < 0
	}
	var during int64
	for _, p := range res.Phases {
		if p.Name == string(Failover) {
			during = p.Reads
		}
	}
	switch {
	case !replaced:
		t.Fatalf("no shard's master was replaced:\n%s", tb)
	case during == 0:
		t.Fatalf("no read began during the failover:\n%s", tb)
	case !key || !bus:
		t.Fatalf("the reshard moved %d slots, of a key %v, of the bus %v:\n%s", len(res.Moves), key, bus, tb)
	}
}

// On one server there is no cluster to fail over or reshard: those faults
// are reported as skipped, and the table has no shards.
func TestClusterFaultsSkippedOnOneServer(t *testing.T) {
	res := simulate(t, Config{Keys: 8, Duration: 300 * time.Millisecond, Faults: Schedule(ClusterFaults, DefaultNodes, 1)})
	noViolations(t, res)
	for _, f := range res.Faults {
		if !strings.Contains(f.Skipped, "needs a Redis Cluster") {
			t.Fatalf("fault %s not skipped: %+v", f.Kind, f)
		}
	}
	if tb := table(res); res.Shards != nil || strings.Contains(tb, "shards") {
		t.Fatalf("shards on one server:\n%s", tb)
	}
}
