package sim

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/tier"
)

// A run of node processes (Config.Procs): the parent starts this program
// again once per node (NodeProcess), tells each what to be, and serves it
// the source of truth and the row locks through its pipes; each node
// streams its reads and writes back as they return. The parent injects
// the faults, judges the history, and kills every node on every way out;
// a node dies with its parent (a parent-death signal, and the end of its
// standard input).

// procWait bounds the parent's wait for a node process to start or to
// stop, and for an order to be carried out: far beyond what any takes on
// a loaded machine.
const procWait = time.Minute

// pauseKeys is how many keys a pause cycle has the paused node read into
// L1 and the others write while it is stopped.
const pauseKeys = 4

// ProcStats describes a run of node processes.
type ProcStats struct {
	// Started counts the node processes started, restarts included;
	// Killed those the NodeKill fault killed (each was started again).
	Started int `json:"started"`
	Killed  int `json:"killed"`
	// Pauses counts the Pause fault's cycles, and Paused the time nodes
	// spent stopped in them.
	Pauses int           `json:"pauses"`
	Paused time.Duration `json:"paused_ns"`
	// ResumeReads counts the reads a paused node began the moment it
	// resumed, of keys other nodes wrote while it was stopped; ResumeStale
	// those answered from L1 with the value it held before the pause
	// (with the protocol as built, none: its lease ran out in the pause).
	ResumeReads int64 `json:"resume_reads"`
	ResumeStale int64 `json:"resume_stale"`
}

// procs is the parent's side of a run of node processes.
type procs struct {
	r   *run
	bin string
	ctx context.Context // the run's

	mu     sync.Mutex
	cur    []*child // each node's current process
	all    []*child // every process started, in order
	stats  ProcStats
	failed error // a node process that died of its own accord, or broke the protocol
	wg     sync.WaitGroup

	faultsMu sync.Mutex
	faults   map[FaultKind]chan struct{} // per running fault: closed to end it
	faultWG  map[FaultKind]*sync.WaitGroup
}

// child is one node process.
type child struct {
	p      *procs
	node   int
	inc    uint16
	name   string
	skip   map[int32]int64
	cmd    *exec.Cmd
	stdin  io.Closer
	in     *frameWriter
	ready  chan struct{}
	exited chan struct{} // closed once it was reaped and its locks released

	killed   atomic.Bool // by a fault, or by the parent's way out
	stopping atomic.Bool // told to stop

	// One reply at a time per order: the parent sends the next order only
	// after the last was answered.
	primed  chan primed
	resumed chan resumed
	written chan writeDone

	mu      sync.Mutex
	reads   []read
	writes  []write
	ops     map[int32]int64 // operations done by each worker, this process
	idle    bool
	stats   *FleetStats
	held    map[int]bool // row locks it holds
	taking  map[int]int  // row locks it waits for
	blocked map[int]bool // keys it may not lock now (a pause is being set up)
	changed chan struct{}
	dead    bool
}

// runProcs runs the fleet as node processes.
func (r *run) runProcs(ctx context.Context, skips map[FaultKind]string) (h *history, err error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("sim: the program to start as nodes: %w", err)
	}
	p := &procs{r: r, bin: bin, ctx: ctx, cur: make([]*child, r.cfg.Nodes),
		faults: map[FaultKind]chan struct{}{}, faultWG: map[FaultKind]*sync.WaitGroup{}}
	r.procs = p
	defer r.stopFleet()
	defer p.shutdown()
	for i := range r.cfg.Nodes {
		if _, err := p.start(i, 0, nil); err != nil {
			return nil, err
		}
	}
	r.clock.t0 = monotonic() // the run begins once the fleet is up
	for _, c := range p.cur {
		c.startWorkers(r.clock.t0)
	}
	ctl := newController(r, skips)
	ctlDone := make(chan struct{})
	go func() {
		defer close(ctlDone)
		ctl.loop(ctx)
	}()
	t := time.NewTicker(tick)
	for !r.stopped.Load() {
		<-t.C
		if ctx.Err() != nil || p.failure() != nil || r.failure() != nil || (r.cfg.Ops > 0 && p.idle()) || (r.cfg.Ops == 0 && r.over()) {
			r.stopped.Store(true)
		}
	}
	t.Stop()
	<-ctlDone
	end := r.clock.now()
	p.stopAll()
	if err := p.failure(); err != nil {
		return nil, err
	}
	h = &history{windows: ctl.windows, fetches: r.src.fetchTimes(), end: end, cluster: r.cluster}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.all {
		c.mu.Lock()
		h.reads = append(h.reads, c.reads...)
		h.writes = append(h.writes, c.writes...)
		if c.stats != nil {
			h.stats.sum(*c.stats)
		}
		c.mu.Unlock()
	}
	stats := p.stats
	h.procs = &stats
	return h, nil
}

