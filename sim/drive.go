package sim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/internal/wait"
	"github.com/tiercache/tiercache/l1"
)

// A negative control's driver forces its race's exact interleaving, so
// that the bug shows however loaded the machine is: it holds a node's Get
// at a hook of tier (after its Redis read, before its fill) while it
// writes the key and sends other Gets, and releases it when the others
// have reached their own point. Each drive works on a key of its own,
// beyond Config.Keys, that no worker touches and that belongs to no group,
// so that nothing but the drive decides its interleaving. Its reads and
// writes are recorded like the workers' and judged by the same checker:
// the driver makes the race happen, the checker must see it.

// driveWait bounds the driver's wait for a node to reach a point: far
// beyond any operation's length on a loaded machine, so that only a drive
// that cannot happen (the protocol is not broken as the control says)
// gives up.
const driveWait = 30 * time.Second

// point is a place in tier where the driver holds or watches a node.
type point uint8

const (
	// atAfterRead is hooks.Points.AfterRead: a flight's Redis read returned.
	atAfterRead point = iota
	// atBeforeFill is hooks.Points.BeforeFill: a claimant's fetch returned
	// and it is about to fill Redis.
	atBeforeFill
	// atFlight is hooks.Points.Flight: a Get registered with a flight.
	atFlight
	// atApplied is bus.Hooks.Applied: the node applied a message that
	// names the key.
	atApplied
	// atRefilled: publish-before-delete's hook read the key back into the
	// node's L1 between the message and the delete.
	atRefilled
)

// gate is one armed point of one node and key. A holding gate keeps every
// goroutine that reaches it there until it is opened; a watching gate only
// records that it was reached.
type gate struct {
	at   point
	node int
	key  string
	hold bool

	hit      chan struct{} // closed when the point is first reached
	open     chan struct{} // closed when held goroutines may go on
	hitOnce  sync.Once
	openOnce sync.Once
}

// release lets every goroutine held at g go on.
func (g *gate) release() { g.openOnce.Do(func() { close(g.open) }) }

// gates are the armed points of a run. Hooks call reach on every pass; it
// costs one atomic load while nothing is armed.
type gates struct {
	armed atomic.Int32
	mu    sync.Mutex
	gs    []*gate
}

// arm arms a point of node for key.
func (x *gates) arm(at point, node, key int, hold bool) *gate {
	g := &gate{at: at, node: node, key: strconv.Itoa(key), hold: hold, hit: make(chan struct{}), open: make(chan struct{})}
	x.mu.Lock()
	x.gs = append(x.gs, g)
	x.mu.Unlock()
	x.armed.Add(1)
	return g
}

// disarm removes gs and releases whatever they hold.
func (x *gates) disarm(gs ...*gate) {
	x.mu.Lock()
	for _, g := range gs {
		for i, h := range x.gs {
			if h == g {
				x.gs = append(x.gs[:i], x.gs[i+1:]...)
				x.armed.Add(-1)
				break
			}
		}
	}
	x.mu.Unlock()
	for _, g := range gs {
		g.release()
	}
}

// reach is a hook's pass through point at of node for key: it records the
// hit of a gate armed there and, if the gate holds, waits until it is
// opened (at most driveWait, so that no node is ever stuck).
func (x *gates) reach(at point, node int, key string) {
	if x.armed.Load() == 0 {
		return
	}
	var held []*gate
	x.mu.Lock()
	for _, g := range x.gs {
		if g.at == at && g.node == node && g.key == key {
			g.hitOnce.Do(func() { close(g.hit) })
			if g.hold {
				held = append(held, g)
			}
		}
	}
	x.mu.Unlock()
	for _, g := range held {
		t := time.NewTimer(driveWait)
		select {
		case <-g.open:
		case <-t.C:
		}
		t.Stop()
	}
}

