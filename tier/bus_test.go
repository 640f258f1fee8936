package tier_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/tier"
)

// The tests below run several nodes on one private Redis, each with its own
// client and bus subscription, and drive the bus through its fault hooks.

// busEvents records what one node's subscriber does.
type busEvents struct {
	applied chan *bus.Message
	dropped chan bus.Reason
	renewed chan time.Time
}

func newBusEvents() (*busEvents, *bus.Hooks) {
	e := &busEvents{
		applied: make(chan *bus.Message, 4096),
		dropped: make(chan bus.Reason, 64),
		renewed: make(chan time.Time, 4096),
	}
	return e, &bus.Hooks{
		Applied: func(m *bus.Message) { e.applied <- m },
		Dropped: func(r bus.Reason) { e.dropped <- r },
		Renewed: func(at time.Time) { e.renewed <- at },
	}
}

// awaitApplied waits until the node has handled a message naming key.
func (e *busEvents) awaitApplied(t *testing.T, key string) *bus.Message {
	t.Helper()
	for {
		m := wait(t, e.applied, "a bus message naming "+key)
		for _, g := range m.Groups {
			for _, k := range g.Keys {
				if k == key {
					return m
				}
			}
		}
	}
}

// awaitDropped waits until the node has dropped its L1 for reason.
func (e *busEvents) awaitDropped(t *testing.T, reason bus.Reason) {
	t.Helper()
	for wait(t, e.dropped, "an L1 drop for "+reason.String()) != reason {
	}
}

// awaitRenewed waits for the next lease renewal.
func (e *busEvents) awaitRenewed(t *testing.T) time.Time {
	t.Helper()
	return wait(t, e.renewed, "a lease renewal")
}

// forgetRenewals discards the renewals recorded so far.
func (e *busEvents) forgetRenewals() {
	for {
		select {
		case <-e.renewed:
		default:
			return
		}
	}
}

// inL1 reports whether key is served from c's L1.
func inL1(t *testing.T, n *tier.Node, c *tier.Cache[string, string], key string) bool {
	t.Helper()
	tier.WaitL1(n)
	before := n.Stats().Caches.L1Hits
	mustGet(t, c, key)
	return n.Stats().Caches.L1Hits > before
}

// warm puts key's value in n's L1 and checks that it is served from there.
func warm(t *testing.T, n *tier.Node, c *tier.Cache[string, string], key string) {
	t.Helper()
	mustGet(t, c, key)
	if !inL1(t, n, c, key) {
		t.Fatalf("%s is not in L1", key)
	}
}

// R22: after Invalidate returns on one node, another node that applied the
// message reads the new value, and the delay is the bus's.
func TestRace_R22_ReadAfterWriteOnAnotherNode(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "k")

	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "k")
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after applying the message = %q, want v2", v)
	}
	// Set is announced the same way.
	if err := a.Set(context.Background(), "k", "v3"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "k")
	if v := mustGet(t, b, "k"); v != "v3" {
		t.Fatalf("B after a Set elsewhere = %q, want v3", v)
	}
	if st := nb.Stats(); st.BusApplied != 2 || st.Drops != 0 {
		t.Fatalf("B stats = %+v", st)
	}
}

// r12 holds B's flight right after it read v1 from L2, lets another node
// invalidate and B apply the message, then lets the flight fill L1; it
// returns what B reads next.
func r12(t *testing.T, noFence bool) string {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	read, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	na := f.node(tier.NodeConfig{}, nil)
	nb := f.node(tier.NodeConfig{}, &hooks.Points{
		Bus: hb,
		L1:  &l1.Hooks{NoFence: noFence},
		AfterRead: func(string) {
			once.Do(func() {
				close(read)
				<-release
			})
		},
	})
	a, b := cache(t, na, src), cache(t, nb, src)
	mustGet(t, a, "k") // v1 in L2

	got := goGet(context.Background(), b, "k")
	wait(t, read, "B to read v1 from L2")
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "k") // the message arrives before B stores v1
	close(release)
	if r := await(t, got); r.v != "v1" {
		t.Fatalf("B's overlapping read = %q", r.v)
	}
	tier.WaitL1(nb)
	return mustGet(t, b, "k")
}

// R12: a value read from L2 before an invalidation whose message arrives
// before the L1 store never lands in L1.
func TestRace_R12_CrossNodeFill(t *testing.T) {
	if v := r12(t, false); v != "v2" {
		t.Fatalf("B after the invalidation = %q, want v2", v)
	}
}

// R12 negative control: without the L1 fence, v1 lands after the message
// and is served.
func TestRace_R12_NegativeControl_NoFence(t *testing.T) {
	if v := r12(t, true); v != "v1" {
		t.Fatalf("B = %q; without a fence the stale v1 should be served", v)
	}
}

