package l2

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Peek reads k's value without a script, in one round trip of plain
// commands: the value's remaining lifetime (PTTL), then an MGET of the
// value and of the current stamps of the groups in known (one atomic
// read); on a cluster, through the client of the key's master, with the
// stamps of the key's slot. Peeks that begin while another is in flight
// share the next round trip (on a cluster, with those of keys of the same
// master), each answering what it would alone (R57). It answers, with ok,
// only what ReadOrClaimWith would answer as a Hit: a value with a header
// (value.go) whose every group still has the stamp the value was written
// with, and that c does not claim for a refresh. A group of the value's
// that known lacks costs a second MGET, of its stamp, after the first: a
// stamp read later than the value can only be newer, so a match still
// proves the group unchanged since the value was written (stamps never
// repeat, R26).
//
// Everything else (no value, a stale one, one written by an earlier
// version, one due for a refresh, c.Always) comes back with ok false and
// nothing changed in Redis: the caller goes on with ReadOrClaimWith, which
// decides atomically and claims. Read.Groups may be known itself: the
// caller must not change either.
func (s *Store) Peek(ctx context.Context, k Keys, known []string, c Claim) (Read, bool, error) {
	if c.Always {
		return Read{}, false, nil
	}
	reply, err := s.peekJoined(ctx, k, known)
	if err != nil {
		s.relearnSlots(ctx, err)
		return Read{}, false, &opError{op: "peek", err: err}
	}
	sc := peekScratches.Get().(*peekScratch)
	defer func() {
		// Nothing keeps either slice: Read.Groups is known or a copy. Their
		// strings are cleared, so as not to hold the reply while pooled.
		clear(sc.pairs)
		clear(sc.extra)
		sc.pairs, sc.extra = sc.pairs[:0], sc.extra[:0]
		peekScratches.Put(sc)
	}()
	r, ok := s.judge(&reply, 0, k, known, c, sc)
	if ok && len(sc.extra) > 0 {
		if err := s.peekExtra(ctx, sc.extra); err != nil {
			return Read{}, false, &opError{op: "peek", err: err}
		}
		for _, e := range sc.extra {
			if !e.matched {
				return Read{}, false, nil
			}
		}
	}
	return r, ok, nil
}

// PeekMany is Peek for many keys in one round trip (and one more for the
// stamps of groups that known lacks, if any value has one): on one server
// a single MGET of every value and the known groups' stamps, and TIME; on
// a cluster the same per master, with an MGET per slot. oks[i] says whether
// reads[i] answers ks[i]. It returns an error only if Redis could not be
// read.
func (s *Store) PeekMany(ctx context.Context, ks []Keys, known []string, c Claim) ([]Read, []bool, error) {
	reads := make([]Read, len(ks))
	oks := make([]bool, len(ks))
	if len(ks) == 0 || c.Always {
		return reads, oks, nil
	}
	if len(ks) == 1 {
		r, ok, err := s.Peek(ctx, ks[0], known, c)
		if err != nil {
			return nil, nil, err
		}
		reads[0], oks[0] = r, ok
		return reads, oks, nil
	}
	p, err := s.peekFirst(ctx, ks, known)
	if err != nil {
		s.relearnSlots(ctx, err)
		return nil, nil, &opError{op: "peek", err: err}
	}
	// What each value is, and which stamps are still to be read.
	var sc peekScratch
	for i := range ks {
		reads[i], oks[i] = s.judge(&p.keys[i], i, ks[i], known, c, &sc)
	}
	extra := sc.extra
	if len(extra) > 0 {
		if err := s.peekExtra(ctx, extra); err != nil {
			return nil, nil, &opError{op: "peek", err: err}
		}
		for _, e := range extra {
			if !e.matched {
				oks[e.i], reads[e.i] = false, Read{}
			}
		}
	}
	return reads, oks, nil
}

// peekReply is the first round trip of PeekMany: for each key, the MGET
// reply of its slot (its value, then the known groups' stamps of the slot
// after the slot's values) and its master's clock or its PTTL.
type peekReply struct {
	keys []peekKey
}

// peekKey is the first round trip's reply for one key.
type peekKey struct {
	vals   []any // its MGET's reply
	at     int   // the index of its value in vals
	now    time.Time
	pttl   time.Duration // for a batch of one key
	missed bool          // its master answered with an error (MOVED...)
}

// peekScratch is what judge keeps from one key to the next.
type peekScratch struct {
	extra []peekExtra // stamps to read in a second round trip
	pairs []string    // a header's groups: reused, as nothing keeps them
}

// peekScratches recycles Peek's scratch, with room for a header of 4
// groups.
var peekScratches = sync.Pool{New: func() any { return &peekScratch{pairs: make([]string, 0, 8)} }}