// await waits until g is reached. It fails if done closes first (the
// goroutine meant to reach g finished without reaching it) or after
// driveWait.
func await(ctx context.Context, g *gate, done <-chan struct{}, what string) error {
	t := time.NewTimer(driveWait)
	defer t.Stop()
	select {
	case <-g.hit:
		return nil
	case <-done:
		select {
		case <-g.hit:
			return nil
		default:
		}
		return fmt.Errorf("%s: the Get returned without getting there", what)
	case <-t.C:
		return fmt.Errorf("%s: not within %s", what, driveWait)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// driver is one negative control's drive: the exact interleaving of its
// race on key, whose reads and writes go through the run's nodes and are
// recorded. It returns nil once the race has been driven.
type driver func(ctx context.Context, r *run, key int) error

// drivers are the negative controls' drives, by Break.
var drivers = map[Break]driver{
	ConstantFlag:        driveConstantFlag,
	PublishBeforeDelete: drivePublishBeforeDelete,
	NoL1Fence:           driveNoL1Fence,
	NoForget:            driveNoForget,
}

// driveKeys is how many keys beyond Config.Keys a run keeps for its
// driver: one per drive, and more for drives that did not happen.
func (c Config) driveKeys() int {
	if drivers[c.Break] == nil {
		return 0
	}
	return 10 * c.Drives
}

// keySpace is the number of keys the source, the locks and the checker
// know: the workers' and the driver's.
func (c Config) keySpace() int { return c.Keys + c.driveKeys() }

// drive drives the run's race until it has done so Config.Drives times or
// has used up its keys; the last drive that gave up says why in
// r.driveErr.
func (r *run) drive(ctx context.Context) {
	d := drivers[r.cfg.Break]
	for key := r.cfg.Keys; key < r.cfg.keySpace() && r.driven.Load() < int64(r.cfg.Drives); key++ {
		if ctx.Err() != nil || r.clock.now() >= int64(r.cfg.Deadline) {
			return
		}
		if err := d(ctx, r, key); err != nil {
			r.driveMu.Lock()
			r.driveErr = fmt.Errorf("drive on key %d: %w", key, err)
			r.driveMu.Unlock()
			continue
		}
		r.driven.Add(1)
	}
}

// driverWorker is the worker ID of the driver's operations on node i,
// apart from every worker's.
func (r *run) driverWorker(i int) int32 { return r.cfg.driverWorker(i) }

func (c Config) driverWorker(i int) int32 { return int32(c.Nodes*c.Goroutines + i) }

// get is the driver's recorded Get of key on node i.
func (r *run) get(ctx context.Context, i, key int) read {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rd := r.nodes[i].read(octx, r.driverWorker(i), key)
	r.driveMu.Lock()
	r.driveReads = append(r.driveReads, rd)
	r.driveMu.Unlock()
	return rd
}

// put is the driver's recorded write of key through node i: the source's
// version bumped, then Invalidate.
func (r *run) put(ctx context.Context, i, key int) (write, error) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	w, _ := r.nodes[i].write(octx, key, false) // the run's world never fails to begin
	r.writes.Add(1)
	r.driveMu.Lock()
	r.driveWrites = append(r.driveWrites, w)
	r.driveMu.Unlock()
	if w.Outcome != wroteOK {
		return w, errors.New("the write did not reach Redis")
	}
	return w, nil
}

// async runs f in a goroutine that the run waits for, and returns a
// channel closed when f returns.
func (r *run) async(f func()) <-chan struct{} {
	done := make(chan struct{})
	r.driveWG.Add(1)
	go func() {
		defer r.driveWG.Done()
		defer close(done)
		f()
	}()
	return done
}

// pastBound waits until a read that begins now is older than the bound
// for a write that returned at end: a stale value it gets from a node's
// own state can no longer be within the bound.
func (r *run) pastBound(ctx context.Context, end int64) error {
	d := time.Duration(end+int64(r.cfg.Bound())-r.clock.now()) + time.Millisecond
	if d <= 0 {
		return nil
	}
	return wait.Sleep(ctx, d)
}

// leaseWatch follows a node's L1 lease through the bus hooks, as L1 does:
// whether L1 was dropped (the bus lost its subscription or its lease
// lapsed), or renewed after its lease had run out (which drops it too),
// and until when it may serve.
type leaseWatch struct {
	mu   sync.Mutex
	end  time.Time // as L1 has it: the last answered ping's sending, plus LeaseTTL, less a Tick
	lost int64     // drops of the node's L1
}

func (w *leaseWatch) renewed(sentAt time.Time, ttl time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !time.Now().Before(w.end) {
		w.lost++ // L1 renews a lease that ran out (or never ran) by dropping everything
	}
	if end := sentAt.Add(ttl - l1.Tick); end.After(w.end) {
		w.end = end
	}
}

func (w *leaseWatch) dropped() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lost++
	w.end = time.Time{}
}

func (w *leaseWatch) state() (lost int64, end time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost, w.end
}

// probeStale is the read that finds a stale L1 entry past the bound on
// node i. If the node's L1 was dropped since the drive began (lost was its
// count of drops then), or its lease had run out when the read began, the
// entry was gone or not served, as the protocol wants even when broken:
// the drive did not happen.
func (r *run) probeStale(ctx context.Context, i, key int, lost int64) error {
	t := time.Now()
	r.get(ctx, i, key)
	if n, end := r.leases[i].state(); n != lost || !t.Before(end) {
		return fmt.Errorf("node %d's L1 was dropped or off its lease during the drive, and the stale entry with it", i)
	}
	return nil
}

