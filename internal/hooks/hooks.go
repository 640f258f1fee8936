package hooks

import (
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/l1"
)

// Points are the hooks of one Node. Nil funcs are skipped.
type Points struct {
	// Token, when set, replaces the random claim token. A constant Token is
	// the negative control of R03 (cachecow's constant flag).
	Token func() string
	// NoForget keeps a key's flight joinable after an invalidation: the
	// negative control of R20.
	NoForget bool
	// Flight runs when a Get has registered with a key's flight: started
	// is true if it started the flight, false if it joined one.
	Flight func(key string, started bool)
	// OnBusy runs each time a flight finds the key's flag held by another
	// claimant, before it waits.
	OnBusy func(key string)
	// NoPoll makes a load waiting for another claimant's value wait only
	// for the wake message (or the flag TTL), never poll: it shows that the
	// message alone wakes waiters.
	NoPoll bool
	// AfterRead runs after a flight's L2 read returned, before it decodes
	// or fills anything.
	AfterRead func(key string)
	// BeforeFill runs after a claimant's fetch returned and before it fills
	// L2.
	BeforeFill func(key string)
	// Now, when set, replaces the node's clock for freshness decisions in
	// L1 (FreshFor, early refresh, the fail-safe throttle); lifetimes in L1
	// and Redis keep their own clocks.
	Now func() time.Duration
	// Rand, when set, replaces the uniform [0,1) draws of TTL jitter and
	// early refresh.
	Rand func() float64
	// L1 are the hooks of the node's L1 (R13, and its negative control).
	L1 *l1.Hooks
	// Bus are the hooks of the node's bus subscriber.
	Bus *bus.Hooks
	// PublishBeforeDelete publishes a batch's message before, and apart
	// from, its writes to Redis: the negative control of R14.
	// BetweenPublishAndDelete runs in the gap, with the message's sequence
	// number and the keys it names.
	PublishBeforeDelete     bool
	BetweenPublishAndDelete func(seq uint64, keys []string)
	// LateApply, when set and returning true, takes a batch's atomic write
	// and announcement instead of sending it: the batch fails as if Redis
	// had not answered in time, and the test runs apply when it chooses,
	// as the bytes of a timed-out call that reach Redis late (R44).
	LateApply func(apply func()) bool
}
