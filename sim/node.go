package sim

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// A world is what a node's workers share with the rest of the fleet: the
// source of truth, and the row locks that serialize writes of a key. In a
// run in one process it is the run itself; in a node process (Config.Procs)
// it is the parent, reached through the process's pipes.
type world interface {
	// begin takes the row locks of keys, in increasing order, then bumps
	// each key's version in the source, and returns the new versions.
	begin(ctx context.Context, keys []int) ([]int64, error)
	// end releases the row locks of keys.
	end(keys []int)
	// fetch and fetchMany are the source's reads (tier.Config.Fetch and
	// FetchMany).
	fetch(ctx context.Context, key int) (Value, error)
	fetchMany(ctx context.Context, keys []int) (map[int]Value, error)
}

// A recorder takes a worker's history as it happens.
type recorder interface {
	read(read)
	write(write)
	// op counts an operation ended (a group write or a GetMany is one).
	op(worker int32)
}

// fleetNode is one node as its workers use it: its tier.Node and Cache,
// stamped on the run's clock, writing through its world. The same code
// runs the nodes of a run in one process and the node of a node process.
type fleetNode struct {
	i     int    // index in the fleet
	inc   uint16 // incarnation: restarts of the node so far (node-kill)
	cfg   Config
	m     member
	clock *clock
	world world
	pad   []byte // every value's padding (Config.ValueBytes)
}

// share is worker id's part of Config.Ops.
func (c Config) share(id int) int64 {
	workers := int64(c.Nodes * c.Goroutines)
	share := c.Ops / workers
	if int64(id) < c.Ops%workers {
		share++
	}
	return share
}

// opKind is what a worker does in one operation.
type opKind uint8

const (
	opRead opKind = iota
	opMany
	opInvalidate
	opSet
	opGroup
)

// op is one drawn operation of a worker.
type op struct {
	kind      opKind
	key       int
	keys      []int // opMany
	family, g int   // opGroup
}

// draw draws a worker's next operation from its generator.
func (c Config) draw(rng *mrand.Rand, zipf *mrand.Zipf) op {
	pick := func() int {
		if zipf != nil {
			return int(zipf.Uint64())
		}
		return rng.IntN(c.Keys)
	}
	key := pick()
	k := rng.IntN(c.Mix.total())
	switch {
	case k < c.Mix.Read && c.Many > 0 && rng.IntN(100) < c.Many:
		keys := []int{key}
		for len(keys) < c.ManyKeys {
			keys = append(keys, pick())
		}
		return op{kind: opMany, key: key, keys: keys}
	case k < c.Mix.Read:
		return op{kind: opRead, key: key}
	case k < c.Mix.Read+c.Mix.Invalidate:
		return op{kind: opInvalidate, key: key}
	case k < c.Mix.Read+c.Mix.Invalidate+c.Mix.Set:
		return op{kind: opSet, key: key}
	}
	family := rng.IntN(2)
	return op{kind: opGroup, key: key, family: family, g: key % (c.Groups + family)}
}

