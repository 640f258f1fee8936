package bus_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
)

// The bus's Redis names in these tests.
const (
	prefix   = "tc"
	channel  = prefix + ":bus"
	seqKey   = prefix + ":seq"
	epochKey = prefix + ":epoch"
)

// Origins of the nodes in these tests; the subscriber under test is self.
var (
	self  = bus.NodeID{0x5e, 0x1f, 15: 1}
	other = bus.NodeID{0x07, 0x4e, 15: 2}
)

type evKind int

const (
	evApply   evKind = iota + 1 // Handler.Apply
	evDrop                      // Handler.Drop
	evRenew                     // Handler.Renew
	evHandled                   // Hooks.Applied: a message was handled, own or not
)

func (k evKind) String() string {
	return [...]string{"?", "apply", "drop", "renew", "handled"}[k]
}

// event is one call the subscriber made.
type event struct {
	kind   evKind
	msg    *bus.Message // apply, handled
	reason bus.Reason   // drop
	revoke bool         // drop
	sentAt time.Time    // renew
	at     time.Time    // when it was recorded
}

func (e event) String() string {
	switch e.kind {
	case evApply, evHandled:
		return fmt.Sprintf("%v seq %d from %x", e.kind, e.msg.Seq, e.msg.Origin[:2])
	case evDrop:
		return fmt.Sprintf("drop(%v, revoke=%v)", e.reason, e.revoke)
	}
	return e.kind.String()
}

// recorder is the test Handler: it logs every call in order, and lets tests
// wait for a call matching a predicate. Its methods never block unless the
// test sets onApply to block.
type recorder struct {
	onApply func(*bus.Message) // set before the subscriber starts
	onRenew func()             // set before the subscriber starts

	mu      sync.Mutex
	evs     []event
	changed chan struct{} // closed and replaced on every event
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) add(e event) {
	e.at = time.Now()
	r.mu.Lock()
	r.evs = append(r.evs, e)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) Apply(m *bus.Message) {
	if r.onApply != nil {
		r.onApply(m)
	}
	r.add(event{kind: evApply, msg: m})
}

func (r *recorder) Drop(reason bus.Reason, revoke bool) {
	r.add(event{kind: evDrop, reason: reason, revoke: revoke})
}

func (r *recorder) Renew(sentAt time.Time) {
	if r.onRenew != nil {
		r.onRenew()
	}
	r.add(event{kind: evRenew, sentAt: sentAt})
}

// mark returns the index of the next event.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.evs)
}

// since returns the events from index i on.
func (r *recorder) since(i int) []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.evs[i:]...)
}

// waitFor waits for the first event at or after index from that matches,
// and returns its index and the event.
func (r *recorder) waitFor(t *testing.T, from int, what string, match func(event) bool) (int, event) {
	t.Helper()
	timeout := time.After(guard)
	for {
		r.mu.Lock()
		for i := from; i < len(r.evs); i++ {
			if match(r.evs[i]) {
				e := r.evs[i]
				r.mu.Unlock()
				return i, e
			}
		}
		from = len(r.evs)
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no %s within %v; events: %v", what, guard, r.since(0))
		}
	}
}

// quietFor waits until the lease loop has run rounds more rounds, then
// fails if a matching handler call happened meanwhile: an absence checked
// against the subscriber's own progress, not against the wall clock.
func (f *fixture) quietFor(t *testing.T, rounds int, what string, match func(event) bool) {
	t.Helper()
	from := f.rec.mark()
	for range rounds {
		select {
		case <-f.ticks:
		case <-time.After(guard):
			t.Fatalf("the lease loop did not run within %v", guard)
		}
	}
	for _, e := range f.rec.since(from) {
		if match(e) {
			t.Fatalf("unexpected %s: %v; events: %v", what, e, f.rec.since(0))
		}
	}
}

func isRenew(e event) bool { return e.kind == evRenew }
func anyEvent(event) bool  { return true }

// isMessageDrop matches a drop that a message can cause: any but a lapse,
// which only time can cause (a starved -race run, in the tests that use the
// long default lease to make one unlikely).
func isMessageDrop(e event) bool { return e.kind == evDrop && e.reason != bus.LeaseLapsed }

func isDrop(reason bus.Reason) func(event) bool {
	return func(e event) bool { return e.kind == evDrop && e.reason == reason }
}

func isApply(seq uint64) func(event) bool {
	return func(e event) bool { return e.kind == evApply && e.msg.Seq == seq }
}

func isHandled(seq uint64) func(event) bool {
	return func(e event) bool { return e.kind == evHandled && e.msg.Seq == seq }
}

// renewAfter matches a Renew whose ping was sent after t0.
func renewAfter(t0 time.Time) func(event) bool {
	return func(e event) bool { return e.kind == evRenew && e.sentAt.After(t0) }
}

// noRenewBetween asserts that no Renew was recorded strictly between
// indexes i and j: once a drop revoked the lease, only a ping sent after it
// (found by renewAfter) may renew it.
func (r *recorder) noRenewBetween(t *testing.T, i, j int) {
	t.Helper()
	evs := r.since(i)
	for _, e := range evs[1 : j-i] {
		if e.kind == evRenew {
			t.Fatalf("Renew for a ping sent at %v, before the revoking drop: %v", e.sentAt, evs)
		}
	}
}

// count returns how many events match.
func count(evs []event, match func(event) bool) int {
	n := 0
	for _, e := range evs {
		if match(e) {
			n++
		}
	}
	return n
}