// r14 has A invalidate while B holds v1 in L1; if broken, A publishes before
// it deletes, and B reads (and caches) between the two. It returns what B
// serves once A's Invalidate has returned.
func r14(t *testing.T, broken bool) string {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	nb := f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	b := cache(t, nb, src)
	ha := &hooks.Points{PublishBeforeDelete: broken}
	ha.BetweenPublishAndDelete = func(uint64, []string) {
		eb.awaitApplied(t, "k")
		mustGet(t, b, "k") // B refills from L2 before the delete
		tier.WaitL1(nb)
	}
	a := cache(t, f.node(tier.NodeConfig{}, ha), src)
	warm(t, nb, b, "k")

	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if !broken {
		eb.awaitApplied(t, "k")
	}
	return mustGet(t, b, "k")
}

// R14: the delete and the message are one atomic step, so a node that
// applied the message can only read the new state.
func TestRace_R14_PublishWithDelete(t *testing.T) {
	if v := r14(t, false); v != "v2" {
		t.Fatalf("B after the invalidation = %q, want v2", v)
	}
}

// R14 negative control: publishing before deleting lets B refill v1 after
// evicting it, and keep it.
func TestRace_R14_NegativeControl_PublishBeforeDelete(t *testing.T) {
	if v := r14(t, true); v != "v1" {
		t.Fatalf("B = %q; publishing first should have let v1 back in", v)
	}
}

// R15: the subscriber's connection is killed while another node
// invalidates; the node drops L1 at once, serves from L2 until it is
// resubscribed, and serves L1 again afterwards.
func TestRace_R15_MessageLostOnDisconnect(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	cut, reconnect := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hb.AfterReceiveError = func(error) {
		once.Do(func() {
			close(cut)
			<-reconnect
		})
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "k")

	f.srv.Do("CLIENT", "KILL", "TYPE", "pubsub")
	wait(t, cut, "B to see its subscription fail")
	eb.forgetRenewals() // none can come until B resubscribes
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil { // B cannot receive this
		t.Fatal(err)
	}
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B while disconnected = %q, want v2 from L2", v)
	}
	if inL1(t, nb, b, "k") {
		t.Fatal("B served L1 while its subscription was down")
	}
	close(reconnect)
	eb.awaitRenewed(t)
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after resubscribing = %q", v)
	}
	if !inL1(t, nb, b, "k") {
		t.Fatal("B does not serve L1 again after resubscribing")
	}
	if st := nb.Stats(); st.BusDisconnects == 0 || st.Drops == 0 {
		t.Fatalf("B stats = %+v", st)
	}
}

// R15, R27, R22: a node whose subscription silently stops delivering (no
// messages, no pongs) serves its old L1 entry only until its lease, granted
// by a ping sent before the invalidation, runs out; then it reads L2.
func TestRace_R15_LeaseBoundsSilentLoss(t *testing.T) {
	const lease = 200 * time.Millisecond
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	var deaf atomic.Bool
	hb.DropMessage = func([]byte) bool { return deaf.Load() }
	hb.DropPong = func() bool { return deaf.Load() }
	var lastGrant atomic.Int64
	hb.Renewed = func(at time.Time) {
		lastGrant.Store(at.UnixNano())
		eb.renewed <- at
	}
	na := f.node(tier.NodeConfig{}, nil)
	nb := f.node(tier.NodeConfig{LeaseTTL: lease}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "k")

	deaf.Store(true)
	deafSince := time.Now()
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, b, "k"); v != "v1" {
		t.Fatalf("B = %q; the message should have been lost (within the bound B may serve v1)", v)
	}
	eb.awaitDropped(t, bus.LeaseLapsed)
	if granted := time.Unix(0, lastGrant.Load()); !granted.Before(deafSince) {
		t.Fatalf("the lease that lapsed was granted by a ping sent at %v, after the subscription went deaf at %v", granted, deafSince)
	}
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after its lease lapsed = %q, want v2", v)
	}
	eb.forgetRenewals() // any left were granted before the lapse
	deaf.Store(false)
	eb.awaitRenewed(t)
	mustGet(t, b, "k") // the renewal after a lapse evicted everything: refill
	if !inL1(t, nb, b, "k") {
		t.Fatal("B does not serve L1 again once pongs flow")
	}
}

