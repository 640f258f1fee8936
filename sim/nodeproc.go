package sim

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/tier"
)

// nodeEnv marks a process started as a node of a run of node processes.
const nodeEnv = "TIERSIM_NODE_PROCESS"

// NodeProcess runs this process as a node of a run of node processes
// (Config.Procs) if the run started it as one, and then exits; otherwise
// it returns at once. A program that runs such runs must call it first
// thing in main, and a test binary first thing in TestMain: the run
// starts the program again as each of its nodes.
func NodeProcess() {
	if os.Getenv(nodeEnv) != "1" {
		return
	}
	os.Exit(serveNode(os.Stdin, os.Stdout))
}

// nodeSpec is what a node process is told to be.
type nodeSpec struct {
	Config Config
	Node   int
	Inc    uint16
	Redis  target // through the node's fault proxies if it has them
	Prefix string
	Name   string          // of its Redis connections (CLIENT SETNAME)
	Skip   map[int32]int64 // operations of each worker done by earlier incarnations
}

// pauseOrder tells a node process to read Keys until L1 answers each,
// then to watch for a jump of its clock longer than Jump (its own pause)
// and read them again the moment it sees one.
type pauseOrder struct {
	Keys []int
	Jump time.Duration
}

// primed answers a pauseOrder: the keys L1 now holds, at these versions.
type primed struct {
	InL1 map[int]int64
}

// resumed reports the reads a node process began the moment it saw its
// clock jump: how many, how many L1 answered with the value it held
// before (Stale, of the keys StaleKeys), and when the first began.
type resumed struct {
	Reads, Stale int
	StaleKeys    []int
	First        int64
}

// writeOrder tells a node process to write Keys now.
type writeOrder struct {
	Keys []int
}

// writeDone answers a writeOrder: when the last write returned, and the
// keys whose write returned nil.
type writeDone struct {
	End int64
	OK  []int
}

// primeTries bounds the reads of a key that a pause's priming makes for
// L1 to answer it (a write of the key by another node evicts it meanwhile).
const primeTries = 20

// errParentGone ends a node process's call once its parent is gone.
var errParentGone = errors.New("sim: the run's parent process is gone")

// nodeProc is a node process: one fleetNode, whose world is the parent.
type nodeProc struct {
	spec nodeSpec
	cfg  Config
	n    *fleetNode
	out  *frameWriter

	mu      sync.Mutex
	pending map[uint64]chan reply
	nextID  atomic.Uint64
	gone    chan struct{} // closed when the parent's pipe ends

	over  atomic.Bool   // the parent said stop
	stop  chan struct{} // closed by fStop
	tasks sync.WaitGroup
}

type reply struct {
	status byte
	vs     []int64
}

// serveNode is a node process's life: it reads its spec, opens its node,
// tells the parent it is up, runs its workers from fGo until fStop, and
// answers the parent's orders meanwhile. It returns the exit status.
func serveNode(in io.Reader, out io.Writer) int {
	redis.SetLogger(quietRedis{}) // dial failures are the faults' doing
	br := bufio.NewReaderSize(in, 64<<10)
	var buf []byte
	t, p, err := readFrame(br, &buf)
	if err != nil || t != fSpec {
		fmt.Fprintf(os.Stderr, "sim node: no spec from the parent (frame %q): %v\n", t, err)
		return 2
	}
	np := &nodeProc{out: newFrameWriter(out), pending: map[uint64]chan reply{}, gone: make(chan struct{}), stop: make(chan struct{})}
	if err := json.Unmarshal(p, &np.spec); err != nil {
		fmt.Fprintln(os.Stderr, "sim node: bad spec:", err)
		return 2
	}
	np.cfg = np.spec.Config
	ctx := context.Background()
	m, err := openMember(ctx, np.cfg, np.spec.Prefix, np.spec.Redis, np.spec.Name, procPoints(np.cfg.Break), np)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sim node %d: %v\n", np.spec.Node, err)
		return 2
	}
	np.n = &fleetNode{i: np.spec.Node, inc: np.spec.Inc, cfg: np.cfg, m: m, clock: &clock{}, world: np, pad: make([]byte, np.cfg.ValueBytes)}
	flushStop := make(chan struct{})
	go np.out.flushLoop(flushStop)
	started := make(chan int64, 1)
	go np.readLoop(br, started)
	_ = np.out.send(fReady, true, nil)

	var workers sync.WaitGroup
	select {
	case <-started:
		for g := range np.cfg.Goroutines {
			id := np.spec.Node*np.cfg.Goroutines + g
			workers.Add(1)
			go func() {
				defer workers.Done()
				np.n.work(ctx, id, np.spec.Skip[int32(id)], np.over.Load, np)
			}()
		}
		go func() {
			workers.Wait()
			if np.cfg.Ops > 0 {
				_ = np.out.send(fIdle, true, nil)
			}
		}()
	case <-np.stop:
	}
	<-np.stop
	np.over.Store(true)
	workers.Wait()
	np.tasks.Wait()
	var stats FleetStats
	stats.add(m.node.Stats())
	m.close()
	_ = np.out.sendJSON(fStats, stats)
	close(flushStop)
	if err := np.out.flush(); err != nil {
		return 1
	}
	return 0
}