// start starts incarnation inc of node i, whose workers skip the
// operations earlier incarnations did, and waits until its node is up.
func (p *procs) start(i int, inc uint16, skip map[int32]int64) (*child, error) {
	r := p.r
	c := &child{p: p, node: i, inc: inc, skip: skip, ready: make(chan struct{}), exited: make(chan struct{}),
		primed: make(chan primed, 1), resumed: make(chan resumed, 1), written: make(chan writeDone, 1),
		ops: map[int32]int64{}, held: map[int]bool{}, taking: map[int]int{}, blocked: map[int]bool{}, changed: make(chan struct{}),
		name: fmt.Sprintf("%s-n%d-%d", r.prefix, i, inc)}
	c.cmd = exec.Command(p.bin)
	c.cmd.Env = append(os.Environ(), nodeEnv+"=1")
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = nodeSysProcAttr()
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("sim: starting node %d: %w", i, err)
	}
	c.stdin, c.in = stdin, newFrameWriter(stdin)
	p.mu.Lock()
	p.cur[i] = c
	p.all = append(p.all, c)
	p.stats.Started++
	p.mu.Unlock()
	p.wg.Add(1)
	go c.readLoop(stdout)
	spec := nodeSpec{Config: r.cfg, Node: i, Inc: inc, Redis: r.target(i), Prefix: r.prefix, Name: c.name, Skip: skip}
	spec.Config.Progress = nil
	_ = c.in.sendJSON(fSpec, spec)
	t := time.NewTimer(procWait)
	defer t.Stop()
	select {
	case <-c.ready:
		return c, nil
	case <-c.exited:
		return nil, fmt.Errorf("sim: node %d exited before it was up: %v", i, c.cmd.ProcessState)
	case <-t.C:
		return nil, fmt.Errorf("sim: node %d not up within %s", i, procWait)
	}
}

// startWorkers starts the node's workers, on the run's clock whose origin is t0.
func (c *child) startWorkers(t0 int64) {
	_ = c.in.send(fGo, true, func(b []byte) []byte { return binary.AppendVarint(b, t0) })
}

// readLoop takes the node's frames until its pipe ends, then reaps it.
func (c *child) readLoop(out io.Reader) {
	p, r := c.p, c.p.r
	defer p.wg.Done()
	br := bufio.NewReaderSize(out, 64<<10)
	var buf []byte
	var bad error
	for bad == nil {
		t, pl, err := readFrame(br, &buf)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				bad = err
			}
			break
		}
		bad = c.take(t, pl)
	}
	if bad != nil {
		p.fail(fmt.Errorf("sim: node %d: %w", c.node, bad))
		_ = c.cmd.Process.Kill()
		_, _ = io.Copy(io.Discard, br)
	}
	err := c.cmd.Wait()
	if !c.killed.Load() && (err != nil || !c.stopping.Load()) {
		p.fail(fmt.Errorf("sim: node %d exited on its own: %v", c.node, c.cmd.ProcessState))
	}
	c.die(r)
	close(c.exited)
}

// take handles one frame from the node.
func (c *child) take(t byte, pl []byte) error {
	r := c.p.r
	switch t {
	case fReady:
		close(c.ready)
	case fRead:
		rd, err := decodeRead(pl)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.reads = append(c.reads, rd)
		c.mu.Unlock()
	case fWrite:
		w, err := decodeWrite(pl)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.writes = append(c.writes, w)
		c.mu.Unlock()
		r.writes.Add(1)
	case fOp:
		w, n := binary.Uvarint(pl)
		if n <= 0 {
			return errFrame
		}
		c.mu.Lock()
		c.ops[int32(w)]++
		c.mu.Unlock()
		r.done.Add(1)
	case fIdle:
		c.mu.Lock()
		c.idle = true
		c.mu.Unlock()
	case fCall:
		id, call, keys, err := decodeCall(pl, r.cfg.keySpace())
		if err != nil {
			return err
		}
		if call == callEnd {
			c.release(keys)
			return nil
		}
		c.p.wg.Add(1)
		go func() {
			defer c.p.wg.Done()
			c.serve(id, call, keys)
		}()
	case fPrimed:
		var v primed
		if err := json.Unmarshal(pl, &v); err != nil {
			return err
		}
		return answer(c.primed, v)
	case fResumed:
		var v resumed
		if err := json.Unmarshal(pl, &v); err != nil {
			return err
		}
		return answer(c.resumed, v)
	case fDone:
		var v writeDone
		if err := json.Unmarshal(pl, &v); err != nil {
			return err
		}
		return answer(c.written, v)
	case fStats:
		var v FleetStats
		if err := json.Unmarshal(pl, &v); err != nil {
			return err
		}
		c.mu.Lock()
		c.stats = &v
		c.mu.Unlock()
	default:
		return fmt.Errorf("%w: type %q", errFrame, t)
	}
	return nil
}

