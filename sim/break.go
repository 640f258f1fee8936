package sim

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/tier"
)

// Break is a negative control: a deliberate break of the protocol through
// tier's test-only hooks (not public API), so that a test can show the
// checker reports violations when the protocol is broken. A checker that
// sees nothing then proves nothing.
type Break string

// The negative controls of docs/RACES.md.
const (
	// BreakNone runs the protocol as built.
	BreakNone Break = ""
	// ConstantFlag claims every key with the same token, as the original
	// cachecow did: a fill whose claim was invalidated and re-claimed by
	// another fetcher lands (R03).
	ConstantFlag Break = "constant-flag"
	// PublishBeforeDelete publishes an invalidation before it deletes the
	// value in Redis. Between the two, each other node is let apply the
	// message and then reads the key, refilling its L1 from the old value
	// after it evicted it (R14).
	PublishBeforeDelete Break = "publish-before-delete"
	// NoL1Fence fills L1 without checking the fill epoch, so a value read
	// before an invalidation lands in L1 after its message (R12, R13).
	NoL1Fence Break = "no-l1-fence"
	// NoForget keeps a key's flight joinable after an invalidation, so a
	// read that began after the invalidation gets the old flight's value
	// (R20).
	NoForget Break = "no-forget"
	// CoarseLease checks each node's L1 lease against the coarse clock
	// that a ticker goroutine advances, instead of the monotonic clock
	// read at the hit: a node process resumed from a pause longer than
	// its lease serves L1 entries, invalidated while it was stopped, to
	// the reads that run before its ticker does (R40). Its run is of node
	// processes (Config.Procs) under the Pause fault; a pause drives the
	// race when one of the reads the node begins the moment it resumes is
	// answered by the L1 entry it held before the pause.
	CoarseLease Break = "coarse-lease"
)

var breaks = map[Break]bool{BreakNone: true, ConstantFlag: true, PublishBeforeDelete: true, NoL1Fence: true, NoForget: true, CoarseLease: true}

// Breaks lists the negative controls.
var Breaks = []Break{ConstantFlag, PublishBeforeDelete, NoL1Fence, NoForget, CoarseLease}

// ParseBreak reads a negative control's name; "" or "none" is BreakNone.
func ParseBreak(s string) (Break, error) {
	if s == "none" {
		return BreakNone, nil
	}
	if b := Break(s); breaks[b] {
		return b, nil
	}
	names := make([]string, len(Breaks))
	for i, b := range Breaks {
		names[i] = string(b)
	}
	slices.Sort(names)
	return "", fmt.Errorf("sim: unknown break %q (want one of %s)", s, strings.Join(names, ", "))
}

// breakPoints returns the hooks that make node i break the protocol as the
// run's Break says, with the points its driver holds and watches, or nil
// for BreakNone.
func (r *run) breakPoints(i int) *hooks.Points {
	var p *hooks.Points
	switch r.cfg.Break {
	case ConstantFlag:
		p = &hooks.Points{Token: func() string { return "constant" }}
	case PublishBeforeDelete:
		p = &hooks.Points{
			PublishBeforeDelete: true,
			BetweenPublishAndDelete: func(seq uint64, keys []string) {
				r.refillStale(i, seq, keys)
			},
		}
	case NoL1Fence:
		p = &hooks.Points{L1: &l1.Hooks{NoFence: true}}
	case NoForget:
		p = &hooks.Points{NoForget: true}
	}
	if drivers[r.cfg.Break] == nil {
		return p
	}
	p.AfterRead = func(s string) { r.gates.reach(atAfterRead, i, s) }
	p.BeforeFill = func(s string) { r.gates.reach(atBeforeFill, i, s) }
	p.Flight = func(s string, _ bool) { r.gates.reach(atFlight, i, s) }
	p.Bus = &bus.Hooks{
		Applied: func(m *bus.Message) {
			r.applied[i].set(m.Seq)
			if r.gates.armed.Load() == 0 {
				return
			}
			for _, g := range m.Groups {
				for _, k := range g.Keys {
					r.gates.reach(atApplied, i, k)
				}
			}
		},
		Renewed: func(sentAt time.Time) { r.leases[i].renewed(sentAt, r.cfg.LeaseTTL) },
		Dropped: func(bus.Reason) { r.leases[i].dropped() },
	}
	return p
}