// work is worker id: its own seeded sequence of operations on the node,
// each recorded on the run's clock, until its share of Config.Ops is done,
// ctx ends, or (in a timed run) over says so. The first skip operations of
// the sequence are drawn but not done: an earlier incarnation of the node
// did them.
func (n *fleetNode) work(ctx context.Context, id int, skip int64, over func() bool, rec recorder) {
	cfg := n.cfg
	rng := mrand.New(mrand.NewPCG(uint64(cfg.Seed), uint64(id)))
	var zipf *mrand.Zipf
	if cfg.Zipf > 1 {
		zipf = mrand.NewZipf(rng, cfg.Zipf, 1, uint64(cfg.Keys-1))
	}
	share := cfg.share(id)
	for i := int64(0); ; i++ {
		if ctx.Err() != nil || (cfg.Ops > 0 && i >= share) || (cfg.Ops == 0 && over()) {
			return
		}
		o := cfg.draw(rng, zipf)
		if i < skip {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		switch o.kind {
		case opMany:
			for _, rd := range n.readMany(octx, int32(id), o.keys) {
				rec.read(rd)
			}
		case opRead:
			if id%2 == 1 && !cfg.Procs {
				rec.read(n.readUncancellable(ctx, int32(id), o.key))
			} else {
				rec.read(n.read(octx, int32(id), o.key))
			}
		case opInvalidate, opSet:
			if w, ok := n.write(octx, o.key, o.kind == opSet); ok {
				rec.write(w)
			}
		case opGroup:
			for _, w := range n.writeGroup(octx, o.family, o.g) {
				rec.write(w)
			}
		}
		cancel()
		rec.op(int32(id))
	}
}

// readUncancellable is read by a caller whose ctx cannot be cancelled, as
// context.Background's: its flight runs the load in the caller's goroutine,
// where a cancellable caller's runs in a goroutine of its own. The odd
// workers of a run in one process read so. Nothing but the library bounds
// such a read, so a watchdog ends the run if it outlives opTimeout, as the
// others' contexts do theirs. (Node processes, which the run may pause,
// read with contexts only: a pause would set off the watchdog.)
func (n *fleetNode) readUncancellable(ctx context.Context, worker int32, key int) read {
	dog := time.AfterFunc(opTimeout, func() {
		panic(fmt.Sprintf("sim: a read of key %d whose context cannot be cancelled did not return within %v: the protocol hangs", key, opTimeout))
	})
	defer dog.Stop()
	return n.read(context.WithoutCancel(ctx), worker, key)
}

// read is one Get of key. A "not found" (Config.Absent) is a read of
// version 0.
func (n *fleetNode) read(ctx context.Context, worker int32, key int) read {
	var ri tier.ReadInfo
	start := n.clock.now()
	v, err := n.m.cache.Get(ctx, key, tier.Info(&ri))
	rd := read{Start: start, End: n.clock.now(), Key: int32(key), Node: int16(n.i), Inc: n.inc, Worker: worker,
		Source: ri.Source, Shared: ri.Shared, Version: v.Version}
	found := true
	switch {
	case isPermittedStale(ri, err):
		rd.Permitted = true
		found = !errors.Is(err, tier.ErrNotFound)
	case errors.Is(err, tier.ErrNotFound):
		rd.Version, found, rd.NotFound = 0, false, true
	case err != nil:
		rd.Err = true
	}
	rd.WrongKey = !rd.Err && found && v.Key != key
	return rd
}

// readMany is one GetMany of keys, judged as one read per distinct key,
// all with the call's span. GetMany does not say which tier answered a
// key; a key missing from its map without an error is "not found",
// version 0, and a key's error wrapping tier.ErrStale is a permitted-stale
// value.
func (n *fleetNode) readMany(ctx context.Context, worker int32, keys []int) []read {
	start := n.clock.now()
	vals, err := n.m.cache.GetMany(ctx, keys)
	end := n.clock.now()
	var kerrs *tier.KeyErrors[int]
	whole := err != nil && !errors.As(err, &kerrs)
	rs := make([]read, 0, len(keys))
	seen := make(map[int]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		rd := read{Start: start, End: end, Key: int32(k), Node: int16(n.i), Inc: n.inc, Worker: worker, Many: true}
		v, ok := vals[k]
		var kerr error
		if kerrs != nil {
			kerr = kerrs.Errs[k]
		}
		switch {
		case whole:
			rd.Err = true
		case kerr != nil && errors.Is(kerr, tier.ErrStale):
			rd.Permitted, rd.Version = true, v.Version
		case kerr != nil:
			rd.Err = true
		case ok:
			rd.Version = v.Version
		default:
			rd.NotFound = true
		}
		rd.WrongKey = !rd.Err && ok && v.Key != k
		rs = append(rs, rd)
	}
	return rs
}

// write updates the source, then tells the cache through the node, as an
// application does. Writes of one key are serialized, as a row lock would
// serialize them: two concurrent Sets of one key race at Redis in any
// cache (the last to arrive wins, whichever version it carries). It
// reports false if the write could not begin (the world is gone).
func (n *fleetNode) write(ctx context.Context, key int, set bool) (write, bool) {
	start := n.clock.now()
	vs, err := n.world.begin(ctx, []int{key})
	if err != nil {
		return write{}, false
	}
	defer n.world.end([]int{key})
	v := vs[0]
	if set {
		err = n.m.cache.Set(ctx, key, Value{Key: key, Version: v, Pad: n.pad})
	} else {
		err = n.m.cache.Invalidate(ctx, key)
	}
	w := write{Start: start, End: n.clock.now(), Version: v, Key: int32(key), Node: int16(n.i), Inc: n.inc, Outcome: outcomeOf(err)}
	if set {
		w.Kind = bySet
	}
	return w, true
}

// writeGroup writes every member of group g of a family in the source,
// then invalidates the group through the node.
func (n *fleetNode) writeGroup(ctx context.Context, family, g int) []write {
	var keys []int
	for k := g; k < n.cfg.Keys; k += n.cfg.Groups + family {
		keys = append(keys, k)
	}
	start := n.clock.now()
	vs, err := n.world.begin(ctx, keys)
	if err != nil {
		return nil
	}
	defer n.world.end(keys)
	ws := make([]write, len(keys))
	for i, k := range keys {
		ws[i] = write{Start: start, Version: vs[i], Key: int32(k), Node: int16(n.i), Inc: n.inc, Kind: byGroup}
	}
	err = n.m.node.InvalidateGroup(ctx, groupName(family, g))
	end, o := n.clock.now(), outcomeOf(err)
	for i := range ws {
		ws[i].End, ws[i].Outcome = end, o
	}
	return ws
}

func outcomeOf(err error) outcome {
	switch {
	case err == nil:
		return wroteOK
	case errors.Is(err, tier.ErrPending):
		return wrotePending
	}
	return wroteFailed
}