// answer hands the answer to an order to whoever waits for it: one at a
// time, as orders are sent.
func answer[T any](ch chan<- T, v T) error {
	select {
	case ch <- v:
		return nil
	default:
		return fmt.Errorf("%w: an answer to no order", errFrame)
	}
}

// serve answers one call of the node.
func (c *child) serve(id uint64, call byte, keys []int) {
	r := c.p.r
	var (
		status byte
		vs     []int64
	)
	switch call {
	case callFetch, callFetchMany:
		if len(keys) == 0 || call == callFetch && len(keys) != 1 {
			c.p.fail(fmt.Errorf("sim: node %d: a fetch of %d keys", c.node, len(keys)))
			return
		}
		var err error
		if call == callFetch {
			var v Value
			v, err = r.src.fetch(c.p.ctx, keys[0])
			vs = []int64{v.Version}
		} else {
			var m map[int]Value
			m, err = r.src.fetchMany(c.p.ctx, keys)
			for _, k := range keys {
				vs = append(vs, m[k].Version)
			}
		}
		switch {
		case errors.Is(err, tier.ErrNotFound):
			status, vs = statusNotFound, nil
		case err != nil:
			status, vs = statusFailed, nil // injected, or the run is being cancelled
		}
	case callBegin:
		var ok bool
		if vs, ok = c.begin(keys); !ok {
			return
		}
	default:
		c.p.fail(fmt.Errorf("sim: node %d: unknown call %q", c.node, call))
		return
	}
	_ = c.in.send(fReply, true, func(b []byte) []byte { return appendReply(b, id, status, vs) })
}

// notify wakes whoever waits for the node's locks to change. c.mu held.
func (c *child) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// begin takes the row locks of keys for the node, once none is blocked
// for it, and bumps the keys in the source. It reports false if the node
// died meanwhile (the locks are then released).
func (c *child) begin(keys []int) ([]int64, bool) {
	r := c.p.r
	c.mu.Lock()
	for slices.ContainsFunc(keys, func(k int) bool { return c.blocked[k] }) && !c.dead {
		ch := c.changed
		c.mu.Unlock()
		<-ch
		c.mu.Lock()
	}
	for _, k := range keys {
		c.taking[k]++
	}
	c.mu.Unlock()
	for _, k := range keys {
		r.locks[k].Lock() // in key order, as in one process
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		if c.taking[k]--; c.taking[k] == 0 {
			delete(c.taking, k)
		}
	}
	c.notify()
	if c.dead {
		for _, k := range keys {
			r.locks[k].Unlock()
		}
		return nil, false
	}
	vs := make([]int64, len(keys))
	for i, k := range keys {
		c.held[k] = true
		vs[i] = r.src.bump(k)
	}
	return vs, true
}

// release releases the row locks of keys that the node holds.
func (c *child) release(keys []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		if c.held[k] {
			delete(c.held, k)
			c.p.r.locks[k].Unlock()
		}
	}
	c.notify()
}

