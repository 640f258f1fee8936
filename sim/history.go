package sim

import (
	"errors"

	"github.com/tiercache/tiercache/tier"
)

// outcome is how a write's Invalidate, Set or InvalidateGroup returned.
type outcome uint8

const (
	wroteOK      outcome = iota // returned nil: announced to the fleet
	wrotePending                // ErrPending: applied locally, queued for replay
	wroteFailed                 // any other error
)

// write is one key's write: the source's version bumped, then the cache
// told, through incarnation Inc of node Node, between Start and End. A
// write whose call never returned (its node was killed) has no record.
type write struct {
	Start, End int64
	Version    int64
	Key        int32
	Node       int16
	Inc        uint16 // restarts of the node before this write (node-kill)
	Outcome    outcome
	Kind       writeKind
}

// writeKind is how a write told the cache.
type writeKind uint8

const (
	byInvalidate writeKind = iota
	bySet
	byGroup
)

func (k writeKind) String() string {
	return [...]string{"invalidate", "set", "group"}[k]
}

// read is one Get on incarnation Inc of node Node by worker Worker,
// between Start and End.
type read struct {
	Start, End int64
	Version    int64
	Key        int32
	Node       int16
	Inc        uint16
	Worker     int32
	Source     tier.Source
	Shared     bool // joined a load another Get on this node started
	Many       bool // one key of a GetMany: the answering tier is unknown
	NotFound   bool // answered "not found": version 0
	Permitted  bool // a permitted-stale value (see isPermittedStale)
	Err        bool // the Get failed and returned no value to judge
	WrongKey   bool // the value belongs to another key
}

// window is a fault's actual span on the run's clock.
type window struct {
	Kind       FaultKind
	Node       int
	Start, End int64
	Skipped    string // why the backend could not inject it, if it could not
	Detail     string // what it did, if that was decided as it ran
}

// history is everything a run recorded.
type history struct {
	reads   []read // each worker's reads in its order, worker after worker
	writes  []write
	windows []window
	fetches []int64
	end     int64
	stats   FleetStats
	procs   *ProcStats  // with Config.Procs
	cluster *clusterRun // on a ClusterBackend
}

// isPermittedStale reports whether a Get's answer is a stale value that
// the caller opted into (stale-while-revalidate, fail-safe, a loser served
// stale): counted apart, its age never a violation (its version is still
// judged against the writes that returned before it). This is the one
// place that knows how tier marks such a read.
func isPermittedStale(ri tier.ReadInfo, err error) bool {
	// A fail-safe answer also comes with an error wrapping tier.ErrStale.
	return ri.Stale || errors.Is(err, tier.ErrStale)
}
