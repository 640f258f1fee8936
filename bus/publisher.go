package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrClosed reports a Publish on a closed Publisher.
var ErrClosed = errors.New("bus: closed")

// Op is one key that a batch changes and announces, or, with Group set,
// one group it invalidates (Namespace and Key empty). Payload is the
// caller's and is handed back to the ExecFunc untouched (for example: write
// this value instead of deleting).
type Op struct {
	Namespace string
	Key       string
	Group     string
	Payload   any
}

// ErrInvalidOp reports an op that no message can carry.
var ErrInvalidOp = errors.New("bus: invalid op")

// Validate reports whether a message can carry op, or an error wrapping
// ErrInvalidOp.
func (op Op) Validate() error {
	if op.Group != "" || (op.Namespace == "" && op.Key == "") {
		if op.Namespace != "" || op.Key != "" || len(op.Group) == 0 || len(op.Group) > MaxGroupBytes {
			return fmt.Errorf("%w: a group op of %d bytes (1 to %d) with no key", ErrInvalidOp, len(op.Group), MaxGroupBytes)
		}
		return nil
	}
	switch {
	case len(op.Namespace) == 0 || len(op.Namespace) > maxNamespaceBytes:
		return fmt.Errorf("%w: namespace of %d bytes (1 to %d)", ErrInvalidOp, len(op.Namespace), maxNamespaceBytes)
	case len(op.Key) == 0 || len(op.Key) > MaxKeyBytes:
		return fmt.Errorf("%w: key of %d bytes (1 to %d)", ErrInvalidOp, len(op.Key), MaxKeyBytes)
	}
	return nil
}

// Batch is what one ExecFunc call must do in one atomic step: apply the ops
// to Redis, draw the next sequence number, and publish Head + seq + Body.
type Batch struct {
	Ops   []Op
	Flush bool // a fleet flush: no ops
	Head  []byte
	Body  []byte
}

// ExecFunc executes one batch. A Publisher calls it for one batch at a
// time, on its own goroutine or on a lone Publish caller's: it must not
// call Publish, Flush or Close on the same Publisher.
type ExecFunc func(ctx context.Context, b *Batch) error

// Publisher batches the changes of concurrent callers into few messages
// (group commit): while one batch is in flight, the ops that arrive are
// gathered into the next. A caller therefore waits for at most the batch in
// flight plus its own: no timer delays a lone Publish. At most one batch is
// in flight at a time. It is safe for concurrent use.
//
// A lone caller (nothing queued or in flight) whose ctx outlasts a batch (it
// has no deadline, or one later than Timeout from now) runs its batch
// itself, in its own goroutine, rather than handing it to the Publisher's
// and waiting to be woken: the common case of a write at a time pays no
// switch between goroutines. Such a caller observes a cancellation of its
// ctx only once its batch returns, which Timeout bounds, and so still
// returns by its deadline. A caller whose deadline comes sooner hands its
// ops over, so that it returns by its deadline while its batch goes on.
type Publisher struct {
	origin   NodeID
	exec     ExecFunc
	timeout  time.Duration
	maxOps   int
	maxBytes int

	mu      sync.Mutex
	cond    chan struct{} // signalled when work is queued or a batch ends with work queued; buffered 1
	pending []pendingOp
	flushes []*request
	closed  bool
	busy    bool            // a batch is taken and not yet finished
	lone    sync.WaitGroup  // batches that lone callers run themselves
	life    context.Context // cancelled by Close: a batch in flight gives up
	cancel  context.CancelFunc
	done    chan struct{}
}

type request struct {
	ctx  context.Context
	left int   // ops not yet executed; guarded by Publisher.mu
	err  error // first error; guarded by Publisher.mu
	done chan error
}

type pendingOp struct {
	op  Op
	req *request
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Origin is this node's ID, written into every message.
	Origin NodeID
	// Exec executes each batch. Required.
	Exec ExecFunc
	// Timeout bounds one Exec call. Default 5s.
	Timeout time.Duration
	// MaxOps bounds the ops of one batch. Default 512.
	MaxOps int
	// MaxBytes bounds the keys' bytes in one message (a single larger key
	// goes alone). Default 64 KiB; at most MaxMessageBytes/2.
	MaxBytes int
}