// R17 (local part): with Redis unreachable, Invalidate and Set evict the
// local L1 at once and report the failure; Get answers from the source.
func TestRace_R17_CannotPublish(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.set("j", "v1")
	n := f.node(tier.NodeConfig{}, nil)
	c := cache(t, n, src)
	warm(t, n, c, "k")
	warm(t, n, c, "j")
	f.srv.Kill()
	src.set("k", "v2")
	src.set("j", "v2")
	if err := c.Invalidate(context.Background(), "k"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Invalidate with Redis down = %v, want ErrPending", err)
	}
	if err := c.Set(context.Background(), "j", "v2"); !errors.Is(err, tier.ErrPending) {
		t.Fatalf("Set with Redis down = %v, want ErrPending", err)
	}
	for _, k := range []string{"k", "j"} {
		if v := mustGet(t, c, k); v != "v2" {
			t.Fatalf("Get(%s) with Redis down = %q, want v2 from the source", k, v)
		}
	}
	if st := n.Stats(); st.RedisErrors < 1 || st.Caches.UncachedFetches != 2 {
		t.Fatalf("stats = %+v", st)
	}
}

// R18: a node serves L1 only after its subscription is confirmed, and fills
// made before that never serve afterwards.
func TestRace_R18_LateJoiner(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	hold := make(chan struct{})
	hb.BeforeSubscribe = func() { <-hold }
	na := f.node(tier.NodeConfig{}, nil)
	a := cache(t, na, src)
	mustGet(t, a, "k") // v1 in L2

	// B starts without waiting for its subscription, which the hook holds.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	nb, err := tier.NewNodeWithHooks(ctx, f.srv.Client(t), tier.NodeConfig{L1MaxBytes: 1 << 20}, &hooks.Points{Bus: hb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nb.Close() })
	b := cache(t, nb, src)
	mustGet(t, b, "k") // fills B's L1 with v1, unconfirmed
	if inL1(t, nb, b, "k") {
		t.Fatal("B served L1 before its subscription was confirmed")
	}
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil { // B never receives this
		t.Fatal(err)
	}
	close(hold)
	eb.awaitRenewed(t) // the first: nothing was renewed while the hook held
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after joining = %q; a fill from before the subscription was served", v)
	}
	if !inL1(t, nb, b, "k") {
		t.Fatal("B does not serve L1 once subscribed")
	}
}

// R19: a duplicated message costs B a drop of its L1, never correctness.
func TestRace_R19_DuplicateMessage(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.set("j", "v1")
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "j")
	src.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	m := eb.awaitApplied(t, "k")
	raw, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.Publish(context.Background(), tier.DefaultPrefix+":bus", raw).Err(); err != nil {
		t.Fatal(err)
	}
	eb.awaitDropped(t, bus.Gap)
	for _, k := range []string{"k", "j"} {
		want := map[string]string{"k": "v2", "j": "v1"}[k]
		if v := mustGet(t, b, k); v != want {
			t.Fatalf("B Get(%s) after the duplicate = %q, want %q", k, v, want)
		}
	}
	if !inL1(t, nb, b, "j") {
		t.Fatal("a duplicate revoked B's lease; it should only cost a drop")
	}
	if st := nb.Stats(); st.BusGaps != 1 {
		t.Fatalf("B stats = %+v", st)
	}
}

// Garbage and oversized messages on the bus channel are counted and ignored.
func TestBusGarbage(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "k")
	for _, p := range [][]byte{[]byte("hello"), {}, make([]byte, bus.MaxMessageBytes+1)} {
		if err := f.rdb.Publish(context.Background(), tier.DefaultPrefix+":bus", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Messages are handled in order: once B applied this one, it has seen
	// the garbage before it.
	if err := a.Invalidate(context.Background(), "probe"); err != nil {
		t.Fatal(err)
	}
	eb.awaitApplied(t, "probe")
	if st := nb.Stats(); st.BusGarbage != 3 || st.Drops != 0 {
		t.Fatalf("B stats = %+v", st)
	}
	select {
	case r := <-eb.dropped:
		t.Fatalf("garbage made B drop L1: %v", r)
	default:
	}
	if !inL1(t, nb, b, "k") {
		t.Fatal("garbage cost B its L1")
	}
}

// R23: FLUSHALL disconnects nobody; the changed fleet epoch makes every node
// drop L1 at its next lease renewal, a fill in flight across the flush is
// refused, and scripts flushed from Redis are reloaded.
func TestRace_R23_Flushall(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	src.set("j", "v1")
	eb, hb := newBusEvents()
	nb := f.node(tier.NodeConfig{LeaseTTL: 200 * time.Millisecond}, &hooks.Points{Bus: hb})
	b := cache(t, nb, src)
	warm(t, nb, b, "k")

	src.gated.Store(true)
	got := goGet(context.Background(), b, "j")
	held := src.next(t) // claimed before the flush
	f.srv.Flush()
	f.srv.Do("SCRIPT", "FLUSH")
	close(held.release)
	await(t, got)
	src.gated.Store(false)
	if st := nb.Stats(); st.Caches.FillsRefused != 1 {
		t.Fatalf("the fill across the flush was not refused: %+v", st)
	}
	eb.awaitDropped(t, bus.EpochChanged)
	if inL1(t, nb, b, "k") {
		t.Fatal("B served an L1 entry from before the flush")
	}
	reads := src.reads.Load()
	if v := mustGet(t, b, "k"); v != "v1" || src.reads.Load() != reads {
		// inL1 above already refetched it; this read is an L1 or L2 hit.
		t.Fatalf("Get after the flush = %q", v)
	}
	if err := b.Invalidate(context.Background(), "k"); err != nil {
		t.Fatalf("Invalidate after SCRIPT FLUSH: %v", err)
	}
}

// R23: a restart without persistence disconnects every subscriber; each
// drops L1, resubscribes, and reads the new state.
func TestRace_R23_RestartWithoutPersistence(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	nb := f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	b := cache(t, nb, src)
	warm(t, nb, b, "k")
	f.srv.Restart()
	eb.awaitDropped(t, bus.Disconnected)
	eb.forgetRenewals()
	src.set("k", "v2") // changed while the cache was empty
	eb.awaitRenewed(t)
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after the restart = %q, want v2", v)
	}
}