// fixture is one private Redis, a Store publishing through it, and a
// Subscriber of node self recording into rec.
type fixture struct {
	srv   *redistest.Server
	rdb   *redis.Client
	store *l2.Store
	rec   *recorder
	sub   *bus.Subscriber
	lease time.Duration
	ticks chan struct{} // one per round of the lease loop
}

// subOpts configures startSub; zero values are the defaults.
type subOpts struct {
	lease   time.Duration // default 2s: no lapse under a loaded -race run
	hooks   *bus.Hooks
	onApply func(*bus.Message)
	onRenew func()
	srv     *redistest.Server
	seq     bool // set SubscriberConfig.SeqKey
}

func startSub(t *testing.T, o subOpts) *fixture {
	t.Helper()
	if o.lease == 0 {
		o.lease = 2 * time.Second
	}
	f := &fixture{srv: o.srv, rec: newRecorder(), lease: o.lease}
	if f.srv == nil {
		f.srv = redistest.Start(t)
	}
	f.rdb = f.srv.Client(t)
	f.store = l2.NewStore(f.rdb, "tc")
	f.rec.onApply, f.rec.onRenew = o.onApply, o.onRenew
	hooks := bus.Hooks{}
	if o.hooks != nil {
		hooks = *o.hooks
	}
	f.ticks = make(chan struct{}, 4096)
	ticked := hooks.Ticked
	hooks.Ticked = func() {
		select {
		case f.ticks <- struct{}{}:
		default:
		}
		if ticked != nil {
			ticked()
		}
	}
	applied := hooks.Applied
	hooks.Applied = func(m *bus.Message) {
		f.rec.add(event{kind: evHandled, msg: m})
		if applied != nil {
			applied(m)
		}
	}
	cfg := bus.SubscriberConfig{
		Client:   f.rdb,
		Channel:  channel,
		EpochKey: epochKey,
		Self:     self,
		LeaseTTL: o.lease,
		Handler:  f.rec,
		Hooks:    &hooks,
	}
	if o.seq {
		cfg.SeqKey = seqKey
	}
	sub, err := bus.NewSubscriber(t.Context(), cfg)
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	f.sub = sub
	t.Cleanup(sub.Close)
	return f
}

// publish runs the real publishing script: it deletes the keys' values and
// flags, draws the next seq and publishes the message, atomically. It
// returns the seq and the bytes the subscribers received.
func (f *fixture) publish(t *testing.T, m *bus.Message) (uint64, []byte) {
	t.Helper()
	head, body, err := m.Split()
	if err != nil {
		t.Fatalf("Split: %v", err)
	}
	var changes []l2.Change
	for _, g := range m.Groups {
		for _, k := range g.Keys {
			changes = append(changes, l2.Change{Keys: l2.KeysFor(prefix, g.Namespace, k)})
		}
	}
	seq, err := f.store.Apply(t.Context(), changes, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: head, Body: body})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	sent := *m
	sent.Seq = seq
	b, err := sent.Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return seq, b
}

// publishKeys publishes a keys message of origin.
func (f *fixture) publishKeys(t *testing.T, origin bus.NodeID, ns string, keys ...string) uint64 {
	t.Helper()
	seq, _ := f.publish(t, &bus.Message{Kind: bus.KindKeys, Origin: origin, Groups: []bus.Group{{Namespace: ns, Keys: keys}}})
	return seq
}

// publishRaw publishes b as it is, with no sequence number drawn.
func (f *fixture) publishRaw(t *testing.T, b []byte) {
	t.Helper()
	if err := f.rdb.Publish(t.Context(), channel, b).Err(); err != nil {
		t.Fatalf("PUBLISH: %v", err)
	}
}

// encode returns the bytes of a keys message of origin with seq.
func encode(t *testing.T, origin bus.NodeID, seq uint64, keys ...string) []byte {
	t.Helper()
	b, err := (&bus.Message{Kind: bus.KindKeys, Origin: origin, Seq: seq, Groups: []bus.Group{{Namespace: "ns", Keys: keys}}}).Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return b
}

// numSub returns the number of subscribers of the bus channel.
func (f *fixture) numSub(t *testing.T) int64 {
	t.Helper()
	n, err := f.rdb.PubSubNumSub(t.Context(), channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return n[channel]
}

// renewed waits for the first Renew at or after index from.
func (f *fixture) renewed(t *testing.T, from int) (int, event) {
	t.Helper()
	return f.rec.waitFor(t, from, "Renew", isRenew)
}

// TestNewSubscriberRejectsBadConfig proves NewSubscriber returns an error,
// and starts nothing, for each missing required field.
func TestNewSubscriberRejectsBadConfig(t *testing.T) {
	srv := redistest.Start(t)
	good := bus.SubscriberConfig{Client: srv.Client(t), Channel: channel, EpochKey: epochKey, LeaseTTL: time.Second, Handler: newRecorder()}
	cases := map[string]func(c *bus.SubscriberConfig){
		"no client":    func(c *bus.SubscriberConfig) { c.Client = nil },
		"no handler":   func(c *bus.SubscriberConfig) { c.Handler = nil },
		"no channel":   func(c *bus.SubscriberConfig) { c.Channel = "" },
		"no epoch key": func(c *bus.SubscriberConfig) { c.EpochKey = "" },
		"no lease":     func(c *bus.SubscriberConfig) { c.LeaseTTL = 0 },
		"lease < 0":    func(c *bus.SubscriberConfig) { c.LeaseTTL = -time.Second },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := good
			mutate(&cfg)
			s, err := bus.NewSubscriber(t.Context(), cfg)
			if err == nil {
				s.Close()
				t.Fatalf("NewSubscriber accepted a config with %s", name)
			}
		})
	}
}

