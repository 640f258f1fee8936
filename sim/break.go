package sim

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
)

// Break is a negative control: a deliberate break of the protocol through
// tier's test-only hooks (not public API), so that a test can show the
// checker reports violations when the protocol is broken. A checker that
// sees nothing then proves nothing.
type Break string

// The negative controls of RACES.md.
const (
	// BreakNone runs the protocol as built.
	BreakNone Break = ""
	// ConstantFlag claims every key with the same token, as the original
	// cachecow did: a fill whose claim was invalidated and re-claimed by
	// another fetcher lands (R03).
	ConstantFlag Break = "constant-flag"
	// PublishBeforeDelete publishes an invalidation before it deletes the
	// value in Redis, with BreakDelay between, so a node can refill its L1
	// from the old value after it evicted it (R14).
	PublishBeforeDelete Break = "publish-before-delete"
	// NoL1Fence fills L1 without checking the fill epoch, and delays every
	// fill by BreakDelay after its Redis read, so a value read before an
	// invalidation lands in L1 after its message (R12, R13).
	NoL1Fence Break = "no-l1-fence"
	// NoForget keeps a key's flight joinable after an invalidation, so a
	// read that began after the invalidation gets the old flight's value
	// (R20).
	NoForget Break = "no-forget"
)

var breaks = map[Break]bool{BreakNone: true, ConstantFlag: true, PublishBeforeDelete: true, NoL1Fence: true, NoForget: true}

// Breaks lists the negative controls.
var Breaks = []Break{ConstantFlag, PublishBeforeDelete, NoL1Fence, NoForget}

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

// points returns the hooks that make a node break the protocol as b says,
// or nil for BreakNone.
func (b Break) points(delay time.Duration) *hooks.Points {
	switch b {
	case ConstantFlag:
		return &hooks.Points{Token: func() string { return "constant" }}
	case PublishBeforeDelete:
		return &hooks.Points{
			PublishBeforeDelete:     true,
			BetweenPublishAndDelete: func() { time.Sleep(delay) },
		}
	case NoL1Fence:
		return &hooks.Points{
			L1:        &l1.Hooks{NoFence: true},
			AfterRead: func(string) { time.Sleep(delay) },
		}
	case NoForget:
		return &hooks.Points{NoForget: true}
	}
	return nil
}

// NegativeControl returns the run that shows b's bug quickly and reliably:
// the workload that opens its race window often, and hook-injected delays
// that widen it.
func NegativeControl(b Break, seed int64) Config {
	c := Config{Break: b, Seed: seed, Duration: 2 * time.Second}
	switch b {
	case ConstantFlag:
		// A slow fetch of v1 fills under a token that a newer claim reuses.
		c.Keys, c.Groups = 2, 1
		c.Mix = Mix{Read: 60, Invalidate: 40}
		c.FetchLatency = Latency{Max: 4 * time.Millisecond}
	case PublishBeforeDelete:
		// A stale L1 entry shows as a violation once it outlives the bound,
		// so writes of a key are rare against many reads, the lease is
		// short, and the hook holds the delete back long enough for the
		// other node to apply the message and re-read the old value, even
		// on a loaded machine. Two nodes: each reads what the other wrote.
		c.Nodes, c.Goroutines, c.Keys, c.Groups = 2, 6, 32, 4
		c.Mix = Mix{Read: 997, Invalidate: 3}
		c.LeaseTTL, c.Slack = 100*time.Millisecond, 50*time.Millisecond
		c.BreakDelay = 20 * time.Millisecond
	case NoL1Fence:
		// The window is between a node's Redis read (after its L1
		// missed, so after a write) and its L1 fill: a second write of
		// the key must land within BreakDelay of the first, and the
		// stale entry then lives until the next. About a dozen writes a
		// second per key balance the two.
		c.Keys, c.Groups = 8, 2
		c.Mix = Mix{Read: 990, Invalidate: 10}
		c.LeaseTTL, c.Slack = 100*time.Millisecond, 50*time.Millisecond
		c.BreakDelay = 30 * time.Millisecond
	case NoForget:
		// A node reads a key right after its own write while its older
		// flight of that key still runs: read-your-writes.
		c.Goroutines, c.Keys, c.Groups = 8, 2, 1
		c.Mix = Mix{Read: 70, Invalidate: 30}
		c.FetchLatency = Latency{5 * time.Millisecond, 10 * time.Millisecond}
	}
	return c
}