// quietRedis drops go-redis's own log lines.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// readLoop reads the parent's frames until its pipe ends, when the node
// process exits at once: nothing it does matters without its parent.
func (np *nodeProc) readLoop(br *bufio.Reader, started chan<- int64) {
	var buf []byte
	for {
		t, p, err := readFrame(br, &buf)
		if err != nil {
			close(np.gone)
			os.Exit(3)
		}
		switch t {
		case fGo:
			t0, n := binary.Varint(p)
			if n > 0 {
				np.n.clock.t0 = t0 // before any order that reads the clock is taken
				started <- t0
			}
		case fReply:
			id, status, vs, err := decodeReply(p)
			if err != nil {
				fmt.Fprintln(os.Stderr, "sim node:", err)
				os.Exit(2)
			}
			np.mu.Lock()
			ch := np.pending[id]
			delete(np.pending, id)
			np.mu.Unlock()
			if ch != nil {
				ch <- reply{status, vs}
			}
		case fPause:
			var o pauseOrder
			if json.Unmarshal(p, &o) == nil {
				np.task(func() { np.pause(o) })
			}
		case fDo:
			var o writeOrder
			if json.Unmarshal(p, &o) == nil {
				np.task(func() { np.doWrites(o) })
			}
		case fStop:
			select {
			case <-np.stop:
			default:
				close(np.stop)
			}
		}
	}
}

// task runs f in a goroutine that the node waits for before it exits.
func (np *nodeProc) task(f func()) {
	np.tasks.Add(1)
	go func() {
		defer np.tasks.Done()
		f()
	}()
}

// call asks the parent and waits for its reply; unless wait is set, it
// gives up when ctx ends (the reply, if it comes, is dropped).
func (np *nodeProc) call(ctx context.Context, call byte, keys []int, wait bool) (reply, error) {
	id := np.nextID.Add(1)
	ch := make(chan reply, 1)
	np.mu.Lock()
	np.pending[id] = ch
	np.mu.Unlock()
	if err := np.out.send(fCall, true, func(b []byte) []byte { return appendCall(b, id, call, keys) }); err != nil {
		return reply{}, errParentGone
	}
	done := ctx.Done()
	if wait {
		done = nil
	}
	select {
	case rp := <-ch:
		return rp, nil
	case <-done:
		np.mu.Lock()
		delete(np.pending, id)
		np.mu.Unlock()
		return reply{}, ctx.Err()
	case <-np.gone:
		return reply{}, errParentGone
	}
}

// begin waits for the row locks whatever ctx says: a lock the parent
// granted to a call given up on would never be released.
func (np *nodeProc) begin(ctx context.Context, keys []int) ([]int64, error) {
	rp, err := np.call(ctx, callBegin, keys, true)
	if err != nil {
		return nil, err
	}
	if len(rp.vs) != len(keys) {
		return nil, fmt.Errorf("%w: %d versions for %d keys", errFrame, len(rp.vs), len(keys))
	}
	return rp.vs, nil
}

func (np *nodeProc) end(keys []int) {
	_ = np.out.send(fCall, true, func(b []byte) []byte { return appendCall(b, 0, callEnd, keys) })
}

func (np *nodeProc) fetch(ctx context.Context, key int) (Value, error) {
	rp, err := np.call(ctx, callFetch, []int{key}, false)
	switch {
	case err != nil:
		return Value{}, err
	case rp.status == statusFailed:
		return Value{}, errFetch
	case rp.status == statusNotFound:
		return Value{}, fmt.Errorf("sim: key %d: %w", key, tier.ErrNotFound)
	case len(rp.vs) != 1:
		return Value{}, fmt.Errorf("%w: %d versions for a fetch", errFrame, len(rp.vs))
	}
	return Value{Key: key, Version: rp.vs[0], Pad: np.n.pad}, nil
}