// TestReasonString proves every Reason has a readable name and an unknown
// one still prints.
func TestReasonString(t *testing.T) {
	want := map[bus.Reason]string{
		bus.Disconnected: "disconnected", bus.Gap: "sequence gap", bus.LeaseLapsed: "lease lapsed",
		bus.EpochChanged: "fleet epoch changed", bus.Flushed: "flushed", bus.Reason(99): "Reason(99)",
	}
	for r, s := range want {
		if r.String() != s {
			t.Errorf("Reason(%d).String() = %q, want %q", int(r), r.String(), s)
		}
	}
}

// TestRace_R18_NoRenewBeforeSubscribeConfirmed proves a late joiner's lease
// starts only once its subscription is confirmed: while SUBSCRIBE is held
// back nothing reaches the handler, not even over several ping periods; the
// first Renew comes after the release, for a ping sent after it, while
// Redis lists the subscriber.
func TestRace_R18_NoRenewBeforeSubscribeConfirmed(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	f := startSub(t, subOpts{lease: 400 * time.Millisecond, hooks: &bus.Hooks{BeforeSubscribe: func() {
		close(entered)
		<-release
	}}})
	t.Cleanup(releaseOnce) // before sub.Close, if the test fails early
	select {
	case <-entered:
	case <-time.After(guard):
		t.Fatalf("BeforeSubscribe not reached within %v", guard)
	}
	// An invalidation while the node is not yet subscribed: lost to it.
	lost := f.publishKeys(t, other, "ns", "before-subscribe")
	// Four ping rounds with the subscription held back: a lease granted
	// now would be a lease on a subscription that does not exist.
	f.quietFor(t, 4, "call before the subscription is confirmed", anyEvent)
	if c := f.sub.Counters(); c.Renewals != 0 || c.Messages != 0 {
		t.Fatalf("counters before subscribing: %+v", c)
	}
	if n := f.numSub(t); n != 0 {
		t.Fatalf("%d subscribers while SUBSCRIBE is held back", n)
	}
	released := time.Now()
	releaseOnce()
	_, e := f.renewed(t, 0)
	if !e.sentAt.After(released) {
		t.Fatalf("first Renew for a ping sent at %v, before the subscription was released at %v", e.sentAt, released)
	}
	if n := f.numSub(t); n != 1 {
		t.Fatalf("renewed with %d subscribers on the channel, want 1", n)
	}
	seq := f.publishKeys(t, other, "ns", "after-subscribe")
	f.rec.waitFor(t, 0, "Apply of the message after subscribing", isApply(seq))
	for _, e := range f.rec.since(0) {
		if e.kind == evApply && e.msg.Seq == lost {
			t.Fatalf("applied seq %d, published before the subscription existed", lost)
		}
	}
}

