package sim

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/tiercache/tiercache/tier"
)

// Violation classes: why a read was judged a violation.
const (
	ViolationL1      = "l1-beyond-bound"     // stale from L1, older than the bound
	ViolationShared  = "shared-beyond-bound" // stale from a load another Get on the node began, older than the bound
	ViolationL2      = "l2"                  // stale from Redis
	ViolationFetch   = "fetch"               // stale from a fill (a claimed fetch)
	ViolationUncache = "uncached"            // stale from an uncached fetch
	ViolationMany    = "many-beyond-bound"   // stale from a GetMany (tier unknown), older than the bound
	ViolationRYW     = "read-your-writes"
	ViolationKey     = "wrong-key" // a value of another key
)

// Phase counts the reads that began in one fault phase (or in Steady).
type Phase struct {
	// Name is the fault class, or Steady.
	Name string `json:"name"`
	// Reads counts every Get; Errors those that returned an error and no
	// value (not judged).
	Reads  int64 `json:"reads"`
	Errors int64 `json:"errors"`
	// Fresh reads returned at least the required version.
	Fresh int64 `json:"fresh"`
	// StaleInBound reads were older, on a node other than the writer's,
	// from that node's own state (its L1, or a load another Get on the
	// node began and this one joined), within the bound: the node had not
	// yet applied the invalidation's message.
	StaleInBound int64 `json:"stale_in_bound"`
	// PermittedStale reads were values tier marked permitted-stale
	// (ReadInfo.Stale or ErrStale: past FreshFor, fail-safe, served to a
	// loser): the caller opted into their age. Their version is judged
	// all the same: one older than the required version is counted here
	// only if it would have been stale within the bound, and is a
	// violation otherwise (an invalidation removes a stale value too).
	PermittedStale int64 `json:"permitted_stale"`
	// PermittedBehind counts the permitted-stale reads whose version was
	// older than the required one, within the bound (included in
	// PermittedStale).
	PermittedBehind int64 `json:"permitted_behind"`
	// Violations counts every other stale read, by class in ByClass.
	Violations int64            `json:"violations"`
	ByClass    map[string]int64 `json:"by_class,omitempty"`
	// RYW counts reads on the writing node older than its own write
	// (included in Violations).
	RYW int64 `json:"read_your_writes"`
	// Inversions counts reads older than a version the same worker had
	// already seen, after that version's write returned.
	Inversions int64 `json:"inversions"`
	// AgeP50, AgeP99 and AgeMax are the staleness ages of the stale reads
	// that are not permitted (in bound and violations).
	AgeP50 time.Duration `json:"age_p50_ns"`
	AgeP99 time.Duration `json:"age_p99_ns"`
	AgeMax time.Duration `json:"age_max_ns"`

	ages []int64
}

// TierStats are one tier's share of the reads and their latency.
type TierStats struct {
	// Tier is the answering tier: l1, l2, fetch or uncached.
	Tier string `json:"tier"`
	// Reads counts the judged reads it answered; Ratio is their share of
	// all judged reads.
	Reads int64   `json:"reads"`
	Ratio float64 `json:"ratio"`
	// P50 and P99 are the latencies of those reads.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`

	lat []int64
}

// Example is one violation, for the reader who must find the bug.
type Example struct {
	// Class is the violation class; Phase the phase the read began in.
	// The read was of Key on Node, answered by Source with version Got
	// when Required was due, Age after the first newer write returned, At
	// on the run's clock.
	Class    string        `json:"class"`
	Phase    string        `json:"phase"`
	Key      int           `json:"key"`
	Node     int           `json:"node"`
	Source   string        `json:"source"`
	Got      int64         `json:"got"`
	Required int64         `json:"required"`
	Age      time.Duration `json:"age_ns"`
	At       time.Duration `json:"at_ns"`
	// Took is how long the read took; Write is the first newer write that
	// had returned before the read began.
	Took   time.Duration `json:"took_ns"`
	Shared bool          `json:"shared"`
	Write  string        `json:"write"`
}

// FaultWindow is a fault as it happened.
type FaultWindow struct {
	// Kind is the fault class and Node the node it targeted (Partition
	// and RedisLatency only); Start and End are on the run's clock;
	// Skipped says why the backend could not inject it, if it could not;
	// Detail says what it did, for the faults that decide as they run
	// (Failover: which master, and when it was replaced; Reshard: which
	// slots moved where).
	Kind    FaultKind     `json:"kind"`
	Node    int           `json:"node"`
	Start   time.Duration `json:"start_ns"`
	End     time.Duration `json:"end_ns"`
	Skipped string        `json:"skipped_by_backend,omitempty"`
	Detail  string        `json:"detail,omitempty"`
}