// driveConstantFlag is R03 with every claim under one token: node 0
// claims the key and fetches v0, and is held before its fill; the key is
// written (v1), which deletes value and claim; node 1 claims it again
// (under the same token), fetches v1 and is held before its fill. Node 0
// fills first: the claim it finds is node 1's, which it cannot tell from
// its own, so v0 lands, and node 1's fill is refused. Node 1 then reads v0
// from Redis after v1's write returned, and so does node 0.
func driveConstantFlag(ctx context.Context, r *run, key int) error {
	ga := r.gates.arm(atBeforeFill, 0, key, true)
	gb := r.gates.arm(atBeforeFill, 1, key, true)
	defer r.gates.disarm(ga, gb)
	doneA := r.async(func() { r.get(ctx, 0, key) })
	if err := await(ctx, ga, doneA, "node 0's fill of v0"); err != nil {
		return err
	}
	if _, err := r.put(ctx, 1, key); err != nil {
		return err
	}
	doneB := r.async(func() { r.get(ctx, 1, key) })
	if err := await(ctx, gb, doneB, "node 1's fill of v1"); err != nil {
		return err
	}
	ga.release()
	<-doneA
	gb.release()
	<-doneB
	r.get(ctx, 1, key) // read-your-writes on the writer
	r.get(ctx, 0, key) // and stale from Redis on another node
	return nil
}

// drivePublishBeforeDelete is R14 with the message published before the
// delete: node 1 holds the key (v0) in Redis and its L1; node 0 writes it
// (v1), and between its publish and its delete the hook has node 1 apply
// the message (evicting the key) and read the key back from Redis, which
// still holds v0, into its L1. Past the bound after the write returned,
// node 1 still answers v0 from L1.
func drivePublishBeforeDelete(ctx context.Context, r *run, key int) error {
	lost, _ := r.leases[1].state()
	r.get(ctx, 1, key)
	g := r.gates.arm(atRefilled, 1, key, false)
	defer r.gates.disarm(g)
	w, err := r.put(ctx, 0, key)
	if err != nil {
		return err
	}
	select {
	case <-g.hit:
	default:
		return errors.New("node 1 did not read the key back between the publish and the delete")
	}
	if err := r.pastBound(ctx, w.End); err != nil {
		return err
	}
	return r.probeStale(ctx, 1, key, lost)
}

// driveNoL1Fence is R12 with L1 fills unfenced: node 0 fills the key (v0)
// in Redis; node 1 reads it there and is held before its L1 fill; the key
// is written (v1), and once node 1 has applied the message (evicting
// nothing yet), its fill of v0 goes on, unfenced, into its L1. Past the
// bound after the write returned, node 1 still answers v0 from L1.
func driveNoL1Fence(ctx context.Context, r *run, key int) error {
	lost, _ := r.leases[1].state()
	r.get(ctx, 0, key)
	held := r.gates.arm(atAfterRead, 1, key, true)
	applied := r.gates.arm(atApplied, 1, key, false)
	defer r.gates.disarm(held, applied)
	done := r.async(func() { r.get(ctx, 1, key) })
	if err := await(ctx, held, done, "node 1's read of v0 from Redis"); err != nil {
		return err
	}
	w, err := r.put(ctx, 0, key)
	if err != nil {
		return err
	}
	if err := await(ctx, applied, nil, "node 1's message of v1"); err != nil {
		return err
	}
	held.release()
	<-done
	if err := r.pastBound(ctx, w.End); err != nil {
		return err
	}
	return r.probeStale(ctx, 1, key, lost)
}

// driveNoForget is R20 with flights kept after an invalidation: node 0
// claims the key, fetches v0 and is held before its fill; node 0 writes the
// key (v1) and, once the write returned, Gets it again: the Get joins the
// old flight, which answers v0 on the node that wrote v1.
func driveNoForget(ctx context.Context, r *run, key int) error {
	held := r.gates.arm(atBeforeFill, 0, key, true)
	defer r.gates.disarm(held)
	done := r.async(func() { r.get(ctx, 0, key) })
	if err := await(ctx, held, done, "node 0's fill of v0"); err != nil {
		return err
	}
	// Armed once the first Get's own registration is past.
	joined := r.gates.arm(atFlight, 0, key, false)
	defer r.gates.disarm(joined)
	if _, err := r.put(ctx, 0, key); err != nil {
		return err
	}
	again := r.async(func() { r.get(ctx, 0, key) })
	if err := await(ctx, joined, again, "node 0's second Get joining a flight"); err != nil {
		return err
	}
	held.release()
	<-done
	<-again
	return nil
}