// TestSubscriberAppliesMessagesInOrder proves, end to end through a
// Publisher whose ExecFunc is the real Store.Apply script, that another
// origin's messages reach Apply once each, in seq order, with their keys,
// and only after the keys are gone from Redis (R14).
func TestSubscriberAppliesMessagesInOrder(t *testing.T) {
	var rdb atomic.Pointer[redis.Client]
	stale := make(chan string, 64)
	f := startSub(t, subOpts{onApply: func(m *bus.Message) {
		// R14: the message must never overtake the delete it announces.
		for _, g := range m.Groups {
			for _, k := range g.Keys {
				if n, err := rdb.Load().Exists(context.Background(), l2.KeysFor(prefix, g.Namespace, k).Value).Result(); err != nil || n != 0 {
					stale <- fmt.Sprintf("%s/%s: exists=%d err=%v", g.Namespace, k, n, err)
				}
			}
		}
	}})
	rdb.Store(f.rdb)
	f.renewed(t, 0)
	store := f.store
	pub := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: other, Exec: func(ctx context.Context, b *bus.Batch) error {
		changes := make([]l2.Change, len(b.Ops))
		for i, o := range b.Ops {
			changes[i] = l2.Change{Keys: l2.KeysFor(prefix, o.Namespace, o.Key)}
		}
		_, err := store.Apply(ctx, changes, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: b.Head, Body: b.Body})
		return err
	}})
	t.Cleanup(pub.Close)

	const n = 20
	for i := range n {
		key := fmt.Sprint("k", i)
		if err := f.rdb.Set(t.Context(), l2.KeysFor(prefix, "ns", key).Value, "v1", 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if err := pub.Publish(t.Context(), bus.Op{Namespace: "ns", Key: key}, bus.Op{Namespace: "b\x00in", Key: "\x00" + key}); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	f.rec.waitFor(t, 0, "Apply of the last message", isApply(n))
	var applied []event
	for _, e := range f.rec.since(0) {
		if e.kind == evApply {
			applied = append(applied, e)
		}
	}
	if len(applied) != n {
		t.Fatalf("%d Apply calls, want %d", len(applied), n)
	}
	for i, e := range applied {
		key := fmt.Sprint("k", i)
		want := &bus.Message{Kind: bus.KindKeys, Origin: other, Seq: uint64(i + 1), Groups: []bus.Group{
			{Namespace: "ns", Keys: []string{key}},
			{Namespace: "b\x00in", Keys: []string{"\x00" + key}},
		}}
		if diff := cmp.Diff(want, e.msg, cmpopts.IgnoreFields(bus.Message{}, "SentAt")); diff != "" {
			t.Fatalf("Apply %d (-want +got):\n%s", i, diff)
		}
		if e.msg.SentAt.IsZero() {
			t.Fatalf("Apply %d: the message has no clock; Redis writes one", i)
		}
	}
	select {
	case s := <-stale:
		t.Fatalf("a message was applied while its key was still in Redis: %s", s)
	default:
	}
	if d := count(f.rec.since(0), isMessageDrop); d != 0 {
		t.Fatalf("%d drops in an orderly stream: %v", d, f.rec.since(0))
	}
	awaitApplied(f.sub, n)
	if c := f.sub.Counters(); c.Messages != n || c.Applied != n || c.Gaps != 0 || c.Garbage != 0 || c.Renewals == 0 {
		t.Fatalf("counters %+v, want %d messages and applied, no gaps or garbage, some renewals", c, n)
	}
}

// TestSubscriberHandlerThatEndsItsGoroutine proves that a Handler that
// ends the receiving goroutine (runtime.Goexit, as t.FailNow in a Recorder
// that a node's handler calls does) neither keeps Close waiting for the subscriber's lock nor ends the subscription:
// a new goroutine takes over, drops L1 and ends the lease as after a lost
// connection (the message may be half applied), and subscribes again; the
// lease is renewed and later messages are applied (R37).
func TestSubscriberHandlerThatEndsItsGoroutine(t *testing.T) {
	exiting := make(chan struct{})
	var once sync.Once
	f := startSub(t, subOpts{onApply: func(*bus.Message) {
		once.Do(func() {
			close(exiting)
			runtime.Goexit()
		})
	}})
	f.renewed(t, 0)
	mark := f.rec.mark()
	f.publishKeys(t, other, "ns", "k")
	select {
	case <-exiting:
	case <-time.After(guard):
		t.Fatalf("the message was not applied within %v", guard)
	}
	i, drop := f.rec.waitFor(t, mark, "the drop of the ended goroutine's subscription", isDrop(bus.Disconnected))
	if !drop.revoke {
		t.Fatalf("the drop after the goroutine ended does not end the lease: %v", drop)
	}
	f.rec.waitFor(t, i, "a renewal of a ping sent after the drop", renewAfter(drop.at))
	seq := f.publishKeys(t, other, "ns", "k2")
	f.rec.waitFor(t, i, "the next message applied", isApply(seq))
	closeWithin(t, f.sub, 1, "the subscriber's lock stayed held")
}

// TestSubscriberRenewThatEndsItsGoroutine proves that a Handler that ends
// the goroutine that keeps the lease, in Renew, does not end the lease for
// good: a new goroutine takes over, and the lease is renewed again (R37).
func TestSubscriberRenewThatEndsItsGoroutine(t *testing.T) {
	exited := make(chan time.Time, 1)
	var once sync.Once
	f := startSub(t, subOpts{onRenew: func() {
		once.Do(func() {
			exited <- time.Now()
			runtime.Goexit()
		})
	}})
	var at time.Time
	select {
	case at = <-exited:
	case <-time.After(guard):
		t.Fatalf("the lease was not renewed within %v", guard)
	}
	f.rec.waitFor(t, 0, "a renewal of a ping sent after the lease's goroutine ended", renewAfter(at))
	closeWithin(t, f.sub, 1, "the subscriber's lock stayed held")
}

// closeWithin calls sub.Close times times in a goroutine, and fails t if
// they have not returned within guard, for the reason why.
func closeWithin(t *testing.T, sub *bus.Subscriber, times int, why string) {
	t.Helper()
	closed := make(chan struct{})
	go func() {
		for range times {
			sub.Close()
		}
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(guard):
		t.Fatalf("Close did not return within %v: %s", guard, why)
	}
}

// TestSubscriberOwnMessagesCountForGaps proves a node's own messages are not
// applied again but do advance its sequence: own-then-other is no gap, and
// a number lost among its own messages still drops L1 (without revoking).
func TestSubscriberOwnMessagesCountForGaps(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	own1 := f.publishKeys(t, self, "ns", "own1")
	own2 := f.publishKeys(t, self, "ns", "own2")
	oth := f.publishKeys(t, other, "ns", "other")
	f.rec.waitFor(t, 0, "Apply of the other node's message", isApply(oth))
	for _, seq := range []uint64{own1, own2} {
		f.rec.waitFor(t, 0, fmt.Sprintf("own seq %d handled", seq), isHandled(seq))
	}
	evs := f.rec.since(0)
	if n := count(evs, func(e event) bool { return e.kind == evApply }); n != 1 {
		t.Fatalf("%d Apply calls, want 1 (own messages are not applied): %v", n, evs)
	}
	if n := count(evs, isMessageDrop); n != 0 {
		t.Fatalf("own messages caused drops: %v", evs)
	}

	mark := f.rec.mark()
	// One own message lost: its number is drawn, nothing is received.
	if err := f.rdb.Incr(t.Context(), seqKey).Err(); err != nil {
		t.Fatalf("INCR: %v", err)
	}
	own4 := f.publishKeys(t, self, "ns", "own4")
	_, e := f.rec.waitFor(t, mark, "Drop(Gap)", isDrop(bus.Gap))
	if e.revoke {
		t.Fatalf("a gap revoked the lease")
	}
	f.rec.waitFor(t, mark, "own seq handled", isHandled(own4))
	if c := f.sub.Counters(); c.Gaps != 1 || c.Applied != 1 || c.Messages != 4 {
		t.Fatalf("counters %+v, want 1 gap, 1 applied, 4 messages", c)
	}
}

// TestRace_R15_LostMessageDropsOnGap proves a message lost in transit (the
// DropMessage hook) is detected at the next one by its skipped number: the
// handler is told Drop(Gap) without revoking the lease, before that next
// message is applied.
func TestRace_R15_LostMessageDropsOnGap(t *testing.T) {
	var lose atomic.Uint64 // the seq to lose
	f := startSub(t, subOpts{hooks: &bus.Hooks{DropMessage: func(payload []byte) bool {
		m, err := bus.Decode(payload)
		return err == nil && m.Seq == lose.Load()
	}}})
	f.renewed(t, 0)
	lose.Store(2)
	s1 := f.publishKeys(t, other, "ns", "a")
	s2 := f.publishKeys(t, other, "ns", "b")
	s3 := f.publishKeys(t, other, "ns", "c")
	if s1 != 1 || s2 != 2 || s3 != 3 {
		t.Fatalf("seqs %d %d %d, want 1 2 3", s1, s2, s3)
	}
	iApply, _ := f.rec.waitFor(t, 0, "Apply of seq 3", isApply(3))
	iDrop, e := f.rec.waitFor(t, 0, "Drop(Gap)", isDrop(bus.Gap))
	if e.revoke {
		t.Fatalf("Drop(Gap) revoked the lease; a gap is known at once and needs no revoke")
	}
	if iDrop > iApply {
		t.Fatalf("Drop(Gap) came after the message past the gap was applied: %v", f.rec.since(0))
	}
	evs := f.rec.since(0)
	if count(evs, isApply(2)) != 0 || count(evs, isApply(1)) != 1 {
		t.Fatalf("applied the lost message or missed the first: %v", evs)
	}
	awaitApplied(f.sub, 2)
	if c := f.sub.Counters(); c.Gaps != 1 || c.Messages != 2 || c.Applied != 2 {
		t.Fatalf("counters %+v, want 1 gap, 2 messages, 2 applied", c)
	}
}

// TestRace_R19_DuplicateAndReorderedSeqDrop proves a repeated message (the
// same bytes published again) and messages out of order each cost a
// Drop(Gap), never a wrong state: the stream resumes without further drops.
func TestRace_R19_DuplicateAndReorderedSeqDrop(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	s1, raw := f.publish(t, &bus.Message{Kind: bus.KindKeys, Origin: other, Groups: []bus.Group{{Namespace: "ns", Keys: []string{"k"}}}})
	f.rec.waitFor(t, 0, "Apply of seq 1", isApply(s1))

	mark := f.rec.mark()
	f.publishRaw(t, raw) // the duplicate
	iDrop, e := f.rec.waitFor(t, mark, "Drop(Gap) for the duplicate", isDrop(bus.Gap))
	if e.revoke {
		t.Fatalf("a duplicate revoked the lease")
	}
	// The next number follows the duplicate: no second drop.
	s2 := f.publishKeys(t, other, "ns", "k2")
	f.rec.waitFor(t, iDrop, "Apply of seq 2", isApply(s2))
	if n := count(f.rec.since(mark), isDrop(bus.Gap)); n != 1 {
		t.Fatalf("%d gap drops for one duplicate, want 1: %v", n, f.rec.since(mark))
	}

	// Reordered: 4 before 3 is two breaks in the sequence.
	mark = f.rec.mark()
	f.publishRaw(t, encode(t, other, 4, "k4"))
	f.publishRaw(t, encode(t, other, 3, "k3"))
	f.rec.waitFor(t, mark, "Apply of seq 3", isApply(3))
	if n := count(f.rec.since(mark), isDrop(bus.Gap)); n != 2 {
		t.Fatalf("%d gap drops for 4 then 3 after 2, want 2: %v", n, f.rec.since(mark))
	}
	if c := f.sub.Counters(); c.Gaps != 3 {
		t.Fatalf("counters %+v, want 3 gaps", c)
	}
}

// TestSubscriberIgnoresGarbage proves bytes that are not a message of this
// version are counted as garbage and otherwise ignored: no Apply, no Drop,
// and they take no sequence number, so the stream around them has no gap.
func TestSubscriberIgnoresGarbage(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	s1 := f.publishKeys(t, other, "ns", "k1")
	v3 := encode(t, other, 2, "k")
	v3[1] = 3 // a future version
	v1 := encode(t, other, 2, "k")
	v1[1] = 1 // a past version
	garbage := [][]byte{[]byte("hello"), {}, v3, v1, encode(t, other, 2, "k")[:30], []byte("T\x02\x09")}
	for _, g := range garbage {
		f.publishRaw(t, g)
	}
	s2 := f.publishKeys(t, other, "ns", "k2")
	if s2 != s1+1 {
		t.Fatalf("seqs %d then %d", s1, s2)
	}
	f.rec.waitFor(t, 0, "Apply of the message after the garbage", isApply(s2))
	evs := f.rec.since(0)
	if n := count(evs, isMessageDrop); n != 0 {
		t.Fatalf("garbage caused drops: %v", evs)
	}
	if n := count(evs, func(e event) bool { return e.kind == evApply }); n != 2 {
		t.Fatalf("%d Apply calls, want 2: %v", n, evs)
	}
	want := uint64(len(garbage))
	awaitApplied(f.sub, 2)
	if c := f.sub.Counters(); c.Garbage != want || c.Messages != want+2 || c.Applied != 2 || c.Gaps != 0 {
		t.Fatalf("counters %+v, want %d garbage, %d messages, 2 applied, no gaps", c, want, want+2)
	}
}

// TestSubscriberFlushMessageDropsL1 proves a flush from another node, sent
// by a Publisher through the real script, reaches the handler as
// Drop(Flushed) without revoking the lease, and one's own flush does not.
func TestSubscriberFlushMessageDropsL1(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	mk := func(origin bus.NodeID) *bus.Publisher {
		p := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: origin, Exec: func(ctx context.Context, b *bus.Batch) error {
			_, err := f.store.Apply(ctx, nil, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: b.Head, Body: b.Body})
			return err
		}})
		t.Cleanup(p.Close)
		return p
	}
	if err := mk(self).Flush(t.Context()); err != nil {
		t.Fatalf("own Flush: %v", err)
	}
	f.rec.waitFor(t, 0, "own flush handled", isHandled(1))
	if n := count(f.rec.since(0), isDrop(bus.Flushed)); n != 0 {
		t.Fatalf("own flush dropped L1 again")
	}
	if err := mk(other).Flush(t.Context()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	_, e := f.rec.waitFor(t, 0, "Drop(Flushed)", isDrop(bus.Flushed))
	if e.revoke {
		t.Fatalf("a flush revoked the lease")
	}
	f.rec.waitFor(t, 0, "other flush handled", isHandled(2))
	if c := f.sub.Counters(); c.Applied != 0 || c.Messages != 2 || c.Gaps != 0 {
		t.Fatalf("counters %+v, want 2 messages, none applied, no gaps", c)
	}
}

