package sim

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// tick is how often the fault controller and the progress report look at
// the run's progress.
const tick = 5 * time.Millisecond

// subCutEvery is how often a SubCut window kills the subscriptions again.
const subCutEvery = 200 * time.Millisecond

// controller opens and closes the fault windows of the schedule as the run
// progresses, and records when each actually began and ended.
type controller struct {
	r       *run
	skips   map[FaultKind]string
	windows []window
	active  map[int]int64 // schedule index -> clock reading of its last action
}

func newController(r *run, skips map[FaultKind]string) *controller {
	return &controller{r: r, skips: skips, active: map[int]int64{}}
}

// loop runs until the workers stop, then closes any open window. A window
// that the schedule ends at 1 stays open until the run stops, however long
// its minima (Config.MinWrites, Config.Drives) hold it open. A timed run
// lasts until every window has been opened, and closed if it ends before
// 1 (run.faultsLeft): a fault that outlasts its slot (a pause's cycle, a
// failover) may hold the next one up, never leave it out, and a window
// opens only once every earlier one that the schedule ends before it has
// closed, so that faults held up do not overlap. A window the run ended
// before is listed as skipped.
func (c *controller) loop(ctx context.Context) {
	c.r.faultsLeft.Store(int64(len(c.r.cfg.Faults)))
	t := time.NewTicker(tick)
	defer t.Stop()
	next := make([]int, len(c.r.cfg.Faults)) // 0 pending, 1 open, 2 closed
	winOf := map[int]int{}
	var lastProgress int64
	for {
		stopped := c.r.stopped.Load() || ctx.Err() != nil
		f := c.r.fraction()
		now := c.r.clock.now()
		for i, fl := range c.r.cfg.Faults {
			switch {
			case next[i] == 0 && f >= fl.Start && !stopped && !c.heldUp(i, next):
				next[i] = 1
				winOf[i] = len(c.windows)
				// Not now: an earlier window's end may have held this pass up.
				w := window{Kind: fl.Kind, Node: fl.Node % c.r.cfg.Nodes, Start: c.r.clock.now(), Skipped: c.skips[fl.Kind]}
				c.windows = append(c.windows, w)
				if w.Skipped == "" {
					if err := c.begin(ctx, w); err != nil {
						c.windows[winOf[i]].Skipped = err.Error()
					}
				}
				c.active[i] = now
				if fl.End >= 1 {
					c.r.faultsLeft.Add(-1)
				}
			case next[i] == 0 && stopped:
				next[i] = 2
				c.windows = append(c.windows, window{Kind: fl.Kind, Node: fl.Node % c.r.cfg.Nodes, Start: now, End: now,
					Skipped: "the run ended before its window opened"})
			case next[i] == 1 && ((f >= fl.End && fl.End < 1) || stopped || now-c.windows[winOf[i]].Start >= int64(c.r.cfg.MaxWindow)):
				next[i] = 2
				w := &c.windows[winOf[i]]
				if w.Skipped == "" {
					w.Detail = c.end(*w)
				}
				w.End = c.r.clock.now() // once lifted: a pause's cycle may outlast its slot
				delete(c.active, i)
				if fl.End < 1 {
					c.r.faultsLeft.Add(-1)
				}
			case next[i] == 1 && fl.Kind == SubCut && now-c.active[i] >= int64(subCutEvery):
				if c.windows[winOf[i]].Skipped == "" {
					_ = killSubscriptions(ctx, c.r.admin)
				}
				c.active[i] = now
			}
		}
		if p := c.r.cfg.Progress; p != nil && now-lastProgress >= int64(200*time.Millisecond) {
			lastProgress = now
			p(c.progress(f))
		}
		if stopped {
			return
		}
		<-t.C
	}
}

// heldUp reports whether window i must wait for an earlier window, one the
// schedule ends before i begins, that is still open (next[j] == 1).
func (c *controller) heldUp(i int, next []int) bool {
	fs := c.r.cfg.Faults
	for j := range i {
		if next[j] == 1 && fs[j].End <= fs[i].Start {
			return true
		}
	}
	return false
}

func (c *controller) progress(f float64) Progress {
	p := Progress{Elapsed: time.Duration(c.r.clock.now()), Done: c.r.done.Load(), Total: c.r.cfg.Ops, Fraction: min(f, 1), Phase: Steady}
	for i := range c.active {
		p.Phase = string(c.r.cfg.Faults[i].Kind)
	}
	return p
}

// begin injects a fault; an error means the backend could not.
func (c *controller) begin(ctx context.Context, w window) error {
	r := c.r
	switch w.Kind {
	case SubCut:
		return killSubscriptions(ctx, r.admin)
	case Partition:
		r.fleet[w.Node].proxies.blackhole()
	case RedisLatency:
		r.fleet[w.Node].proxies.delay(r.cfg.FaultDelay)
	case Restart:
		return r.backend.Restart()
	case Flush:
		return onEveryMaster(ctx, r.admin, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
	case SlowFetch:
		r.src.slow.Store(true)
	case FetchError:
		r.src.fail.Store(true)
	case Pause, NodeKill:
		r.procs.startFault(w.Kind, w.Node)
	case Failover, Reshard:
		return r.cluster.start(ctx, w.Kind)
	}
	return nil
}

// end lifts a fault, and says what it did if that was decided as it ran
// (the Failover and Reshard faults), else "".
func (c *controller) end(w window) string {
	r := c.r
	switch w.Kind {
	case Partition, RedisLatency:
		r.fleet[w.Node].proxies.pass()
	case SlowFetch:
		r.src.slow.Store(false)
	case FetchError:
		r.src.fail.Store(false)
	case Pause, NodeKill:
		r.procs.endFault(w.Kind) // once its cycle, or its restart, is done
	case Failover, Reshard:
		return r.cluster.stop(w.Kind) // once its cycle is done
	}
	return ""
}