// die marks a reaped node dead and releases its row locks, once Redis has
// let go of its connections: a command it sent just before it was killed
// (a Set of an old version, say) is then no longer in Redis's buffers,
// where it could overtake the next writer of the key.
func (c *child) die(r *run) {
	if c.killed.Load() {
		c.awaitRedisLetGo(r)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dead = true
	for k := range c.held {
		r.locks[k].Unlock()
	}
	clear(c.held)
	c.notify()
}

// awaitRedisLetGo waits until Redis lists no connection of the node, if
// the backend can list them.
func (c *child) awaitRedisLetGo(r *run) {
	ctx, cancel := context.WithTimeout(context.Background(), procWait)
	defer cancel()
	for ctx.Err() == nil {
		var mu sync.Mutex
		held := false
		err := onEveryServer(ctx, r.admin, func(ctx context.Context, s *redis.Client) error {
			list, err := s.ClientList(ctx).Result()
			mu.Lock()
			held = held || strings.Contains(list, " name="+c.name+" ")
			mu.Unlock()
			return err
		})
		if err != nil || !held {
			return
		}
		t := time.NewTimer(time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// block keeps the node from taking the row locks of keys until unblock,
// and waits until it holds and waits for none of them.
func (c *child) block(keys []int) error {
	c.mu.Lock()
	for _, k := range keys {
		c.blocked[k] = true
	}
	t := time.NewTimer(procWait)
	defer t.Stop()
	for !c.dead && slices.ContainsFunc(keys, func(k int) bool { return c.held[k] || c.taking[k] > 0 }) {
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("node %d kept the row locks of %v for %s", c.node, keys, procWait)
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	return nil
}

func (c *child) unblock() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.blocked)
	c.notify()
}

func (p *procs) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed == nil {
		p.failed = err
	}
}

func (p *procs) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

func (p *procs) current(i int) *child {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur[i]
}

// idle reports whether every node's workers finished their shares.
func (p *procs) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cur {
		c.mu.Lock()
		idle := c.idle
		c.mu.Unlock()
		if !idle {
			return false
		}
	}
	return true
}

// stopAll tells every node to stop and waits until each has reported and
// exited; one that does not within procWait is killed.
func (p *procs) stopAll() {
	p.mu.Lock()
	cur := slices.Clone(p.cur)
	p.mu.Unlock()
	for _, c := range cur {
		c.stopping.Store(true)
		_ = c.in.send(fStop, true, nil)
	}
	t := time.NewTimer(procWait)
	defer t.Stop()
	for _, c := range cur {
		select {
		case <-c.exited:
		case <-t.C:
			p.fail(fmt.Errorf("sim: node %d did not stop within %s", c.node, procWait))
			c.kill()
			<-c.exited
		}
	}
}

// kill kills the node's process; it is reaped by its readLoop.
func (c *child) kill() {
	c.killed.Store(true)
	_ = c.cmd.Process.Kill()
}

// shutdown kills every node process still alive and waits until every
// goroutine of the run's processes is done: the way out of every path.
func (p *procs) shutdown() {
	p.mu.Lock()
	all := slices.Clone(p.all)
	p.mu.Unlock()
	for _, c := range all {
		select {
		case <-c.exited:
		default:
			c.kill()
		}
	}
	for _, c := range all {
		<-c.exited
		_ = c.stdin.Close()
	}
	p.wg.Wait()
}

// startFault starts a Pause or NodeKill window on node i; endFault ends
// it, once its cycle (or restart) is done.
func (p *procs) startFault(kind FaultKind, i int) {
	end := make(chan struct{})
	wg := &sync.WaitGroup{}
	p.faultsMu.Lock()
	p.faults[kind], p.faultWG[kind] = end, wg
	p.faultsMu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		switch kind {
		case Pause:
			p.pauses(i, end)
		case NodeKill:
			p.killAndRestart(i)
		}
	}()
}

func (p *procs) endFault(kind FaultKind) {
	p.faultsMu.Lock()
	end, wg := p.faults[kind], p.faultWG[kind]
	delete(p.faults, kind)
	delete(p.faultWG, kind)
	p.faultsMu.Unlock()
	if end != nil {
		close(end)
		wg.Wait()
	}
}

// killAndRestart kills node i's process and starts it again, its workers
// going on with their sequences where the killed process left them.
func (p *procs) killAndRestart(i int) {
	c := p.current(i)
	c.kill()
	t := time.NewTimer(procWait)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		p.fail(fmt.Errorf("sim: killed node %d not reaped within %s", i, procWait))
		return
	}
	skip := map[int32]int64{}
	for w, n := range c.skip {
		skip[w] += n
	}
	c.mu.Lock()
	for w, n := range c.ops {
		skip[w] += n
	}
	c.mu.Unlock()
	p.mu.Lock()
	p.stats.Killed++
	p.mu.Unlock()
	if p.r.stopped.Load() {
		return // the run is over: no one to start again for
	}
	n, err := p.start(i, c.inc+1, skip)
	if err != nil {
		p.fail(err)
		return
	}
	n.startWorkers(p.r.clock.t0)
}