// TestRace_R15_ClientKillDropsThenRenewsAfterResubscribe proves a killed
// subscription drops L1 and revokes the lease, and that the lease comes
// back only for a ping sent after the drop, on the resubscribed connection,
// which then delivers messages again.
func TestRace_R15_ClientKillDropsThenRenewsAfterResubscribe(t *testing.T) {
	receiveErrs := make(chan error, 16)
	f := startSub(t, subOpts{hooks: &bus.Hooks{AfterReceiveError: func(err error) {
		select {
		case receiveErrs <- err:
		default:
		}
	}}})
	f.renewed(t, 0)
	s1 := f.publishKeys(t, other, "ns", "before")
	f.rec.waitFor(t, 0, "Apply before the kill", isApply(s1))

	mark := f.rec.mark()
	f.srv.Do("CLIENT", "KILL", "TYPE", "pubsub")
	iDrop, e := f.rec.waitFor(t, mark, "Drop(Disconnected)", isDrop(bus.Disconnected))
	if !e.revoke {
		t.Fatalf("a disconnect did not revoke the lease")
	}
	select {
	case err := <-receiveErrs:
		if err == nil {
			t.Fatalf("AfterReceiveError called with a nil error")
		}
	case <-time.After(guard):
		t.Fatalf("AfterReceiveError not called within %v", guard)
	}
	iRenew, _ := f.rec.waitFor(t, iDrop, "Renew after the resubscribe", renewAfter(e.at))
	f.rec.noRenewBetween(t, iDrop, iRenew)
	s2 := f.publishKeys(t, other, "ns", "after")
	f.rec.waitFor(t, iRenew, "Apply after the resubscribe", isApply(s2))
	if c := f.sub.Counters(); c.Disconnects == 0 || c.Renewals < 2 || c.Gaps != 0 {
		t.Fatalf("counters %+v, want disconnects, 2+ renewals, no gaps", c)
	}
}