func (np *nodeProc) fetchMany(ctx context.Context, keys []int) (map[int]Value, error) {
	rp, err := np.call(ctx, callFetchMany, keys, false)
	switch {
	case err != nil:
		return nil, err
	case rp.status == statusFailed:
		return nil, errFetch
	case len(rp.vs) != len(keys):
		return nil, fmt.Errorf("%w: %d versions for %d keys", errFrame, len(rp.vs), len(keys))
	}
	out := make(map[int]Value, len(keys))
	for i, k := range keys {
		if v := rp.vs[i]; v > 0 || !np.cfg.Absent {
			out[k] = Value{Key: k, Version: v, Pad: np.n.pad}
		}
	}
	return out, nil
}

// read, write and op stream the node's history to the parent.
func (np *nodeProc) read(rd read) {
	_ = np.out.send(fRead, false, func(b []byte) []byte { return appendRead(b, rd) })
}

func (np *nodeProc) write(w write) {
	_ = np.out.send(fWrite, false, func(b []byte) []byte { return appendWrite(b, w) })
}

func (np *nodeProc) op(worker int32) {
	_ = np.out.send(fOp, false, func(b []byte) []byte { return binary.AppendUvarint(b, uint64(worker)) })
}

// pause reads the order's keys into L1, then watches for the pause: one
// goroutine per P spins on the clock, so that whichever P the process
// resumes on, a reader is running on it, and the moment one sees the
// clock jump by more than the order's Jump it reads every key again. The
// parent stops the process after the primed reply and continues it once
// the keys were written meanwhile; the reads then race the node's ticker
// and its subscriber (R40), as a request that arrived during the pause
// would.
func (np *nodeProc) pause(o pauseOrder) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	worker := np.cfg.driverWorker(np.n.i)
	inL1 := map[int]int64{}
	for _, k := range o.Keys {
		for range primeTries {
			rd := np.n.read(ctx, worker, k)
			np.read(rd)
			if !rd.Err && rd.Source == tier.SourceL1 {
				inL1[k] = rd.Version
				break
			}
		}
	}
	spinners := runtime.GOMAXPROCS(0)
	var ready, done sync.WaitGroup
	ready.Add(spinners)
	done.Add(spinners)
	results := make([]resumed, spinners)
	for s := range spinners {
		go func() {
			defer done.Done()
			results[s] = np.watch(ctx, o, inL1, worker, &ready)
		}()
	}
	ready.Wait()
	_ = np.out.sendJSON(fPrimed, primed{InL1: inL1})
	done.Wait()
	var sum resumed
	for _, r := range results {
		if r.Reads > 0 && (sum.Reads == 0 || r.First < sum.First) {
			sum.First = r.First
		}
		sum.Reads += r.Reads
		sum.Stale += r.Stale
		sum.StaleKeys = append(sum.StaleKeys, r.StaleKeys...)
	}
	_ = np.out.sendJSON(fResumed, sum)
}

// watch spins on the clock until it jumps by more than o.Jump, then reads
// o's keys. It gives up after driveWait, or when the node stops.
func (np *nodeProc) watch(ctx context.Context, o pauseOrder, inL1 map[int]int64, worker int32, ready *sync.WaitGroup) resumed {
	last := time.Now()
	giveUp := last.Add(driveWait)
	ready.Done()
	for {
		now := time.Now() // the vDSO: no system call, no scheduling point
		if now.Sub(last) <= o.Jump {
			if now.After(giveUp) || np.over.Load() {
				return resumed{}
			}
			last = now
			continue
		}
		var r resumed
		for _, k := range o.Keys {
			rd := np.n.read(ctx, worker, k)
			np.read(rd)
			if r.Reads == 0 {
				r.First = rd.Start
			}
			r.Reads++
			if v, ok := inL1[k]; ok && !rd.Err && rd.Source == tier.SourceL1 && rd.Version == v {
				r.Stale++
				r.StaleKeys = append(r.StaleKeys, k)
			}
		}
		return r
	}
}

// doWrites writes the order's keys, by Invalidate and Set in turn.
func (np *nodeProc) doWrites(o writeOrder) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var d writeDone
	for i, k := range o.Keys {
		w, ok := np.n.write(ctx, k, i%2 == 1)
		if !ok {
			continue
		}
		np.write(w)
		d.End = max(d.End, w.End)
		if w.Outcome == wroteOK {
			d.OK = append(d.OK, k)
		}
	}
	_ = np.out.sendJSON(fDone, d)
}