// pauses runs the Pause fault's cycles on node i until end is closed (at
// least one).
func (p *procs) pauses(i int, end <-chan struct{}) {
	for cycle := 0; ; cycle++ {
		if err := p.pause(i, cycle); err != nil {
			p.fail(fmt.Errorf("sim: pause of node %d: %w", i, err))
			return
		}
		select {
		case <-end:
			return
		default:
		}
	}
}

// pause is one cycle of the Pause fault on node i: the node reads a few
// keys into its L1 and watches for its own pause; it is stopped
// (SIGSTOP); the next nodes write those keys; it stays stopped PauseFor,
// and at least the bound past the last of those writes; it is continued
// (SIGCONT) and reads the keys again the moment it runs. A reader may run
// before the node's ticker and its subscriber do, and then only the lease,
// checked on the monotonic clock read at the hit, keeps L1 from answering
// (R40).
func (p *procs) pause(i, cycle int) error {
	r := p.r
	c := p.current(i)
	rng := rand.New(rand.NewPCG(uint64(r.cfg.Seed), uint64(i)<<32|uint64(cycle)))
	keys := rng.Perm(r.cfg.Keys)[:min(pauseKeys, r.cfg.Keys)]
	slices.Sort(keys)
	if err := c.block(keys); err != nil {
		return err
	}
	defer c.unblock()
	if err := c.in.sendJSON(fPause, pauseOrder{Keys: keys, Jump: r.cfg.PauseFor / 2}); err != nil {
		return err
	}
	if _, err := await1(c.primed, c.exited, "its keys in L1"); err != nil {
		return err
	}
	stopAt := r.clock.now()
	if err := c.cmd.Process.Signal(sigStop); err != nil {
		return err
	}
	defer c.cmd.Process.Signal(sigCont) // on every way out; once more is harmless
	if err := waitStopped(c.cmd.Process.Pid); err != nil {
		return err
	}
	var last int64
	var written []int
	for j, w := range p.writers(i, keys) {
		if len(w) == 0 {
			continue
		}
		wc := p.current(j)
		if err := wc.in.sendJSON(fDo, writeOrder{Keys: w}); err != nil {
			return err
		}
		d, err := await1(wc.written, wc.exited, "the writes of the paused node's keys")
		if err != nil {
			return err
		}
		last = max(last, d.End)
		written = append(written, d.OK...)
	}
	resumeAt := max(stopAt+int64(r.cfg.PauseFor), last+int64(r.cfg.Bound()+l1.Tick))
	if d := time.Duration(resumeAt - r.clock.now()); d > 0 {
		t := time.NewTimer(d) // the pause itself: its length is the fault
		select {
		case <-t.C:
		case <-p.ctx.Done():
		}
		t.Stop()
	}
	contAt := r.clock.now()
	if err := c.cmd.Process.Signal(sigCont); err != nil {
		return err
	}
	res, err := await1(c.resumed, c.exited, "its reads after the pause")
	if err != nil {
		return err
	}
	after := res.Reads > 0 && res.First > contAt
	p.mu.Lock()
	p.stats.Pauses++
	p.stats.Paused += time.Duration(contAt - stopAt)
	if after {
		p.stats.ResumeReads += int64(res.Reads)
		p.stats.ResumeStale += int64(res.Stale)
	}
	p.mu.Unlock()
	if after && r.cfg.Break == CoarseLease && slices.ContainsFunc(res.StaleKeys, func(k int) bool { return slices.Contains(written, k) }) {
		// A reader ran before the node caught up, and L1 answered it with
		// a value whose key another node wrote meanwhile: the race the
		// control needs.
		r.driven.Add(1)
	}
	return nil
}

// writers splits keys between the nodes other than i: writers[j] are the
// keys node j writes.
func (p *procs) writers(i int, keys []int) [][]int {
	n := p.r.cfg.Nodes
	w := make([][]int, n)
	for x, k := range keys {
		j := (i + 1 + x%(n-1)) % n
		w[j] = append(w[j], k)
	}
	return w
}

// await1 waits for a node's answer to an order, or its death, or procWait.
func await1[T any](ch <-chan T, exited <-chan struct{}, what string) (T, error) {
	var zero T
	t := time.NewTimer(procWait)
	defer t.Stop()
	select {
	case v := <-ch:
		return v, nil
	case <-exited:
		return zero, fmt.Errorf("the node exited before %s", what)
	case <-t.C:
		return zero, fmt.Errorf("no %s within %s", what, procWait)
	}
}
