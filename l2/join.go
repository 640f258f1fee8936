package l2

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// joiner joins the one-key peeks that a Store's callers make at once into
// one round trip: on one server, all of them; on a cluster, those of the
// keys of one master, through that master's client (Store.joinerFor). A
// caller that finds no batch in flight sends its own at once, alone, so a
// lone caller waits no longer than it did before; callers that arrive while
// a batch is in flight queue, and the next batch takes them all. Each batch
// is one pipeline: every key's PTTL, then one MGET (on a cluster, one per
// slot) of, for each set of callers that know the same groups, their
// values and then those groups' stamps. Each key's lifetime is still read
// before its value (R54), and its value with its stamps, atomically: a
// joined peek answers what the peek alone would have (R57).
//
// The batch runs in the goroutine of one of its callers, its leader, under
// the leader's context, the Store's timeout and Abort. A caller that gives
// up returns at once: one still queued leaves the queue; one made the
// leader of a batch not yet sent hands it to another of its callers still
// waiting, or, if none is, drops it unsent; a leader whose batch is in
// flight ends it, and the batch's other callers go back to the head of the
// queue for the next batch, so that no caller's giving up fails another's
// peek. A batch that finds Redis unreachable fails the callers queued
// behind it as well.
type joiner struct {
	mu    sync.Mutex
	busy  bool        // a batch is in flight, or handed to a leader
	queue []*peekCall // callers waiting for the next batch

	// client sends the batches: the Store's on one server, a master's on
	// a cluster. Set before the joiner is shared.
	client redis.UniversalClient
	// pipe is the pipeline of the batch in flight, reused: one batch is in
	// flight at a time, and Exec empties it.
	pipe redis.Pipeliner
}

// peekCall is one caller's peek in a joined batch.
type peekCall struct {
	k     Keys
	known []string
	reply peekKey // filled in by the batch's leader
	err   error   // the batch's error; then reply is empty

	// done receives nil when reply is in, or the batch the caller is to
	// lead. Buffered: each call receives once, except that a leader that
	// leaves hands its batch on to a caller that received nothing yet.
	done chan []*peekCall
	left bool // the caller gave up; under joiner.mu
}

// peekJoined is the first round trip of Peek, joined with the peeks of
// other callers in flight at the same time (on a cluster, of keys of the
// same master). Each caller asks the Guard for itself, and reports how its
// own peek ended, as an operation of its own would: the breaker counts
// callers, not batches.
func (s *Store) peekJoined(ctx context.Context, k Keys, known []string) (reply peekKey, err error) {
	probe, err := s.admit()
	if err != nil {
		return peekKey{}, err
	}
	err = errEnded // until the peek returns (see doFor)
	defer func() { s.report(ctx, probe, err) }()
	j, jerr := s.joinerFor(ctx, k)
	if jerr != nil {
		return peekKey{}, jerr
	}
	return s.joinPeek(ctx, j, k, known)
}

// joinerFor returns the joiner of k's peeks: the Store's on one server; on
// a cluster, the one of the master that serves k's slot, as the cluster
// client last learned it (a slot that moved since answers MOVED or ASK, and
// its peeks are left to the read script, which the cluster client
// redirects).
func (s *Store) joinerFor(ctx context.Context, k Keys) (*joiner, error) {
	if s.cluster == nil {
		return &s.join, nil
	}
	m, err := s.cluster.MasterForKey(ctx, k.Value)
	if err != nil {
		return nil, err
	}
	if j, ok := s.joins.Load(m); ok {
		return j.(*joiner), nil
	}
	j, loaded := s.joins.LoadOrStore(m, &joiner{client: m})
	// A failover or a reshard brings clients of new masters, and the
	// cluster client may replace a node's client: forget them all now and
	// then rather than keep the gone ones for ever. A batch in flight
	// keeps its joiner; the next peeks make new ones.
	if !loaded && s.joinCount.Add(1) > maxJoiners {
		s.joins.Clear()
		s.joinCount.Store(0)
	}
	return j.(*joiner), nil
}

// maxJoiners bounds the joiners a Store on a cluster keeps: one per master
// client it has peeked through since it last forgot them.
const maxJoiners = 256

func (s *Store) joinPeek(ctx context.Context, j *joiner, k Keys, known []string) (peekKey, error) {
	call := peekCalls.Get().(*peekCall)
	call.k, call.known = k, known
	j.mu.Lock()
	if !j.busy {
		j.busy = true
		j.mu.Unlock()
		batch := [1]*peekCall{call}
		s.lead(ctx, j, call, batch[:])
		return call.recycle() // alone: nobody else ever saw the call
	}
	j.queue = append(j.queue, call)
	j.mu.Unlock()
	select {
	case batch := <-call.done:
		if batch != nil {
			s.lead(ctx, j, call, batch)
		}
		// Nobody touches the call any more: it left the queue, and its
		// batch's leader sent it its one message (or it led the batch).
		return call.recycle()
	case <-ctx.Done():
		// Not recycled: its leader may still write to it.
		j.leave(call)
		return peekKey{}, ctx.Err()
	}
}

