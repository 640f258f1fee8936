package sim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// FaultKind names a class of fault.
type FaultKind string

// The fault classes. Each is one phase of a run's report.
const (
	// SubCut kills every subscription connection (CLIENT KILL TYPE pubsub)
	// at the start of the window and again every 200ms within it (R15, R16).
	SubCut FaultKind = "sub-cut"
	// Partition blackholes one node's traffic to Redis for the window, both
	// its commands and its subscription (R17, R27).
	Partition FaultKind = "partition"
	// Restart restarts Redis without persistence at the start of the
	// window (R23).
	Restart FaultKind = "restart"
	// Flush runs FLUSHALL at the start of the window (R23, R26).
	Flush FaultKind = "flush"
	// SlowFetch makes one fetch in four outlast the flag TTL during the
	// window (R04, R05, R08).
	SlowFetch FaultKind = "slow-fetch"
	// FetchError makes one fetch in three fail during the window.
	FetchError FaultKind = "fetch-error"
	// RedisLatency delays one node's Redis traffic by Config.FaultDelay each
	// way during the window.
	RedisLatency FaultKind = "latency"
	// Pause stops one node's process (SIGSTOP) and continues it (SIGCONT),
	// in cycles for the window: the node first reads a few keys into its
	// L1, other nodes write those keys while it is stopped, it stays
	// stopped Config.PauseFor (at least twice its lease), and it reads the
	// keys again the moment it resumes (R40). Config.Procs only.
	Pause FaultKind = "pause"
	// NodeKill kills one node's process (SIGKILL) at the start of the
	// window and starts it again: its unfinished operations never return,
	// its claims expire, and the new process starts with an empty L1.
	// Config.Procs only.
	NodeKill FaultKind = "node-kill"
	// Failover SIGKILLs the master of one shard of a Redis Cluster (one
	// that holds keys of the run, picked by the seed) at the start of the
	// window, waits until its replica has taken its slots over, and starts
	// it again, empty, to rejoin as the new master's replica: writes to
	// its slots fail until the promotion (and, with WaitReplicas, until
	// the promoted master has a replica again), its connections and, if it
	// served the bus's slot, every subscription break. A cluster the
	// simulation owns only (ClusterBackend).
	Failover FaultKind = "failover"
	// Reshard moves slots to the next master with their keys (CLUSTER
	// SETSLOT, MIGRATE), in cycles for the window, while the nodes read and
	// write them: each cycle the slot of a hot key of the run (the most
	// popular first under Zipf, else by the seed), then the bus's slot,
	// whose move ends every subscription. Commands meet ASK, TRYAGAIN and
	// MOVED meanwhile. A cluster the simulation owns only
	// (ClusterBackend).
	Reshard FaultKind = "reshard"
)

// Steady is the phase of reads that begin outside every fault window.
const Steady = "steady"

// faultKinds are the fault classes, and whether each targets one node.
var faultKinds = map[FaultKind]bool{
	SubCut: false, Partition: true, Restart: false, Flush: false,
	SlowFetch: false, FetchError: false, RedisLatency: true,
	Pause: true, NodeKill: true,
	Failover: false, Reshard: false,
}

// proxiedKinds are the faults that need their node behind a fault proxy.
var proxiedKinds = map[FaultKind]bool{Partition: true, RedisLatency: true}

// AllFaults lists every fault class a run in one process can inject, in
// the order of a full schedule.
var AllFaults = []FaultKind{SubCut, Partition, Restart, Flush, SlowFetch, FetchError, RedisLatency}

// ProcFaults lists the fault classes that need every node in its own
// process (Config.Procs); a full schedule of such a run ends with them.
var ProcFaults = []FaultKind{Pause, NodeKill}

// ClusterFaults lists the fault classes that need a Redis Cluster the
// simulation owns (a ClusterBackend); a full schedule of a run on one
// lists them after AllFaults. Their windows may not overlap: the cluster
// is failed over or resharded one change at a time.
var ClusterFaults = []FaultKind{Failover, Reshard}

// ParseFaults reads a comma-separated list of fault classes; "all" is
// every class of AllFaults, and of ClusterFaults if cluster, and of
// ProcFaults if procs, in that order; "" or "none" is none.
func ParseFaults(s string, procs, cluster bool) ([]FaultKind, error) {
	switch s {
	case "", "none":
		return nil, nil
	case "all":
		out := slices.Clone(AllFaults)
		if cluster {
			out = append(out, ClusterFaults...)
		}
		if procs {
			out = append(out, ProcFaults...)
		}
		return out, nil
	}
	var out []FaultKind
	for _, f := range strings.Split(s, ",") {
		k := FaultKind(strings.TrimSpace(f))
		if _, ok := faultKinds[k]; !ok {
			return nil, fmt.Errorf("sim: unknown fault %q (want %s or all)", k, joinKinds(slices.Concat(AllFaults, ClusterFaults, ProcFaults)))
		}
		out = append(out, k)
	}
	return out, nil
}

func joinKinds(ks []FaultKind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

// Fault is one fault window of a run, in fractions of the run's progress
// (operations done over Ops, or time over Duration).
type Fault struct {
	// Kind is the fault class.
	Kind FaultKind
	// Node is the node a Partition or Latency fault cuts off or slows, or
	// a Pause or NodeKill fault stops or kills; ignored by the others.
	Node int
	// Start and End bound the window: 0 <= Start < End <= 1.
	Start, End float64
}

// Schedule spreads one window of each kind over a run: the run is cut in
// 2*len(kinds)+1 equal slots, faults in the odd ones with steady slots
// between them so that each fault's recovery is seen, and the seed picks
// the node of each node fault and jitters each window by up to a tenth of
// a slot.
func Schedule(kinds []FaultKind, nodes int, seed int64) []Fault {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	slot := 1 / float64(2*len(kinds)+1)
	out := make([]Fault, 0, len(kinds))
	for i, k := range kinds {
		j := (rng.Float64() - 0.5) * slot / 5
		f := Fault{Kind: k, Start: float64(2*i+1)*slot + j, End: float64(2*i+2)*slot + j}
		if faultKinds[k] {
			f.Node = rng.IntN(nodes)
		}
		out = append(out, f)
	}
	return out
}