// TestRace_R15_PongOfADeadConnectionDoesNotRenew proves a pong answered on
// a connection that failed before the lease was renewed with it cannot
// renew the lease: the renewal of a ping answered before the kill is held
// (CLIENT PAUSE WRITE stalls its epoch check) until the subscriber has seen
// the disconnect, and then no Renew for a ping sent before the drop may come.
func TestRace_R15_PongOfADeadConnectionDoesNotRenew(t *testing.T) {
	pongs := make(chan struct{}, 1)
	f := startSub(t, subOpts{hooks: &bus.Hooks{DropPong: func() bool {
		select {
		case pongs <- struct{}{}:
		default:
		}
		return false
	}}})
	f.renewed(t, 0)
	f.srv.Do("CLIENT", "PAUSE", "20000", "WRITE")
	unpause := sync.OnceFunc(func() { f.srv.Do("CLIENT", "UNPAUSE") })
	t.Cleanup(unpause)
	select {
	case <-pongs: // drain one that may predate the pause
	default:
	}
	// A pong received now is renewed only after a SET of the epoch key,
	// which the pause holds.
	select {
	case <-pongs:
	case <-time.After(guard):
		t.Fatalf("no pong within %v", guard)
	}
	mark := f.rec.mark()
	f.srv.Do("CLIENT", "KILL", "TYPE", "pubsub")
	iDrop, e := f.rec.waitFor(t, mark, "Drop(Disconnected)", isDrop(bus.Disconnected))
	unpause()
	iRenew, _ := f.rec.waitFor(t, iDrop, "Renew after the resubscribe", renewAfter(e.at))
	f.rec.noRenewBetween(t, iDrop, iRenew)
}