// Result is a judged run.
type Result struct {
	// Backend names the Redis; Config is the run's (with defaults), Seed
	// and Break its seed and negative control; Elapsed how long it ran.
	// Nodes, Workers (per node) and Keys are the fleet and the keyspace.
	Backend string        `json:"backend"`
	Config  Config        `json:"-"`
	Nodes   int           `json:"nodes"`
	Workers int           `json:"goroutines_per_node"`
	Keys    int           `json:"keys"`
	Seed    int64         `json:"seed"`
	Break   Break         `json:"break,omitempty"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// Bound is the staleness bound applied to L1 reads on other nodes:
	// LeaseTTL + Slack.
	Bound time.Duration `json:"bound_ns"`
	// Ops counts reads and writes (a group write counts once; a GetMany
	// counts once).
	Ops int64 `json:"ops"`
	// ManyReads counts the keys read by GetMany (included in the phases'
	// Reads, not in Tiers: GetMany does not say which tier answered).
	ManyReads int64 `json:"many_reads"`
	// NotFound counts the judged reads answered "not found" (version 0).
	NotFound int64 `json:"not_found"`
	// Fleet are the nodes' own counters.
	Fleet FleetStats `json:"fleet"`
	// Writes counts key writes by outcome: announced, queued for replay
	// (ErrPending), failed.
	Writes        int64 `json:"writes"`
	WritesPending int64 `json:"writes_pending"`
	WritesFailed  int64 `json:"writes_failed"`
	// SourceReads counts fetches; HerdFactor is SourceReads per key write.
	SourceReads int64   `json:"source_reads"`
	HerdFactor  float64 `json:"herd_factor"`
	// Tiers are the reads by answering tier.
	Tiers []TierStats `json:"tiers"`
	// Total sums every phase; Phases are in order of first appearance.
	Total  Phase   `json:"total"`
	Phases []Phase `json:"phases"`
	// Faults are the fault windows as they happened.
	Faults []FaultWindow `json:"faults"`
	// Examples are up to 20 violations.
	Examples []Example `json:"examples,omitempty"`
	// Driven counts the races a negative control's driver drove
	// (Config.Drives); DrivenViolations the violations among the reads the
	// driver made (or a paused node made the moment it resumed), included
	// in the totals.
	Driven           int64 `json:"driven,omitempty"`
	DrivenViolations int64 `json:"driven_violations,omitempty"`
	// Procs describes a run of node processes (Config.Procs), nil
	// otherwise.
	Procs *ProcStats `json:"procs,omitempty"`
	// Shards count the reads and writes of a run on a Redis Cluster per
	// shard, and Moves are the slots the Reshard fault moved; nil on one
	// server.
	Shards []Shard    `json:"shards,omitempty"`
	Moves  []SlotMove `json:"slot_moves,omitempty"`
	// Short, if set, says what a run held open by MinWrites or Drives
	// lacked when its Deadline (or cancellation) ended it: such a run
	// proves nothing either way.
	Short string `json:"short,omitempty"`

	ages      []int64 // every judged stale age
	fetches   []int64
	fetchSpan int64
}

// Violations is the number of reads judged violations.
func (r *Result) Violations() int64 { return r.Total.Violations }

// writeIndex answers, for one key, "which writes had returned by time t".
type writeIndex struct {
	ws   []write
	ends []int64 // sorted
	pmax []int64 // pmax[i]: highest version among ends[0..i]
}

func newWriteIndex(ws []write) writeIndex {
	slices.SortFunc(ws, func(a, b write) int { return int(a.End - b.End) })
	x := writeIndex{ws: ws, ends: make([]int64, len(ws)), pmax: make([]int64, len(ws))}
	var m int64
	for i, w := range ws {
		m = max(m, w.Version)
		x.ends[i], x.pmax[i] = w.End, m
	}
	return x
}

// required is the highest version whose write returned before t.
func (x writeIndex) required(t int64) int64 {
	i := sort.Search(len(x.ends), func(i int) bool { return x.ends[i] >= t })
	if i == 0 {
		return 0
	}
	return x.pmax[i-1]
}

// since returns the first write of a version above v to return.
func (x writeIndex) since(v int64) write {
	i := sort.Search(len(x.pmax), func(i int) bool { return x.pmax[i] > v })
	if i == len(x.ends) {
		return write{End: -1}
	}
	return x.ws[i]
}

// check judges every read of h. A read's required version is the highest
// version of its key whose write returned successfully (Invalidate, Set or
// InvalidateGroup returned nil) before the read began; on the node that
// wrote (the same process of it, if it was killed and started again),
// writes that returned ErrPending count too, since tier applies them
// locally before it returns (read-your-writes). A pending write is
// not required of other nodes: its announcement is queued until Redis
// answers, and a later successful write of the key supersedes it. A
// failed write (any other error) is required of nobody.
func check(h *history, cfg Config) *Result {
	res := &Result{Config: cfg, Nodes: cfg.Nodes, Workers: cfg.Goroutines, Keys: cfg.Keys, Seed: cfg.Seed, Break: cfg.Break, Bound: cfg.Bound(), fetches: h.fetches, fetchSpan: h.end}
	keys := cfg.keySpace()
	fleet := make([][]write, keys)
	own := map[[3]int][]write{} // (key, node, incarnation)
	// okEnd[key][version-1]: when that version's write returned, or -1.
	okEnd := make([][]int64, keys)
	for _, w := range h.writes {
		k := int(w.Key)
		for int(w.Version) > len(okEnd[k]) {
			okEnd[k] = append(okEnd[k], -1) // a version whose write never returned, until its write shows
		}
		res.Writes++
		switch w.Outcome {
		case wroteOK:
			fleet[k] = append(fleet[k], w)
			okEnd[k][w.Version-1] = w.End
			own[[3]int{k, int(w.Node), int(w.Inc)}] = append(own[[3]int{k, int(w.Node), int(w.Inc)}], w)
		case wrotePending:
			res.WritesPending++
			own[[3]int{k, int(w.Node), int(w.Inc)}] = append(own[[3]int{k, int(w.Node), int(w.Inc)}], w)
		default:
			res.WritesFailed++
		}
	}
	fx := make([]writeIndex, keys)
	for k := range fleet {
		fx[k] = newWriteIndex(fleet[k])
	}
	ox := make(map[[3]int]writeIndex, len(own))
	for k, ws := range own {
		ox[k] = newWriteIndex(ws)
	}

	phases := map[string]*Phase{}
	var order []string
	phaseName := func(t int64) string {
		for _, w := range h.windows {
			if w.Skipped == "" && t >= w.Start && (t < w.End || w.End == 0) {
				return string(w.Kind)
			}
		}
		return Steady
	}
	phaseOf := func(t int64) *Phase {
		name := phaseName(t)
		p := phases[name]
		if p == nil {
			p = &Phase{Name: name, ByClass: map[string]int64{}}
			phases[name] = p
			order = append(order, name)
		}
		return p
	}
	shards := newShardCounts(h.cluster)
	tiers := map[tier.Source]*TierStats{}
	for _, s := range []tier.Source{tier.SourceL1, tier.SourceL2, tier.SourceFetch, tier.SourceUncached} {
		tiers[s] = &TierStats{Tier: s.String()}
	}
	seen := map[[2]int32]int64{} // (worker, key) -> highest version seen
	bound := int64(cfg.Bound())
	for _, rd := range h.reads {
		p := phaseOf(rd.Start)
		sp := shards.at(int(rd.Key), rd.Start, p.Name)
		v := verdict{err: rd.Err}
		switch {
		case rd.Err:
		case rd.WrongKey:
			v.class, v.first = ViolationKey, write{End: rd.Start}
		default:
			k := int(rd.Key)
			req := fx[k].required(rd.Start)
			mine := ox[[3]int{k, int(rd.Node), int(rd.Inc)}].required(rd.Start)
			sk := [2]int32{rd.Worker, rd.Key}
			last := seen[sk]
			seen[sk] = max(last, rd.Version)
			v.permitted = rd.Permitted
			if rd.Version >= max(req, mine) {
				break // fresh
			}
			v.inversion = last > rd.Version && int(last) <= len(okEnd[k]) && okEnd[k][last-1] >= 0 && okEnd[k][last-1] < rd.Start
			if rd.Version < mine {
				v.class, v.required, v.first = ViolationRYW, mine, ox[[3]int{k, int(rd.Node), int(rd.Inc)}].since(rd.Version)
				break
			}
			v.required, v.first = req, fx[k].since(rd.Version)
			own := rd.Source == tier.SourceL1 || rd.Shared || rd.Many // the node's own state
			switch {
			case own && rd.Start-v.first.End <= bound:
				v.behind = true // within the bound: permitted, or in bound
			case rd.Many:
				v.class = ViolationMany
			case rd.Source == tier.SourceL1:
				v.class = ViolationL1
			case rd.Shared:
				v.class = ViolationShared
			case rd.Source == tier.SourceL2:
				v.class = ViolationL2
			case rd.Source == tier.SourceFetch:
				v.class = ViolationFetch
			default:
				v.class = ViolationUncache
			}
		}
		p.count(v, rd)
		if sp != nil {
			sp.Reads.count(v, rd)
		}
		if v.class != "" {
			res.violate(p, v.class, rd, v.required, v.first)
		}
		if rd.Err {
			continue
		}
		if rd.NotFound {
			res.NotFound++
		}
		if rd.Many {
			res.ManyReads++
		} else if ts := tiers[rd.Source]; ts != nil {
			ts.Reads++
			ts.lat = append(ts.lat, rd.End-rd.Start)
		}
	}
	if shards != nil {
		for _, w := range h.writes {
			shards.at(int(w.Key), w.Start, phaseName(w.Start)).countWrite(w)
		}
	}

	var judged int64
	for _, s := range []tier.Source{tier.SourceL1, tier.SourceL2, tier.SourceFetch, tier.SourceUncached} {
		judged += tiers[s].Reads
	}
	for _, s := range []tier.Source{tier.SourceL1, tier.SourceL2, tier.SourceFetch, tier.SourceUncached} {
		ts := tiers[s]
		if judged > 0 {
			ts.Ratio = float64(ts.Reads) / float64(judged)
		}
		slices.Sort(ts.lat)
		ts.P50, ts.P99 = time.Duration(quantile(ts.lat, 0.5)), time.Duration(quantile(ts.lat, 0.99))
		res.Tiers = append(res.Tiers, *ts)
	}
	res.Total = Phase{Name: "total", ByClass: map[string]int64{}}
	for _, name := range order {
		p := phases[name]
		p.summarize()
		res.Total.add(p)
		res.ages = append(res.ages, p.ages...)
		res.Phases = append(res.Phases, *p)
	}
	res.Total.summarize()
	res.Shards = shards.result(order, cfg.Keys)
	if h.cluster != nil {
		res.Moves = h.cluster.moves
	}
	for _, w := range h.windows {
		res.Faults = append(res.Faults, FaultWindow{Kind: w.Kind, Node: w.Node, Start: time.Duration(w.Start), End: time.Duration(w.End), Skipped: w.Skipped, Detail: w.Detail})
	}
	res.SourceReads = int64(len(h.fetches))
	if res.Writes > 0 {
		res.HerdFactor = float64(res.SourceReads) / float64(res.Writes)
	}
	return res
}

// verdict is the checker's judgement of one read.
type verdict struct {
	err       bool   // the read failed: not judged
	permitted bool   // tier marked it permitted-stale
	behind    bool   // older than required, within the bound, from the node's own state
	inversion bool   // older than a version its worker had seen, after that version's write returned
	class     string // the violation class, or "" for none
	required  int64  // the version required, for a violation
	first     write  // the first newer write that had returned when the read began, if older than required
}

// count counts a read's verdict in p.
func (p *Phase) count(v verdict, rd read) {
	p.Reads++
	switch {
	case v.err:
		p.Errors++
		return
	case v.inversion:
		p.Inversions++
	}
	age := rd.Start - v.first.End
	switch {
	case v.class != "":
		p.Violations++
		p.ByClass[v.class]++
		if v.class == ViolationRYW {
			p.RYW++
		}
		p.ages = append(p.ages, age)
	case v.behind && v.permitted:
		p.PermittedStale++
		p.PermittedBehind++
	case v.behind:
		p.StaleInBound++
		p.ages = append(p.ages, age)
	case v.permitted:
		p.PermittedStale++
	default:
		p.Fresh++
	}
}

// violate counts a driven violation and keeps the first examples; p has
// counted it.
func (res *Result) violate(p *Phase, class string, rd read, required int64, first write) {
	age := rd.Start - first.End
	src := rd.Source.String()
	if rd.Many {
		src = "get-many"
	}
	if rd.Worker >= res.Config.driverWorker(0) {
		res.DrivenViolations++
	}
	if len(res.Examples) < 20 {
		res.Examples = append(res.Examples, Example{
			Class: class, Phase: p.Name, Key: int(rd.Key), Node: int(rd.Node), Source: src,
			Got: rd.Version, Required: required, Age: time.Duration(age), At: time.Duration(rd.Start),
			Shared: rd.Shared,
			Write:  fmt.Sprintf("v%d by %s on node %d, %s..%s", first.Version, first.Kind, first.Node, time.Duration(first.Start), time.Duration(first.End)),
			Took:   time.Duration(rd.End - rd.Start),
		})
	}
}

func (p *Phase) add(q *Phase) {
	p.Reads += q.Reads
	p.Errors += q.Errors
	p.Fresh += q.Fresh
	p.StaleInBound += q.StaleInBound
	p.PermittedStale += q.PermittedStale
	p.PermittedBehind += q.PermittedBehind
	p.Violations += q.Violations
	p.RYW += q.RYW
	p.Inversions += q.Inversions
	for c, n := range q.ByClass {
		p.ByClass[c] += n
	}
	p.ages = append(p.ages, q.ages...)
}

func (p *Phase) summarize() {
	slices.Sort(p.ages)
	p.AgeP50 = time.Duration(quantile(p.ages, 0.5))
	p.AgeP99 = time.Duration(quantile(p.ages, 0.99))
	p.AgeMax = time.Duration(quantile(p.ages, 1))
}

// quantile of sorted xs, 0 if empty.
func quantile(xs []int64, q float64) int64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(q * float64(len(xs)-1))
	return xs[i]
}