// procPoints returns the hooks of a node process under the negative
// control b (only CoarseLease runs in node processes), or nil.
func procPoints(b Break) *hooks.Points {
	if b == CoarseLease {
		return &hooks.Points{L1: &l1.Hooks{CoarseLease: true}}
	}
	return nil
}

// refillStale is R14's race, driven: node w has published the message seq
// naming keys and not yet deleted them. Each other node, once it has
// applied the message (evicting the keys from its L1), reads them: its L1
// misses, Redis still holds the old values, and they go back into its L1,
// where they outlive the bound. A node that has not applied the message
// within a lease has dropped its L1 anyway, and is skipped.
func (r *run) refillStale(w int, seq uint64, keys []string) {
	for j, m := range r.fleet {
		if j == w || !r.applied[j].await(seq, r.cfg.LeaseTTL) {
			continue
		}
		for _, s := range keys {
			k, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			var ri tier.ReadInfo
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.LeaseTTL)
			_, err = m.cache.Get(ctx, k, tier.Info(&ri))
			cancel()
			if err == nil && ri.Source == tier.SourceL2 {
				r.gates.reach(atRefilled, j, s) // now in its L1
			}
		}
	}
}

// seqWatch is the highest bus sequence number a node has applied, for a
// hook to wait on.
type seqWatch struct {
	mu      sync.Mutex
	seq     uint64
	changed chan struct{} // closed and replaced when seq grows
}

func newSeqWatch() *seqWatch { return &seqWatch{changed: make(chan struct{})} }

func (w *seqWatch) set(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq > w.seq {
		w.seq = seq
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// await reports whether seq was applied within timeout.
func (w *seqWatch) await(seq uint64, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		w.mu.Lock()
		done, changed := w.seq >= seq, w.changed
		w.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

// NegativeControl returns the run that shows b's bug however loaded the
// machine is: a driver forces the race's exact interleaving Drives times
// (see Config.Drives), and the run lasts until it has, and until MinWrites
// key writes of a workload that opens the race by chance too have
// returned, whatever Duration says.
func NegativeControl(b Break, seed int64) Config {
	c := Config{Break: b, Seed: seed, Duration: 500 * time.Millisecond, MinWrites: 20, Drives: 3}
	switch b {
	case ConstantFlag:
		// A slow fetch of v1 fills under a token that a newer claim reuses.
		c.Keys, c.Groups = 2, 1
		c.Mix = Mix{Read: 60, Invalidate: 40}
		c.FetchLatency = Latency{Max: 4 * time.Millisecond}
	case PublishBeforeDelete:
		// The hook refills the other node's L1 with the old value after
		// each write; it shows as a violation once it outlives the bound,
		// so the lease is short and writes of a key are rare against
		// many reads. Two nodes: each reads what the other wrote.
		c.Nodes, c.Goroutines, c.Keys, c.Groups = 2, 6, 256, 4
		c.Mix = Mix{Read: 99, Invalidate: 1}
		c.LeaseTTL, c.Slack = 200*time.Millisecond, 50*time.Millisecond
	case NoL1Fence:
		// By chance, a second write of a key must land between a node's
		// Redis read and its L1 fill; the stale entry then lives until
		// the next. The driver holds the fill open instead.
		c.Keys, c.Groups = 8, 2
		c.Mix = Mix{Read: 990, Invalidate: 10}
		c.LeaseTTL, c.Slack = 200*time.Millisecond, 50*time.Millisecond
	case NoForget:
		// A node reads a key right after its own write while its older
		// flight of that key still runs: read-your-writes.
		c.Goroutines, c.Keys, c.Groups = 8, 2, 1
		c.Mix = Mix{Read: 70, Invalidate: 30}
		c.FetchLatency = Latency{5 * time.Millisecond, 10 * time.Millisecond}
	case CoarseLease:
		// Node processes; one is paused in cycles for the whole run, each
		// after it read a few keys into its L1 and while other nodes
		// write them, until a read it begins the moment it resumes has
		// been answered from that L1 twice. A short lease keeps the
		// cycles short.
		c.Procs, c.Keys, c.Groups = true, 32, 4
		c.Mix = Mix{Read: 90, Invalidate: 10}
		c.LeaseTTL, c.Slack = 200*time.Millisecond, 50*time.Millisecond
		c.Faults = []Fault{{Kind: Pause, Start: 0, End: 1}}
		c.Drives = 2
		c.MaxWindow = DefaultDeadline
	}
	return c
}