// TestRace_R23_FlushAllChangesEpoch proves that FLUSHALL, which disconnects
// no one, is caught at the next renewal as Drop(EpochChanged) before that
// Renew, without a disconnect; and that the sequence counter reset it
// causes costs a gap drop.
func TestRace_R23_FlushAllChangesEpoch(t *testing.T) {
	f := startSub(t, subOpts{lease: 400 * time.Millisecond})
	f.renewed(t, 0)
	f.publishKeys(t, other, "ns", "a")
	s2 := f.publishKeys(t, other, "ns", "b")
	f.rec.waitFor(t, 0, "Apply of seq 2", isApply(s2))
	epoch1, err := f.rdb.Get(t.Context(), epochKey).Result()
	if err != nil || epoch1 == "" {
		t.Fatalf("epoch key after the first renewal: %q, %v", epoch1, err)
	}

	mark := f.rec.mark()
	f.srv.Flush()
	iDrop, e := f.rec.waitFor(t, mark, "Drop(EpochChanged)", isDrop(bus.EpochChanged))
	if e.revoke {
		t.Fatalf("EpochChanged revoked the lease; the drop alone covers it")
	}
	f.rec.waitFor(t, iDrop, "Renew after the epoch change", isRenew)
	if n := count(f.rec.since(mark), isDrop(bus.Disconnected)); n != 0 {
		t.Fatalf("FLUSHALL is not a disconnect: %v", f.rec.since(mark))
	}
	epoch2, err := f.rdb.Get(t.Context(), epochKey).Result()
	if err != nil || epoch2 == "" || epoch2 == epoch1 {
		t.Fatalf("epoch after FLUSHALL: %q (before %q), %v; want a new one", epoch2, epoch1, err)
	}
	// The counter restarted at 1: a number this node has seen.
	mark = f.rec.mark()
	s := f.publishKeys(t, other, "ns", "c")
	if s != 1 {
		t.Fatalf("seq after FLUSHALL = %d, want 1", s)
	}
	f.rec.waitFor(t, mark, "Drop(Gap) for the restarted counter", isDrop(bus.Gap))
	if c := f.sub.Counters(); c.EpochChanges != 1 {
		t.Fatalf("counters %+v, want 1 epoch change", c)
	}
}

// TestRace_R23_RestartDisconnectsThenRenews proves a Redis restart without
// persistence drops L1 as a disconnect and as an epoch change, and that the
// lease and the message flow come back on the new server.
func TestRace_R23_RestartDisconnectsThenRenews(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	mark := f.rec.mark()
	f.srv.Restart()
	iDrop, e := f.rec.waitFor(t, mark, "Drop(Disconnected)", isDrop(bus.Disconnected))
	if !e.revoke {
		t.Fatalf("a disconnect did not revoke the lease")
	}
	iRenew, _ := f.rec.waitFor(t, iDrop, "Renew after the restart", renewAfter(e.at))
	f.rec.noRenewBetween(t, iDrop, iRenew)
	iEpoch, _ := f.rec.waitFor(t, mark, "Drop(EpochChanged)", isDrop(bus.EpochChanged))
	if iEpoch > iRenew {
		t.Fatalf("renewed on the new server before noticing its new epoch: %v", f.rec.since(mark))
	}
	// The go-redis client of the publishing side may fail once while it
	// redials; the subscriber itself is back.
	if err := f.rdb.Ping(t.Context()).Err(); err != nil {
		t.Logf("first PING after the restart failed (allowed): %v", err)
	}
	s := f.publishKeys(t, other, "ns", "after")
	f.rec.waitFor(t, iRenew, "Apply after the restart", isApply(s))
	if c := f.sub.Counters(); c.Disconnects == 0 || c.EpochChanges == 0 || c.Renewals < 2 {
		t.Fatalf("counters %+v, want disconnects, an epoch change, 2+ renewals", c)
	}
}

// TestRace_R27_UnansweredPingsLapseTheLease proves that when pongs stop
// (a stuck subscription, as in a partition) the lease lapses no earlier than
// LeaseTTL after the last answered ping, L1 is dropped and revoked once,
// nothing renews while pongs are lost, and the lease comes back with them.
func TestRace_R27_UnansweredPingsLapseTheLease(t *testing.T) {
	const lease = 300 * time.Millisecond
	var dropping atomic.Bool
	f := startSub(t, subOpts{lease: lease, hooks: &bus.Hooks{DropPong: dropping.Load}})
	f.renewed(t, 0)
	dropping.Store(true)
	mark := f.rec.mark()
	iLapse, e := f.rec.waitFor(t, mark, "Drop(LeaseLapsed)", isDrop(bus.LeaseLapsed))
	if !e.revoke {
		t.Fatalf("a lapsed lease was not revoked")
	}
	var last time.Time
	for _, ev := range f.rec.since(0)[:iLapse] {
		if ev.kind == evRenew {
			last = ev.sentAt
		}
	}
	if e.at.Before(last.Add(lease)) {
		t.Fatalf("lease lapsed at %v, before the last renewal's end %v", e.at, last.Add(lease))
	}
	// Two more leases of lost pongs (eight ping rounds): no Renew, no
	// second lapse.
	f.quietFor(t, 8, "Renew or second lapse while pongs are lost", func(e event) bool {
		return e.kind == evRenew || (e.kind == evDrop && e.reason == bus.LeaseLapsed)
	})
	back := time.Now()
	dropping.Store(false)
	f.rec.waitFor(t, iLapse, "Renew once pongs flow", renewAfter(back))
	if c := f.sub.Counters(); c.Lapses != 1 || c.Disconnects != 0 {
		t.Fatalf("counters %+v, want 1 lapse and no disconnect", c)
	}
}