// peekCalls recycles the calls of peeks, with their channels: a lone
// one's, and a queued one's once answered (not one that gave up, which its
// leader may still write to).
var peekCalls = sync.Pool{New: func() any { return &peekCall{done: make(chan []*peekCall, 1)} }}

// recycle returns c's outcome and puts c back in peekCalls: only once
// nobody else can touch it.
func (c *peekCall) recycle() (peekKey, error) {
	reply, err := c.reply, c.err
	*c = peekCall{done: c.done}
	peekCalls.Put(c)
	return reply, err
}

// lead sends batch, which self leads, under self's context ctx, and hands
// each caller its reply. Then it hands the queue to the next leader, or
// notes that no batch is in flight; but if Redis could not be reached, it
// fails the queue too, at once, rather than make each caller there wait
// for its own timeout in turn.
//
// If ctx ends first, the batch ends with it, so that the leader returns at
// once like any caller that gives up; the batch's other callers go back to
// the head of the queue, for the next batch, as if they had not been sent.
func (s *Store) lead(ctx context.Context, j *joiner, self *peekCall, batch []*peekCall) {
	sent := false
	defer func() {
		if !sent {
			// A hook of the Redis client ended this goroutine inside the
			// batch (runtime.Goexit, as t.FailNow does): its other callers
			// go back to the head of the queue, as when ctx ends, and the
			// queue goes on, rather than wait for ever behind a batch that
			// never ends. The pipeline may hold the batch's commands.
			j.pipe = nil
			j.requeue(self, batch)
		}
	}()
	err := s.sendBatch(ctx, j, batch)
	sent = true
	if err != nil && ctx.Err() != nil {
		self.reply, self.err = peekKey{}, err
		j.requeue(self, batch)
		return
	}
	for _, c := range batch {
		if err != nil {
			c.reply, c.err = peekKey{}, err
		}
		if c != self {
			c.done <- nil
		}
	}
	if err != nil && outcome(context.Background(), err) == Unreachable {
		for _, c := range j.drain() {
			c.err = err
			c.done <- nil
		}
	}
	j.next()
}

// requeue puts the callers of a batch that its leader, self, abandoned back
// at the head of the queue (those still waiting), and hands the queue on.
func (j *joiner) requeue(self *peekCall, batch []*peekCall) {
	j.mu.Lock()
	back := make([]*peekCall, 0, len(batch)-1+len(j.queue))
	for _, c := range batch {
		if c != self && !c.left {
			back = append(back, c)
		}
	}
	j.queue = append(back, j.queue...)
	j.mu.Unlock()
	j.next()
}

// sendBatch sends batch under ctx, its leader's context, and the Store's
// timeout. A panic of the Redis client's hooks (the caller's code) is an
// error of every caller of the batch, wrapping ErrPanic: it must not leave
// the joiner busy for ever, with every peek after it queued behind a batch
// that never ends.
func (s *Store) sendBatch(ctx context.Context, j *joiner, batch []*peekCall) (err error) {
	defer func() {
		if r := recover(); r != nil {
			j.pipe = nil // it may hold the batch's commands still
			err = fmt.Errorf("%w: %v", ErrPanic, r)
		}
	}()
	return s.bounded(ctx, 0, func(ctx context.Context) error {
		return s.sendJoined(ctx, j, batch)
	})
}

// ErrPanic reports an operation that a panic ended: of a hook of the
// Redis client, in a batch of peeks that several callers shared.
var ErrPanic = errors.New("l2: panic in a Redis client hook")

// drain empties the queue and returns what it held.
func (j *joiner) drain() []*peekCall {
	j.mu.Lock()
	defer j.mu.Unlock()
	q := j.queue
	j.queue = nil
	return q
}

// next hands the queue, as the next batch, to its first caller, or notes
// that no batch is in flight.
func (j *joiner) next() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.queue) == 0 {
		j.busy = false
		return
	}
	batch := j.queue
	j.queue = nil
	batch[0].done <- batch
}

// leave withdraws a caller that gave up: from the queue if it is still
// there; else, if it was made the leader of a batch, by handing the batch
// to another of its callers that waits, or dropping it if none does.
func (j *joiner) leave(call *peekCall) {
	j.mu.Lock()
	call.left = true
	if i := slices.Index(j.queue, call); i >= 0 {
		j.queue = slices.Delete(j.queue, i, i+1)
		j.mu.Unlock()
		return
	}
	var batch []*peekCall
	select {
	case batch = <-call.done:
	default:
	}
	if batch == nil {
		j.mu.Unlock()
		return // a member of a batch: its leader sends it
	}
	for _, c := range batch {
		if !c.left {
			c.done <- batch
			j.mu.Unlock()
			return
		}
	}
	j.mu.Unlock()
	j.next() // nobody waits for this batch: it is not sent
}

