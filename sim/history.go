package sim

import (
	"errors"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// clock is the one clock of a run: every event of every node is stamped
// with it, in nanoseconds of the process's monotonic clock since the run
// began. All nodes are in this process, so their events are ordered
// exactly.
type clock struct{ t0 time.Time }

func (c *clock) now() int64 { return int64(time.Since(c.t0)) }

// outcome is how a write's Invalidate, Set or InvalidateGroup returned.
type outcome uint8

const (
	wroteOK      outcome = iota // returned nil: announced to the fleet
	wrotePending                // ErrPending: applied locally, queued for replay
	wroteFailed                 // any other error
)

// write is one key's write: the source's version bumped, then the cache
// told, through node Node, between Start and End.
type write struct {
	Start, End int64
	Version    int64
	Key        int32
	Node       int16
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

// read is one Get on node Node by worker Worker, between Start and End.
type read struct {
	Start, End int64
	Version    int64
	Key        int32
	Node       int16
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
}

// history is everything a run recorded.
type history struct {
	reads   []read // each worker's reads in its order, worker after worker
	writes  []write
	windows []window
	fetches []int64
	end     int64
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