// TestRace_R16_SlowSubscriberKilledByRedis proves a subscriber that cannot
// keep up is cut off by Redis at its output-buffer limit, and that it then
// drops L1 as for any disconnect, with no false gap, and recovers its lease
// on a new subscription.
func TestRace_R16_SlowSubscriberKilledByRedis(t *testing.T) {
	blocked := make(chan struct{})
	unblock := make(chan struct{})
	unblockOnce := sync.OnceFunc(func() { close(unblock) })
	var first sync.Once
	f := startSub(t, subOpts{onApply: func(*bus.Message) {
		first.Do(func() {
			close(blocked)
			<-unblock
		})
	}})
	t.Cleanup(unblockOnce)
	f.srv.Do("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
	f.renewed(t, 0)
	f.publishKeys(t, other, "ns", "first")
	select {
	case <-blocked:
	case <-time.After(guard):
		t.Fatalf("the handler was not reached within %v", guard)
	}
	// The handler is stuck; publish until Redis drops the subscriber. The
	// loopback socket buffers hold a few MB before Redis's own buffer grows.
	key := strings.Repeat("x", 60<<10)
	published := 0
	for f.numSub(t) != 0 {
		if published > 64<<20 {
			t.Fatalf("published %d bytes and Redis still lists the stuck subscriber", published)
		}
		f.publishKeys(t, other, "ns", fmt.Sprint(published, key))
		published += len(key)
	}
	t.Logf("Redis dropped the stuck subscriber after %d KiB", published>>10)
	unblockOnce()
	iDrop, e := f.rec.waitFor(t, 0, "Drop(Disconnected)", isDrop(bus.Disconnected))
	if !e.revoke {
		t.Fatalf("a disconnect did not revoke the lease")
	}
	iRenew, _ := f.rec.waitFor(t, iDrop, "Renew after the resubscribe", renewAfter(e.at))
	f.rec.noRenewBetween(t, iDrop, iRenew)
	s := f.publishKeys(t, other, "ns", "after")
	f.rec.waitFor(t, iRenew, "Apply after recovering", isApply(s))
	if c := f.sub.Counters(); c.Disconnects == 0 || c.Gaps != 0 {
		t.Fatalf("counters %+v, want a disconnect and no gap (what was received was in order)", c)
	}
}

// TestSubscriberCloseWhileRedisDown proves Close returns promptly while the
// subscriber is trying to reconnect to a dead Redis, stops every goroutine
// it started, and is idempotent.
func TestSubscriberCloseWhileRedisDown(t *testing.T) {
	before := goleak.IgnoreCurrent()
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	mark := f.rec.mark()
	f.srv.Kill()
	f.rec.waitFor(t, mark, "Drop(Disconnected)", isDrop(bus.Disconnected))
	closeWithin(t, f.sub, 2, "Redis is down")
	closedAt := f.rec.mark()
	// Every goroutine started since the test began is gone (the dead
	// server's reaper too; goleak retries while it waits), and none of them
	// called the handler after Close returned.
	goleak.VerifyNone(t, before)
	for _, e := range f.rec.since(closedAt) {
		t.Fatalf("handler call after Close: %v", e)
	}
}

// awaitApplied waits, within the guard, until sub counts n messages applied:
// it counts one after its handler returns, so a test that saw the handler's
// call must wait for the count to catch up. The caller then checks it.
func awaitApplied(sub *bus.Subscriber, n uint64) {
	deadline := time.Now().Add(guard)
	for sub.Counters().Applied < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// TestRace_R47_OtherWireVersionIsAGap proves a node of another wire
// version cannot make this one serve stale data: its message takes a
// number from the shared sequence, this node cannot read it (garbage), and
// the next message it can read shows the number skipped, so it drops L1.
func TestRace_R47_OtherWireVersionIsAGap(t *testing.T) {
	f := startSub(t, subOpts{})
	f.renewed(t, 0)
	s1 := f.publishKeys(t, other, "ns", "a")
	f.rec.waitFor(t, 0, "Apply of seq 1", isApply(s1))
	mark := f.rec.mark()
	// A version-1 node: it draws the next number and publishes the old layout.
	seq, err := f.rdb.Incr(t.Context(), seqKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	old := binary.BigEndian.AppendUint64(append([]byte{'T', 1, 1}, other[:]...), uint64(seq))
	old = append(old, 1, 2, 'n', 's', 1, 1, 'a', 0)
	f.publishRaw(t, old)
	s3 := f.publishKeys(t, other, "ns", "b")
	f.rec.waitFor(t, mark, "Drop(Gap) for the unreadable message", isDrop(bus.Gap))
	f.rec.waitFor(t, mark, "Apply of the next readable message", isApply(s3))
	if c := f.sub.Counters(); c.Garbage != 1 || c.Gaps != 1 {
		t.Fatalf("counters %+v; want the old message as garbage, and one gap", c)
	}
}

// R53: a subscription on a server that relays the bus late, or loses a
// message while its connection lives (on a cluster, a replica of the bus's
// shard that an out-of-date slot map named), still answers pings at once.
// With SeqKey, a ping renews the lease only once every message numbered
// before it has arrived: here the last message is lost and none follows,
// so the lease lapses, the lagging connection is replaced, and renewals
// resume on the new one. The negative control, without SeqKey, renews
// through the loss, which no later message reveals.
func TestRace_R53_LaggingSubscriptionDoesNotRenew(t *testing.T) {
	for name, withSeq := range map[string]bool{"SeqKey": true, "negative control: no SeqKey": false} {
		t.Run(name, func(t *testing.T) {
			var lose atomic.Uint64 // the seq to lose
			f := startSub(t, subOpts{lease: time.Second, seq: withSeq, hooks: &bus.Hooks{DropMessage: func(payload []byte) bool {
				m, err := bus.Decode(payload)
				return err == nil && m.Seq == lose.Load()
			}}})
			f.renewed(t, 0)
			lose.Store(2)
			f.publishKeys(t, other, "ns", "a")
			f.publishKeys(t, other, "ns", "b") // lost; nothing follows it
			i, _ := f.rec.waitFor(t, 0, "Apply of seq 1", isApply(1))
			if !withSeq {
				f.quietFor(t, 8, "a lease lapse the loss should not cause without SeqKey", isDrop(bus.LeaseLapsed))
				return
			}
			i, _ = f.rec.waitFor(t, i, "Drop(LeaseLapsed)", isDrop(bus.LeaseLapsed))
			f.renewed(t, i)
			if c := f.sub.Counters(); c.Replacements == 0 {
				t.Fatalf("the lagging connection was not replaced: %+v", c)
			}
		})
	}
}