// Node.Flush drops every node's L1: its own at once, others' on receipt.
func TestNodeFlush(t *testing.T) {
	f := newFleet(t)
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, na, a, "k")
	warm(t, nb, b, "k")
	if err := na.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if inL1(t, na, a, "k") {
		t.Fatal("the flushing node kept its L1")
	}
	eb.awaitDropped(t, bus.Flushed)
	if inL1(t, nb, b, "k") {
		t.Fatal("B kept its L1 after a fleet flush")
	}
	if f.stored("k") != "v1" {
		t.Fatal("Flush touched L2")
	}
}

// Close returns while the bus is reconnecting to a dead Redis, and leaves
// no goroutine behind (TestMain checks with goleak).
func TestCloseDuringOutage(t *testing.T) {
	f := newFleet(t)
	_, hb := newBusEvents()
	failed := make(chan error, 64)
	hb.AfterReceiveError = func(err error) { failed <- err }
	n := f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	f.srv.Kill()
	wait(t, failed, "the subscription to fail")
	wait(t, failed, "a reconnection attempt to fail")
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := tier.New(n, tier.Config[string, string]{Namespace: "late", Fetch: newSource().fetch})
	if !errors.Is(err, tier.ErrClosed) || c != nil {
		t.Fatalf("New after Close = %v", err)
	}
}

// R16: Redis kills a subscriber that falls behind its output-buffer limit;
// the node treats it as a lost connection, drops L1, and reads the new
// state after recovering.
func TestRace_R16_SlowSubscriber(t *testing.T) {
	f := newFleet(t)
	f.srv.Do("CONFIG", "SET", "client-output-buffer-limit", "pubsub 64kb 0 0")
	src := newSource()
	src.set("k", "v1")
	eb, hb := newBusEvents()
	stuck, unstick := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hb.Applied = func(m *bus.Message) {
		once.Do(func() { // hold B's receive loop on the first message
			close(stuck)
			<-unstick
		})
		eb.applied <- m
	}
	na, nb := f.node(tier.NodeConfig{}, nil), f.node(tier.NodeConfig{}, &hooks.Points{Bus: hb})
	a, b := cache(t, na, src), cache(t, nb, src)
	warm(t, nb, b, "k")
	ctx := context.Background()
	if err := a.Invalidate(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	wait(t, stuck, "B to hold its receive loop")
	// Far more than the socket buffers of a loopback connection can absorb:
	// Redis must buffer, pass 64 KiB, and kill B's subscription.
	big := make([]byte, 512<<10)
	for i := range 64 {
		big[0] = byte(i)
		if err := a.Invalidate(ctx, string(big)); err != nil {
			t.Fatal(err)
		}
	}
	src.set("k", "v2")
	if err := a.Invalidate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	close(unstick)
	eb.awaitDropped(t, bus.Disconnected)
	if v := mustGet(t, b, "k"); v != "v2" {
		t.Fatalf("B after being cut off = %q, want v2", v)
	}
	if st := nb.Stats(); st.BusDisconnects == 0 {
		t.Fatalf("B stats = %+v", st)
	}
}

// A node holds one pub/sub connection: the bus and the wake channel share
// it.
func TestOnePubSubConnectionPerNode(t *testing.T) {
	f := newFleet(t)
	f.node(tier.NodeConfig{}, nil)
	list, err := f.rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var subs []string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if strings.Contains(line, " sub=") && !strings.Contains(line, " sub=0 ") {
			subs = append(subs, line)
		}
	}
	if len(subs) != 1 || !strings.Contains(subs[0], " sub=2 ") {
		t.Fatalf("pub/sub connections of one node:\n%s\nwant one, subscribed to the bus and the wake channel", strings.Join(subs, "\n"))
	}
}
