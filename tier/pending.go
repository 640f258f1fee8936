package tier

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/wait"
)

// pending holds the invalidations that this node applied locally but could
// not get to Redis (docs/RACES.md R17): deduplicated per key and per group,
// bounded, and replayed as soon as Redis answers again. It never drops one
// silently: past its bound it remembers the namespaces whose keys it could
// not keep, and whether it lost a group, and the replay invalidates those
// namespaces whole, or for a lost group every entry of the fleet, which
// covers both tiers on every node.
type pending struct {
	// busy counts the ops queued or being replayed, so that a read skips
	// the lock when there are none; recountLocked keeps it.
	busy     atomic.Int64
	mu       sync.Mutex
	keys     map[pendingKey]struct{}
	groups   map[string]struct{}
	flush    bool
	lostNS   map[string]struct{} // namespaces with keys dropped past the bound
	lostAll  bool                // a group was dropped: every entry, fleet-wide
	max      int
	overflow uint64 // count of ops that did not fit
	wake     chan struct{}
	// replaying holds the ops taken for the replay in flight: until it
	// succeeds, they still block reads.
	replaying []bus.Op
	// landed counts the replays of group invalidations that succeeded. A
	// read notes it before it reads Redis (fence.landed): the groups of
	// the value it reads are known only after, and a group pending when
	// the read began may have landed, and left the queue, before blocks
	// is asked (R56).
	landed atomic.Uint64
}

type pendingKey struct{ ns, key string }

func newPending(max int) *pending {
	return &pending{
		keys:   make(map[pendingKey]struct{}),
		groups: make(map[string]struct{}),
		lostNS: make(map[string]struct{}),
		max:    max,
		wake:   make(chan struct{}, 1),
	}
}

// add queues ops (and a flush) for replay, and wakes the replay loop.
func (p *pending) add(ops []bus.Op, flush bool) {
	p.requeue(ops, flush)
	p.kick()
}

// requeue queues ops (and a flush) for replay without waking the replay
// loop: for a batch that failed, which the loop retries after its backoff,
// not at once (that would spin while Redis is unreachable).
func (p *pending) requeue(ops []bus.Op, flush bool) {
	p.mu.Lock()
	for _, op := range ops {
		if op.Validate() != nil {
			continue // no message can carry it: replaying it would wedge the queue
		}
		full := len(p.keys)+len(p.groups) >= p.max
		switch {
		case op.Group != "":
			if _, ok := p.groups[op.Group]; ok {
				continue
			}
			if full {
				p.lostAll = true
				p.overflow++
				continue
			}
			p.groups[op.Group] = struct{}{}
		default:
			k := pendingKey{op.Namespace, op.Key}
			if _, ok := p.keys[k]; ok {
				continue
			}
			if full {
				p.lostNS[op.Namespace] = struct{}{}
				p.overflow++
				continue
			}
			p.keys[k] = struct{}{}
		}
	}
	p.flush = p.flush || flush
	p.recountLocked()
	p.mu.Unlock()
}

// kick wakes the replay loop.
func (p *pending) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes up to n ops from the queue, the escalations for what did
// not fit first, and whether a flush is due. Until setReplaying(nil), they
// still block reads, as if queued.
func (p *pending) take(n int) (ops []bus.Op, flush bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ns := range p.lostNS {
		ops = append(ops, bus.Op{Group: namespaceGroup(ns)})
		delete(p.lostNS, ns)
	}
	if p.lostAll {
		// A group invalidation did not fit: its members are unknown, so
		// every entry of every namespace, fleet-wide, becomes stale.
		ops = append(ops, bus.Op{Group: fleetGroup})
		p.lostAll = false
	}
	for g := range p.groups {
		if len(ops) >= n {
			break
		}
		ops = append(ops, bus.Op{Group: g})
		delete(p.groups, g)
	}
	for k := range p.keys {
		if len(ops) >= n {
			break
		}
		ops = append(ops, bus.Op{Namespace: k.ns, Key: k.key})
		delete(p.keys, k)
	}
	flush, p.flush = p.flush, false
	// Under the same lock: no moment where an op is neither queued nor
	// replaying, so blocks never misses it.
	p.replaying = ops
	p.recountLocked()
	return ops, flush
}

// blocks reports whether a value of key in namespace, in groups, may be
// older than an invalidation of this node that has not reached Redis yet:
// this node must not read it from Redis (read-your-writes, R21), only from
// the source. Ops being replayed count until their replay succeeded.
func (p *pending) blocks(namespace, key string, groups []string) bool {
	if p.busy.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lostAll {
		return true
	}
	if _, ok := p.lostNS[namespace]; ok {
		return true
	}
	if _, ok := p.keys[pendingKey{namespace, key}]; ok {
		return true
	}
	for _, g := range groups {
		if _, ok := p.groups[g]; ok {
			return true
		}
	}
	for _, op := range p.replaying {
		if (op.Group == "" && op.Namespace == namespace && op.Key == key) || op.Group == namespaceGroup(namespace) || op.Group == fleetGroup {
			return true
		}
		for _, g := range groups {
			if op.Group == g {
				return true
			}
		}
	}
	return false
}