// judge tells from k, the first round trip's reply for key (ks[i]; known's
// stamps last in its MGET), whether its value answers as a Hit, and
// appends to sc.extra the stamps still to read of the value's groups that
// known lacks.
func (s *Store) judge(k *peekKey, i int, key Keys, known []string, c Claim, sc *peekScratch) (Read, bool) {
	if k.missed {
		return Read{}, false
	}
	v, ok := k.vals[k.at].(string)
	if !ok {
		return Read{}, false // absent
	}
	st, err := parseStored(v, sc.pairs)
	if st.Pairs != nil {
		sc.pairs = st.Pairs // grown, perhaps: kept for the next key
	}
	if err != nil {
		return Read{}, false // an earlier version's, or malformed: the script decides
	}
	left, ok := k.left(st.Expiry)
	if !ok {
		return Read{}, false
	}
	stamps := k.vals[len(k.vals)-len(known):]
	mark := len(sc.extra)
	for j := 0; j+1 < len(st.Pairs); j += 2 {
		g, stamp := st.Pairs[j], st.Pairs[j+1]
		if at := indexOf(known, g); at >= 0 {
			if cur, _ := stamps[at].(string); cur != stamp {
				sc.extra = sc.extra[:mark]
				return Read{}, false
			}
		} else {
			sc.extra = append(sc.extra, peekExtra{i: i, key: s.stampKey(s.tag(key), g), stamp: stamp})
		}
	}
	if !st.Negative && c.Below > 0 && left >= 0 && left <= c.Below {
		sc.extra = sc.extra[:mark]
		return Read{}, false
	}
	r := Read{State: Hit, TTL: left, Groups: st.groupsOr(known), Negative: st.Negative}
	if !st.Negative {
		// The envelope's bytes, not a copy: the MGET's reply is this
		// read's alone, and a Read's Value is only ever read.
		r.Value = unsafe.Slice(unsafe.StringData(st.Envelope), len(st.Envelope))
	}
	return r, true
}

// left returns the remaining lifetime of the value, which expires at
// expiry (ms on its master's clock), negative for none, and false if it
// expired meanwhile. A batch of one key asks Redis (PTTL), so that a TTL
// changed behind the library's back is seen; a larger batch reckons it
// from the header and its master's clock.
func (k *peekKey) left(expiry int64) (time.Duration, bool) {
	if k.now.IsZero() {
		return k.pttl, k.pttl > 0 || k.pttl == -1
	}
	d := time.Duration(expiry-k.now.UnixMilli()) * time.Millisecond
	return d, d > 0
}

// peekBatch is what PeekMany sends one server: one MGET per slot (one for
// all keys on one server), and TIME (PTTL for a batch of one key).
type peekBatch struct {
	client redis.Cmdable
	slots  [][]int // indexes into ks, per MGET
}