// NewPublisher starts a Publisher whose background work hangs off life;
// Close stops it.
func NewPublisher(life context.Context, cfg PublisherConfig) (*Publisher, error) {
	if cfg.Exec == nil {
		return nil, errors.New("bus: a publisher needs an Exec func")
	}
	p := &Publisher{
		origin:   cfg.Origin,
		exec:     cfg.Exec,
		timeout:  cfg.Timeout,
		maxOps:   cfg.MaxOps,
		maxBytes: cfg.MaxBytes,
		cond:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	p.life, p.cancel = context.WithCancel(life)
	if p.timeout <= 0 {
		p.timeout = 5 * time.Second
	}
	if p.maxOps <= 0 {
		p.maxOps = 512
	}
	if p.maxBytes <= 0 {
		p.maxBytes = 64 << 10
	}
	// Room for one more op of the largest size, and the framing of all.
	p.maxBytes = min(p.maxBytes, MaxMessageBytes/2)
	go p.run()
	return p, nil
}

// Publish applies ops and announces them, batched with other callers' ops,
// and returns when all of them have been executed, or when ctx is done (the
// ops may still be executed afterwards). A request of many ops may span
// several batches. A lone caller whose ctx outlasts a batch runs its batch
// itself (see Publisher); if its ops fit in that batch, it returns the
// batch's outcome even if ctx was cancelled while it ran.
func (p *Publisher) Publish(ctx context.Context, ops ...Op) error {
	if len(ops) == 0 {
		return nil
	}
	for i, op := range ops {
		// Checked here, so that one bad op fails its own caller, not every
		// caller gathered into its batch.
		if err := op.Validate(); err != nil {
			return fmt.Errorf("bus publish: op %d: %w", i, err)
		}
	}
	r := &request{ctx: ctx, left: len(ops), done: make(chan error, 1)}
	p.mu.Lock()
	if p.closed || p.life.Err() != nil {
		p.mu.Unlock()
		return ErrClosed
	}
	var end time.Time
	lone := !p.busy && len(p.pending) == 0 && len(p.flushes) == 0
	if lone {
		end, lone = p.loneDeadline(ctx)
	}
	for _, op := range ops {
		p.pending = append(p.pending, pendingOp{op: op, req: r})
	}
	if !lone {
		p.mu.Unlock()
		return p.wait(ctx, r)
	}
	// The queue held nothing but these ops: the batch taken is this
	// caller's alone (or its first part, if the ops exceed one batch).
	batch, _ := p.takeLocked()
	if batch == nil { // ctx has ended: its ops were dropped and settled
		p.mu.Unlock()
		return p.wait(ctx, r)
	}
	p.lone.Add(1)
	p.mu.Unlock()
	p.runLone(batch, end)
	select {
	case err := <-r.done: // the batch's outcome, even if ctx ended meanwhile
		return err
	default: // more ops than one batch holds: the rest are queued
		return p.wait(ctx, r)
	}
}

// errExecExited settles a batch whose ExecFunc ended its goroutine
// (runtime.Goexit) instead of returning.
var errExecExited = errors.New("bus publish: exec ended its goroutine")

// runLone executes a batch that a lone caller took, on its goroutine, and
// finishes it however exec ends, so that the batches queued behind it
// still run and Close does not wait for it forever.
func (p *Publisher) runLone(batch []pendingOp, end time.Time) {
	defer p.lone.Done()
	err := errExecExited
	defer func() { p.finish(batch, nil, err) }()
	err = p.execute(batch, nil, end)
}

// loneDeadline returns the deadline of a batch that starts now, and
// whether ctx outlasts it: a caller whose ctx does may run its own batch.
func (p *Publisher) loneDeadline(ctx context.Context) (time.Time, bool) {
	end := time.Now().Add(p.timeout)
	d, ok := ctx.Deadline()
	return end, !ok || !d.Before(end)
}

// Flush announces a fleet flush: every receiver drops its whole L1.
func (p *Publisher) Flush(ctx context.Context) error {
	r := &request{ctx: ctx, left: 1, done: make(chan error, 1)}
	p.mu.Lock()
	if p.closed || p.life.Err() != nil {
		p.mu.Unlock()
		return ErrClosed
	}
	p.flushes = append(p.flushes, r)
	p.mu.Unlock()
	return p.wait(ctx, r)
}

func (p *Publisher) wait(ctx context.Context, r *request) error {
	select {
	case p.cond <- struct{}{}:
	default:
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close fails every op not yet executed with ErrClosed and stops the
// Publisher, waiting for the batch in flight. It is idempotent.
func (p *Publisher) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		p.lone.Wait()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	<-p.done
	p.lone.Wait()
}

// run executes the batches that callers hand over, one at a time, until
// the Publisher closes. An ExecFunc that ends run's goroutine
// (runtime.Goexit) instead of returning fails its batch's callers with
// errExecExited, and a new goroutine takes over the queue.
func (p *Publisher) run() {
	exited := true
	defer func() {
		if exited {
			go p.run()
			return
		}
		close(p.done)
	}()
	for {
		if p.life.Err() != nil {
			// Closed, or the parent context ended: nothing queued runs
			// after this point.
			p.failAll(ErrClosed)
			exited = false
			return
		}
		batch, flush := p.take()
		if batch == nil && flush == nil {
			select {
			case <-p.cond:
				continue
			case <-p.life.Done():
				continue
			}
		}
		p.runBatch(batch, flush)
	}
}

// runBatch executes a batch that run took, and finishes it however exec
// ends, as runLone does.
func (p *Publisher) runBatch(batch []pendingOp, flush *request) {
	err := errExecExited
	defer func() { p.finish(batch, flush, err) }()
	err = p.execute(batch, flush, time.Now().Add(p.timeout))
}

// take removes the next batch from the queue, unless one is in flight.
func (p *Publisher) take() ([]pendingOp, *request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy {
		return nil, nil // its finish signals cond
	}
	return p.takeLocked()
}

// takeLocked removes the next batch from the queue: a flush alone, or as
// many ops as fit; if it takes one, a batch is in flight until finish. Ops
// of requests whose ctx is done are dropped here.
func (p *Publisher) takeLocked() ([]pendingOp, *request) {
	for len(p.flushes) > 0 {
		r := p.flushes[0]
		p.flushes = p.flushes[1:]
		if err := r.ctx.Err(); err != nil {
			p.settleLocked(r, err)
			continue
		}
		p.busy = true
		return nil, r
	}
	var (
		batch []pendingOp
		bytes int
		i     int
	)
	for i = 0; i < len(p.pending) && len(batch) < p.maxOps; i++ {
		po := p.pending[i]
		if err := po.req.ctx.Err(); err != nil {
			p.settleLocked(po.req, err)
			continue
		}
		size := len(po.op.Namespace) + len(po.op.Key) + len(po.op.Group)
		if len(batch) > 0 && bytes+size > p.maxBytes {
			break
		}
		batch = append(batch, po)
		bytes += size
	}
	p.pending = p.pending[i:]
	if len(p.pending) == 0 {
		p.pending = nil // let the backing array go
	}
	if batch == nil {
		return nil, nil
	}
	p.busy = true
	return batch, nil
}

// execute runs one batch, or a flush, with an ExecFunc whose ctx ends at
// end or when the Publisher closes.
func (p *Publisher) execute(batch []pendingOp, flush *request, end time.Time) error {
	b := &Batch{Flush: flush != nil}
	m := Message{Kind: KindKeys, Origin: p.origin}
	if b.Flush {
		m.Kind = KindFlush
	} else {
		b.Ops = make([]Op, len(batch))
		idx := map[string]int{}
		for i, po := range batch {
			b.Ops[i] = po.op
			if po.op.Group != "" {
				m.InvalidGroups = append(m.InvalidGroups, po.op.Group)
				continue
			}
			g, ok := idx[po.op.Namespace]
			if !ok {
				g = len(m.Groups)
				idx[po.op.Namespace] = g
				m.Groups = append(m.Groups, Group{Namespace: po.op.Namespace})
			}
			m.Groups[g].Keys = append(m.Groups[g].Keys, po.op.Key)
		}
	}
	var err error
	if b.Head, b.Body, err = m.Split(); err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(p.life, end)
	defer cancel()
	if err := p.safeExec(ctx, b); err != nil {
		return fmt.Errorf("bus publish: %w", err)
	}
	return nil
}

// safeExec calls the ExecFunc, turning a panic into an error for the
// batch's callers rather than a crash of the host process.
func (p *Publisher) safeExec(ctx context.Context, b *Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("exec panicked: %v", r)
		}
	}()
	return p.exec(ctx, b)
}

// finish settles the callers of a batch and ends its flight; if more is
// queued, it wakes run to take it.
func (p *Publisher) finish(batch []pendingOp, flush *request, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy = false
	if len(p.pending) > 0 || len(p.flushes) > 0 {
		select {
		case p.cond <- struct{}{}:
		default:
		}
	}
	if flush != nil {
		p.settleLocked(flush, err)
		return
	}
	for _, po := range batch {
		p.settleLocked(po.req, err)
	}
}

// settleLocked marks one of r's ops as done with err, and completes r when
// none is left.
func (p *Publisher) settleLocked(r *request, err error) {
	if r.err == nil {
		r.err = err
	}
	r.left--
	if r.left == 0 {
		r.done <- r.err
	}
}

func (p *Publisher) failAll(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, po := range p.pending {
		p.settleLocked(po.req, err)
	}
	for _, r := range p.flushes {
		p.settleLocked(r, err)
	}
	p.pending, p.flushes = nil, nil
}