// sendJoined sends one batch through j's client: every key's PTTL, then
// one MGET (on a cluster, one per slot) of, for each set of callers that
// know the same groups (one set, unless Caches of other configs peek at
// once), their values and then those groups' stamps (the slot's). It files
// each caller's share of the replies in its reply: its value and its
// groups' stamps come from one MGET. On a cluster, a caller whose command
// got an error reply (its slot moved since the cluster client last looked:
// MOVED, ASK; or the cluster is down) is marked missed, for the read
// script to answer through the cluster client.
func (s *Store) sendJoined(ctx context.Context, j *joiner, batch []*peekCall) error {
	if j.pipe == nil {
		j.pipe = j.client.Pipeline()
	}
	pipe := j.pipe
	n := len(batch)
	for _, c := range batch {
		c.reply = peekKey{} // a call requeued from an abandoned batch starts afresh
	}
	var tags []string // on a cluster, each call's slot tag
	if s.cluster != nil {
		tags = make([]string, n)
		for i, c := range batch {
			tags[i] = s.tag(c.k)
		}
	}
	// For each call: its MGET (the index of the first call of the batch in
	// the same slot) and its set (of the first in the same slot with the
	// same known groups); for each set, its share of its MGET's reply,
	// [from, to); for each MGET, the size of its reply and its index in
	// cmds.
	ints := make([]int, 6*n)
	mgetOf, sets, from, to, want, cmdAt := ints[:n], ints[n:2*n], ints[2*n:3*n], ints[3*n:4*n], ints[4*n:5*n], ints[5*n:]
	size, nmget := 0, 0
	for i, c := range batch {
		mgetOf[i], sets[i] = i, i
		for j := range i {
			if mgetOf[j] == j && (tags == nil || tags[j] == tags[i]) {
				mgetOf[i] = j
				break
			}
		}
		for j := mgetOf[i]; j < i; j++ {
			if sets[j] == j && mgetOf[j] == mgetOf[i] && slices.Equal(batch[j].known, c.known) {
				sets[i] = j
				break
			}
		}
		if mgetOf[i] == i {
			nmget++
			size++ // "mget"
		}
		if sets[i] == i {
			size += len(c.known)
		}
		size++
	}
	// One slab for every command's arguments: "pttl" and the key for each
	// call, then each MGET's: "mget" and its keys. A key's name is boxed
	// once, for both of its commands. The slab never grows, so that the
	// commands' arguments stay where they were queued.
	args := make([]any, 2*n, 2*n+size)
	for i, c := range batch {
		args[2*i], args[2*i+1] = "pttl", any(c.k.Value)
	}
	// The commands, queued at once: one append to the pipeline's list;
	// each call's PTTL at its index, then the MGETs.
	cmds := make([]redis.Cmder, n, n+nmget)
	for i := range batch {
		cmds[i] = redis.NewDurationCmd(ctx, time.Millisecond, args[2*i:2*i+2:2*i+2]...)
	}
	for m := range batch {
		if mgetOf[m] != m {
			continue
		}
		start := len(args)
		args = append(args, "mget")
		for i, c := range batch[m:] {
			i += m
			if sets[i] != i || mgetOf[i] != m {
				continue
			}
			from[i] = len(args) - start - 1
			for j := i; j < n; j++ {
				if sets[j] == i {
					batch[j].reply.at = len(args) - start - 1 - from[i]
					args = append(args, args[2*j+1])
				}
			}
			tag := ""
			if tags != nil {
				tag = tags[i]
			}
			for _, g := range c.known {
				args = append(args, s.stampArg(tag, g))
			}
			to[i] = len(args) - start - 1
		}
		want[m], cmdAt[m] = len(args)-start-1, len(cmds)
		cmds = append(cmds, redis.NewSliceCmd(ctx, args[start:len(args):len(args)]...))
	}
	if err := pipe.BatchProcess(ctx, cmds...); err != nil {
		return err
	}
	_, err := pipe.Exec(ctx)
	if err != nil && (s.cluster == nil || !isReplyError(err)) {
		return err
	}
	for i, c := range batch {
		m, set := mgetOf[i], sets[i]
		pttl, mget := cmds[i].(*redis.DurationCmd), cmds[cmdAt[m]].(*redis.SliceCmd)
		if err != nil {
			perr, merr := pttl.Err(), mget.Err()
			if isReplyError(perr) || isReplyError(merr) {
				c.reply.missed = true
				continue
			}
			if err := errors.Join(perr, merr); err != nil {
				return err // not Redis's answer: the batch failed
			}
		}
		vals := mget.Val()
		if len(vals) != want[m] {
			return fmt.Errorf("%w: MGET of %d keys gave %d values", ErrUnexpectedReply, want[m], len(vals))
		}
		c.reply.vals = vals[from[set]:to[set]:to[set]]
		c.reply.pttl = pttl.Val()
	}
	return nil
}

// isReplyError reports whether err is an error reply of Redis's.
func isReplyError(err error) bool {
	var reply redis.Error
	return err != nil && !errors.Is(err, redis.Nil) && errors.As(err, &reply)
}