// replayLanded ends a replay that succeeded.
func (p *pending) replayLanded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, op := range p.replaying {
		if op.Group != "" {
			p.landed.Add(1)
			break
		}
	}
	p.replaying = nil
	p.recountLocked()
}

// blocksSince is blocks for a read that noted landed as mark before it
// read Redis: a replay of a group invalidation that landed since, which
// blocks no more, may have landed after the read, and the value read may
// be older than it.
func (p *pending) blocksSince(mark uint64, namespace, key string, groups []string) bool {
	return p.landed.Load() != mark || p.blocks(namespace, key, groups)
}

// setReplaying records the ops of the replay in flight.
func (p *pending) setReplaying(ops []bus.Op) {
	p.mu.Lock()
	p.replaying = ops
	p.recountLocked()
	p.mu.Unlock()
}

// waiting returns the ops not yet in Redis: queued, and being replayed.
func (p *pending) waiting() int {
	return int(p.busy.Load())
}

// recountLocked derives busy from the queue and the replay in flight.
func (p *pending) recountLocked() {
	p.busy.Store(int64(p.sizeLocked() + len(p.replaying)))
}

// overflows returns how many ops did not fit.
func (p *pending) overflows() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.overflow
}

// size returns the ops waiting, escalations included.
func (p *pending) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sizeLocked()
}

func (p *pending) sizeLocked() int {
	n := len(p.keys) + len(p.groups) + len(p.lostNS)
	if p.flush || p.lostAll {
		n++
	}
	return n
}

// replay publishes what is pending until the node closes, backing off while
// Redis stays unreachable.
func (n *Node) replay() { n.replayAfter(0) }

// minReplayBackoff is the replay's first wait after a failed batch.
const minReplayBackoff = 10 * time.Millisecond

// replayAfter is replay, its first look at the queue after that long (0:
// at the first wake). A callback that ends its goroutine (a Recorder
// calling runtime.Goexit, as t.FailNow does), or a panic that gets past the
// guards, does not end the replays: the batch in flight goes back in the
// queue (replaying an invalidation twice is harmless), and, unless the node
// is closing, a new goroutine takes over after the next backoff, so that a
// callback that always does so is not called in a tight loop.
func (n *Node) replayAfter(after time.Duration) {
	const batch = 256
	backoff := max(after, minReplayBackoff)
	var (
		ops          []bus.Op
		flush, taken bool // taken: ops and flush are in flight
	)
	exited := true
	defer func() {
		if exited && taken {
			n.pending.requeue(ops, flush)
			n.pending.setReplaying(nil)
		}
		next := min(2*backoff, time.Second)
		n.takeOver(exited, "replays pending writes", func() { n.replayAfter(next) })
	}()
	if after > 0 {
		if wait.Sleep(n.life, after) != nil {
			exited = false
			return
		}
		n.pending.kick()
	}
	for {
		select {
		case <-n.life.Done():
			exited = false
			return
		case <-n.pending.wake:
		}
		for n.pending.size() > 0 {
			ops, flush = n.pending.take(batch)
			taken = true
			err := n.replayBatch(ops, flush)
			if err == nil {
				n.pending.replayLanded()
				taken = false
				n.stats.replayed.Add(uint64(len(ops)))
				if n.rec != nil {
					n.rec.Replayed(len(ops))
				}
				backoff = minReplayBackoff
				continue
			}
			n.pending.requeue(ops, flush) // back in the queue, deduplicated
			n.pending.setReplaying(nil)
			taken = false
			// Back off, but wake at once when the breaker closes or a new
			// write is queued.
			t := time.NewTimer(backoff)
			select {
			case <-n.life.Done():
				t.Stop()
				exited = false
				return
			case <-n.pending.wake:
			case <-t.C:
			}
			t.Stop()
			backoff = min(2*backoff, time.Second)
		}
	}
}

// replayed marks the ops of a replay: their local effect applied when they
// were queued, and applying it again at each attempt would evict, over and
// over, what this node fetched since (while Redis stays down, the replay
// tries at every new write).
type replayed struct{}

func (n *Node) replayBatch(ops []bus.Op, flush bool) error {
	ctx, cancel := context.WithTimeout(n.life, n.cfg.RedisTimeout*4)
	defer cancel()
	if flush {
		if err := n.pub.Flush(ctx); err != nil {
			return err
		}
	}
	if len(ops) == 0 {
		return nil
	}
	marked := make([]bus.Op, len(ops)) // ops is the replay's record, read by blocks
	for i, op := range ops {
		op.Payload = replayed{}
		marked[i] = op
	}
	return n.pub.Publish(ctx, marked...)
}