// peekFirst sends PeekMany's first round trip: on one server, one
// pipeline; on a cluster, one per master, concurrently, each through the
// master's own client, so that TIME is the clock of the master whose
// values it times. A master that answers with an error reply (a slot that
// moved: MOVED, ASK) leaves its keys to the read script, which the
// cluster client redirects.
func (s *Store) peekFirst(ctx context.Context, ks []Keys, known []string) (*peekReply, error) {
	p := &peekReply{keys: make([]peekKey, len(ks))}
	err := s.do(ctx, func(ctx context.Context) error {
		if s.cluster == nil {
			all := make([]int, len(ks))
			for i := range all {
				all[i] = i
			}
			return s.peekBatch(ctx, p, ks, known, peekBatch{client: s.rdb, slots: [][]int{all}})
		}
		batches, err := s.peekBatches(ctx, ks)
		if err != nil {
			return err
		}
		if len(batches) == 1 {
			return s.peekBatch(ctx, p, ks, known, batches[0])
		}
		errs := make([]error, len(batches))
		var wg sync.WaitGroup
		for j, b := range batches {
			wg.Go(func() { errs[j] = s.peekBatch(ctx, p, ks, known, b) })
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	return p, err
}

// peekBatches groups ks by master, then by slot.
func (s *Store) peekBatches(ctx context.Context, ks []Keys) ([]peekBatch, error) {
	var (
		out      []peekBatch
		byMaster = make(map[*redis.Client]int)
		bySlot   = make(map[int][2]int)
	)
	for i, k := range ks {
		slot := Slot(k.Value)
		if at, ok := bySlot[slot]; ok {
			out[at[0]].slots[at[1]] = append(out[at[0]].slots[at[1]], i)
			continue
		}
		m, err := s.cluster.MasterForKey(ctx, k.Value)
		if err != nil {
			return nil, err
		}
		b, ok := byMaster[m]
		if !ok {
			b = len(out)
			byMaster[m] = b
			out = append(out, peekBatch{client: m})
		}
		bySlot[slot] = [2]int{b, len(out[b].slots)}
		out[b].slots = append(out[b].slots, []int{i})
	}
	return out, nil
}

// peekBatch sends one batch and files its replies in p.
func (s *Store) peekBatch(ctx context.Context, p *peekReply, ks []Keys, known []string, b peekBatch) error {
	// The clock or the lifetime first: read before the values, they can
	// only overstate how long ago the values were written, never how long
	// they live (R54).
	pipe := b.client.Pipeline()
	var (
		now  *redis.TimeCmd
		pttl *redis.DurationCmd
	)
	if len(b.slots) == 1 && len(b.slots[0]) == 1 {
		pttl = pipe.PTTL(ctx, ks[b.slots[0][0]].Value)
	} else {
		now = pipe.Time(ctx)
	}
	cmds := make([]*redis.SliceCmd, len(b.slots))
	for j, idx := range b.slots {
		tag := s.tag(ks[idx[0]])
		names := make([]string, 0, len(idx)+len(known))
		for _, i := range idx {
			names = append(names, ks[i].Value)
		}
		for _, g := range known {
			names = append(names, s.stampKey(tag, g))
		}
		cmds[j] = pipe.MGet(ctx, names...)
	}
	_, err := pipe.Exec(ctx)
	var reply redis.Error
	if errors.As(err, &reply) {
		for _, idx := range b.slots {
			for _, i := range idx {
				p.keys[i].missed = true
			}
		}
		return nil
	}
	if err != nil {
		return err
	}
	for j, idx := range b.slots {
		vals := cmds[j].Val()
		if len(vals) != len(idx)+len(known) {
			return fmt.Errorf("%w: MGET of %d keys gave %d values", ErrUnexpectedReply, len(idx)+len(known), len(vals))
		}
		for at, i := range idx {
			k := &p.keys[i]
			k.vals, k.at = vals, at
			if now != nil {
				k.now = now.Val()
			} else {
				k.pttl = pttl.Val()
			}
		}
	}
	return nil
}

// peekExtra is a stamp that PeekMany reads in its second round trip: of a
// group of ks[i] that known lacked.
type peekExtra struct {
	i       int
	key     string
	stamp   string // the value's
	matched bool
}

// peekExtra reads the stamps of extra, one MGET per key (each key's
// stamps share its slot on a cluster), and marks those still current.
func (s *Store) peekExtra(ctx context.Context, extra []peekExtra) error {
	return s.do(ctx, func(ctx context.Context) error {
		pipe := s.rdb.Pipeline()
		var cmds []*redis.SliceCmd
		for from := 0; from < len(extra); {
			to := from + 1
			for to < len(extra) && extra[to].i == extra[from].i {
				to++
			}
			names := make([]string, 0, to-from)
			for _, e := range extra[from:to] {
				names = append(names, e.key)
			}
			cmds = append(cmds, pipe.MGet(ctx, names...))
			from = to
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		at := 0
		for _, cmd := range cmds {
			for _, v := range cmd.Val() {
				if at == len(extra) {
					return fmt.Errorf("%w: MGET gave more stamps than asked", ErrUnexpectedReply)
				}
				cur, _ := v.(string)
				extra[at].matched = cur == extra[at].stamp
				at++
			}
		}
		if at != len(extra) {
			return fmt.Errorf("%w: MGET gave %d stamps of %d", ErrUnexpectedReply, at, len(extra))
		}
		return nil
	})
}

// stampArg is stampKey as a command's argument: on one server, the name
// remembered, boxed once.
func (s *Store) stampArg(tag, group string) any {
	if tag == "" {
		if k, ok := s.stampNames.Load(group); ok {
			return k
		}
	}
	return s.stampKey(tag, group)
}

// stampKey names group's stamp in the slot whose tag is tag, or the
// server's if tag is "" (gclockLua's skey builds the same).
func (s *Store) stampKey(tag, group string) string {
	if tag == "" {
		if k, ok := s.stampNames.Load(group); ok {
			return k.(string)
		}
		k := GroupKey(s.prefix, group)
		if s.stampCount.Add(1) <= maxStampNames {
			s.stampNames.Store(group, k)
		}
		return k
	}
	return s.prefix + ":g:{" + tag + "}:" + strconv.Itoa(len(group)) + ":" + group
}

// maxStampNames bounds the stamp names a Store remembers: the groups every
// read names (the fleet's and each namespace's) are few.
const maxStampNames = 1024

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}
