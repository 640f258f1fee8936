package l2_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/l2"
)

// peekGate is a go-redis hook that holds each joined batch of peeks (a
// pipeline that begins with a PTTL) until the test releases it: with nil
// to send it, errGatePanic to panic, or another error to fail it unsent;
// or until the batch's context ends.
type peekGate struct {
	held    chan []redis.Cmder
	release chan error
}

// errGatePanic, released to a peekGate, makes the hook panic; errGateExit
// makes it end its goroutine (runtime.Goexit, as t.FailNow does).
var errGatePanic, errGateExit = errors.New("panic"), errors.New("exit")

func newPeekGate(rdbs ...*redis.Client) *peekGate {
	g := &peekGate{held: make(chan []redis.Cmder), release: make(chan error)}
	for _, rdb := range rdbs {
		rdb.AddHook(g)
	}
	return g
}

func (g *peekGate) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g *peekGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g *peekGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) == 0 || cmds[0].Name() != "pttl" {
			return next(ctx, cmds)
		}
		g.held <- cmds
		select {
		case err := <-g.release:
			if errors.Is(err, errGatePanic) {
				panic("hook of the application")
			}
			if errors.Is(err, errGateExit) {
				runtime.Goexit()
			}
			if err != nil {
				return err
			}
		case <-ctx.Done(): // as Redis's reply, which the batch's end stops waiting for
			return ctx.Err()
		}
		return next(ctx, cmds)
	}
}

// batch waits for the next batch and returns its command names.
func (g *peekGate) batch(t *testing.T) []string {
	t.Helper()
	select {
	case cmds := <-g.held:
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		return names
	case <-time.After(10 * time.Second):
		t.Fatal("no batch of peeks was sent")
		return nil
	}
}

// waitQueued waits until n peeks wait for the next batch of st.
func waitQueued(t *testing.T, st *l2.Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l2.JoinQueued(st) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d peeks queued; want %d", l2.JoinQueued(st), n)
		}
		time.Sleep(time.Millisecond) // polls a condition; nothing waits on time
	}
}

type peekResult struct {
	r   l2.Read
	ok  bool
	err error
}

// TestRace_R57_JoinedPeeksAnswerAsAlone proves that peeks made while
// another is in flight are sent as one batch (every PTTL, then one MGET),
// and that each answers exactly what it answered alone: a hit in the
// namespace's groups, a hit in other groups, an absent key, a value whose
// group was invalidated, and a TTL shortened behind the library's back.
func TestRace_R57_JoinedPeeksAnswerAsAlone(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	other := []string{"fleet", "other"}
	type peek struct {
		k     l2.Keys
		known []string
	}
	hit := l2.KeysFor("tc", "ns", "hit")
	fillIn(t, f.st, hit, envelope(t, "hit", "v1"), valueTTL, known...)
	elsewhere := l2.KeysFor("tc", "other", "hit")
	fillIn(t, f.st, elsewhere, envelope(t, "hit", "v2"), valueTTL, other...)
	stale := l2.KeysFor("tc", "ns", "stale")
	fillIn(t, f.st, stale, envelope(t, "stale", "v3"), valueTTL, "fleet", "user:7")
	if _, err := f.st.Apply(ctx, []l2.Change{{Group: "user:7"}}, nil); err != nil {
		t.Fatal(err)
	}
	shortened := l2.KeysFor("tc", "ns", "shortened")
	fillIn(t, f.st, shortened, envelope(t, "shortened", "v4"), valueTTL, known...)
	if err := f.rdb.PExpire(ctx, shortened.Value, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	peeks := []peek{
		{hit, known}, {elsewhere, other}, {l2.KeysFor("tc", "ns", "absent"), known},
		{stale, known}, {shortened, known}, {hit, known},
	}
	alone := make([]peekResult, len(peeks))
	for i, p := range peeks {
		r, ok, err := f.st.Peek(ctx, p.k, p.known, l2.Claim{})
		alone[i] = peekResult{r, ok, err}
	}

	gate := newPeekGate(f.rdb)
	leader := make(chan peekResult, 1)
	go func() {
		r, ok, err := f.st.Peek(ctx, hit, known, l2.Claim{})
		leader <- peekResult{r, ok, err}
	}()
	if got := gate.batch(t); !cmp.Equal(got, []string{"pttl", "mget"}) {
		t.Fatalf("a lone peek sent %v; want a PTTL and an MGET", got)
	}
	joined := make([]chan peekResult, len(peeks))
	for i, p := range peeks {
		joined[i] = make(chan peekResult, 1)
		go func() {
			r, ok, err := f.st.Peek(ctx, p.k, p.known, l2.Claim{})
			joined[i] <- peekResult{r, ok, err}
		}()
	}
	waitQueued(t, f.st, len(peeks))
	gate.release <- nil
	got := gate.batch(t)
	want := []string{"pttl", "pttl", "pttl", "pttl", "pttl", "pttl", "mget"}
	if !cmp.Equal(got, want) {
		t.Fatalf("the queued peeks sent %v; want one batch: %v", got, want)
	}
	gate.release <- nil
	if r := <-leader; r.err != nil || !r.ok {
		t.Fatalf("the leader's peek = %+v", r)
	}
	keys := make([]l2.Keys, len(peeks))
	for i, p := range peeks {
		keys[i] = p.k
	}
	sameAsAlone(t, keys, alone, joined)
	if want := []bool{true, true, false, false, true, true}; !cmp.Equal(okOf(alone), want) {
		t.Fatalf("peeks alone answered %v; want %v", okOf(alone), want)
	}
	if alone[4].r.TTL > time.Minute {
		t.Fatalf("the shortened value's TTL %v; want at most 1m", alone[4].r.TTL)
	}
}

func okOf(rs []peekResult) []bool {
	out := make([]bool, len(rs))
	for i, r := range rs {
		out[i] = r.ok
	}
	return out
}

// TestRace_R57_QueuedPeekGivesUp proves that a peek whose caller gives up
// while it waits for a batch returns at once with the caller's error and
// is not sent, and that the batch after it still goes out; that a batch
// that fails fails every peek in it, and none before it; and that a batch
// that finds Redis unreachable fails the peeks queued behind it too, so
// that none waits for a timeout of its own.
func TestRace_R57_QueuedPeekGivesUp(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	fillIn(t, f.st, k, envelope(t, "k", "v1"), valueTTL, known...)
	gate := newPeekGate(f.rdb)
	peek := func(ctx context.Context) chan peekResult {
		ch := make(chan peekResult, 1)
		go func() {
			r, ok, err := f.st.Peek(ctx, k, known, l2.Claim{})
			ch <- peekResult{r, ok, err}
		}()
		return ch
	}
	leader := peek(ctx)
	gate.batch(t)
	quitter, quit := context.WithCancel(ctx)
	gaveUp := peek(quitter)
	waitQueued(t, f.st, 1)
	quit()
	if r := <-gaveUp; !errors.Is(r.err, context.Canceled) || r.ok {
		t.Fatalf("a peek whose caller gave up = %+v; want context.Canceled", r)
	}
	waitQueued(t, f.st, 0)
	stays := peek(ctx)
	failed := peek(ctx)
	waitQueued(t, f.st, 2)
	gate.release <- nil
	if got := gate.batch(t); len(got) != 3 {
		t.Fatalf("the next batch sent %v; want the two peeks that wait (the one that gave up is not sent)", got)
	}
	boom := errors.New("boom")
	gate.release <- boom
	if r := <-leader; r.err != nil || !r.ok {
		t.Fatalf("the leader's peek = %+v; want a hit", r)
	}
	for _, ch := range []chan peekResult{stays, failed} {
		if r := <-ch; !errors.Is(r.err, boom) || r.ok {
			t.Fatalf("a peek of a failed batch = %+v; want its error", r)
		}
	}
	// A batch that finds Redis unreachable fails the peeks queued behind
	// it too, unsent.
	lead := peek(ctx)
	gate.batch(t)
	queued := []chan peekResult{peek(ctx), peek(ctx)}
	waitQueued(t, f.st, 2)
	down := errors.New("connection refused")
	gate.release <- down
	for _, ch := range append(queued, lead) {
		if r := <-ch; !errors.Is(r.err, down) || r.ok {
			t.Fatalf("a peek of, or queued behind, a batch that found Redis down = %+v; want its error", r)
		}
	}
	// The joiner is idle again: a lone peek goes out at once, alone.
	after := peek(ctx)
	if got := gate.batch(t); len(got) != 2 {
		t.Fatalf("the peek after them sent %v; want its own PTTL and MGET (the queued peeks are not sent)", got)
	}
	gate.release <- nil
	if r := <-after; r.err != nil || !r.ok {
		t.Fatalf("a peek after a failed batch = %+v; want a hit", r)
	}
}

// TestRace_R57_HookPanicsInABatch proves that a panic of the client's
// hooks in a joined batch is an error of its peeks (wrapping ErrPanic), not
// a crash: it neither fails the peeks queued behind it (a panic says
// nothing of Redis) nor leaves the joiner busy.
func TestRace_R57_HookPanicsInABatch(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	fillIn(t, f.st, k, envelope(t, "k", "v1"), valueTTL, known...)
	gate := newPeekGate(f.rdb)
	lead := peekAsync(ctx, f.st, k)
	gate.batch(t)
	queued := peekAsync(ctx, f.st, k)
	waitQueued(t, f.st, 1)
	gate.release <- errGatePanic
	if r := <-lead; !errors.Is(r.err, l2.ErrPanic) || r.ok {
		t.Fatalf("the peek of a batch whose hook panicked = %+v; want an error wrapping ErrPanic", r)
	}
	if got := gate.batch(t); len(got) != 2 {
		t.Fatalf("the queued peek sent %v; want its own PTTL and MGET", got)
	}
	gate.release <- nil
	if r := <-queued; r.err != nil || !r.ok {
		t.Fatalf("the peek queued behind the panic = %+v; want a hit", r)
	}
}

// TestRace_R57_HookEndsTheGoroutineInABatch proves that a hook of the
// client that ends the goroutine leading a joined batch (runtime.Goexit)
// ends only that peek: the peek queued behind it goes out in the next
// batch and answers, rather than wait for ever behind a batch that never
// ends, and the Guard learns of the ended peek, as abandoned, so that a
// breaker's probe would not be held for ever.
func TestRace_R57_HookEndsTheGoroutineInABatch(t *testing.T) {
	f := newFixture(t)
	g := &countingGuard{}
	st := l2.NewStore(f.rdb, "tc", l2.WithGuard(g))
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	fillIn(t, st, k, envelope(t, "k", "v1"), valueTTL, known...)
	allowed, done, abandonedBefore := g.counts()
	gate := newPeekGate(f.rdb)
	returned := make(chan bool, 1)
	go func() {
		ok := false
		defer func() { returned <- ok }()
		_, _, _ = st.Peek(ctx, k, known, l2.Claim{})
		ok = true
	}()
	gate.batch(t)
	queued := peekAsync(ctx, st, k)
	waitQueued(t, st, 1)
	gate.release <- errGateExit
	mustEnd(t, returned, "the leader's Peek")
	if got := gate.batch(t); len(got) != 2 {
		t.Fatalf("the queued peek sent %v; want its own PTTL and MGET", got)
	}
	gate.release <- nil
	if r := <-queued; r.err != nil || !r.ok {
		t.Fatalf("the peek queued behind the ended batch = %+v; want a hit", r)
	}
	a, d, abandoned := g.counts()
	if a-allowed != 2 || d-done != 2 || abandoned-abandonedBefore != 1 {
		t.Fatalf("the Guard admitted %d peeks and learnt how %d ended, %d abandoned; want 2, 2 and 1", a-allowed, d-done, abandoned-abandonedBefore)
	}
}

// exitAfterScript is a go-redis hook that ends the goroutine (runtime.Goexit,
// as t.FailNow does), or with panics set panics, once, right after the
// first script whose arguments name key has run.
type exitAfterScript struct {
	key    string
	panics bool
	once   sync.Once
}

func (h *exitAfterScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *exitAfterScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *exitAfterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && slices.Contains(cmd.Args(), any(h.key)) {
			h.once.Do(func() {
				if h.panics {
					panic("hook of the application")
				}
				runtime.Goexit()
			})
		}
		return err
	}
}

// TestGoexitInAnOperationIsAbandoned proves that an operation that a hook
// of the client ends (runtime.Goexit) or unwinds (a panic) is reported to
// the Guard, as abandoned: a breaker's probe is freed rather than held for
// ever, with every operation after it refused.
func TestGoexitInAnOperationIsAbandoned(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprint("panics=", panics), func(t *testing.T) {
			f := newFixture(t)
			g := &countingGuard{}
			st := l2.NewStore(f.rdb, "tc", l2.WithGuard(g))
			k := l2.KeysFor("tc", "ns", "k")
			if err := st.LoadScripts(t.Context()); err != nil { // so that the first EVALSHA runs its script
				t.Fatalf("LoadScripts: %v", err)
			}
			f.rdb.AddHook(&exitAfterScript{key: k.Flag, panics: panics})
			tok := consistency.NewToken()
			returned := make(chan bool, 1)
			go func() {
				ok := false
				defer func() {
					_ = recover() // the hook's panic, which reached the caller
					returned <- ok
				}()
				_, _ = st.ReadOrClaim(t.Context(), k, tok, flagTTL)
				ok = true
			}()
			mustEnd(t, returned, "ReadOrClaim")
			f.mustHold(t, k.Flag, tok) // the script ran: the claim is the caller's to release
			if a, d, abandoned := g.counts(); a != 1 || d != 1 || abandoned != 1 {
				t.Fatalf("the Guard admitted %d operations and learnt how %d ended, %d abandoned; want 1 each", a, d, abandoned)
			}
		})
	}
}

// mustEnd waits for a goroutine that sends on returned whether its call
// returned, and fails unless a hook ended or unwound the call instead.
func mustEnd(t *testing.T, returned <-chan bool, call string) {
	t.Helper()
	select {
	case ok := <-returned:
		if ok {
			t.Fatalf("%s returned; want the hook to end or unwind it", call)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s neither returned nor ended", call)
	}
}

// countingGuard is a Guard that admits every operation, as its probe, and
// counts what it admitted and how the operations ended.
type countingGuard struct {
	mu                       sync.Mutex
	allowed, done, abandoned int
}

func (g *countingGuard) Allow() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.allowed++
	return true, nil
}

func (g *countingGuard) Done(probe bool, o l2.Outcome) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done++
	if o == l2.Abandoned {
		g.abandoned++
	}
}

func (g *countingGuard) counts() (allowed, done, abandoned int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.allowed, g.done, g.abandoned
}

// TestRace_R57_LeaderGivesUpInFlight proves that a leader whose batch is in
// flight returns as soon as its caller gives up, like any caller, and that
// the batch's other peeks go out again in the next batch and answer; and
// that a lone peek does the same.
func TestRace_R57_LeaderGivesUpInFlight(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k := l2.KeysFor("tc", "ns", "k")
	fillIn(t, f.st, k, envelope(t, "k", "v1"), valueTTL, known...)
	gate := newPeekGate(f.rdb)

	alone, quitAlone := context.WithCancel(ctx)
	lone := peekAsync(alone, f.st, k)
	gate.batch(t)
	quitAlone()
	if r := <-lone; !errors.Is(r.err, context.Canceled) || r.ok {
		t.Fatalf("a lone peek whose caller gave up in flight = %+v; want context.Canceled", r)
	}

	first := peekAsync(ctx, f.st, k)
	gate.batch(t)
	leaderCtx, quitLeader := context.WithCancel(ctx)
	leader := peekAsync(leaderCtx, f.st, k) // queued first: it will lead
	waitQueued(t, f.st, 1)
	member := peekAsync(ctx, f.st, k)
	waitQueued(t, f.st, 2)
	gate.release <- nil
	if got := gate.batch(t); len(got) != 3 {
		t.Fatalf("the queued peeks sent %v; want one batch of both", got)
	}
	quitLeader()
	if r := <-leader; !errors.Is(r.err, context.Canceled) || r.ok {
		t.Fatalf("a leader whose caller gave up in flight = %+v; want context.Canceled", r)
	}
	if got := gate.batch(t); len(got) != 2 {
		t.Fatalf("the abandoned batch's other peek sent %v; want it alone, again", got)
	}
	gate.release <- nil
	for _, ch := range []chan peekResult{first, member} {
		if r := <-ch; r.err != nil || !r.ok {
			t.Fatalf("a peek = %+v; want a hit", r)
		}
	}
}

// TestRace_R57_ClusterJoinsPerMaster proves that on a cluster the peeks
// made while others are in flight are joined per master: each master's
// batch goes through its own client, with every key's PTTL and then one
// MGET per slot (the value of each key of the slot and the slot's stamps),
// and each peek answers exactly what it answered alone, whether it shares
// its MGET with another key of its slot or not.
func TestRace_R57_ClusterJoinsPerMaster(t *testing.T) {
	cl := redistest.StartCluster(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	rdb := cl.Client(t)
	ctx := t.Context()
	st := l2.NewStore(rdb, "tc")

	// For each master, two keys of one slot and one of another slot.
	bySlot := map[int][]l2.Keys{}
	perMaster := map[string][]l2.Keys{}
	for i := 0; len(perMaster) < 3 || !allComplete(perMaster); i++ {
		k := l2.KeysFor("tc", "ns", fmt.Sprintf("k%d", i))
		slot := l2.Slot(k.Value)
		bySlot[slot] = append(bySlot[slot], k)
		m, err := rdb.MasterForKey(ctx, k.Value)
		if err != nil {
			t.Fatal(err)
		}
		addr, ks := m.Options().Addr, perMaster[m.Options().Addr]
		switch {
		case len(ks) == 0 && len(bySlot[slot]) == 2:
			perMaster[addr] = bySlot[slot]
		case len(ks) == 2 && l2.Slot(ks[0].Value) != slot:
			perMaster[addr] = append(ks, k)
		}
	}
	var keys []l2.Keys
	for _, ks := range perMaster {
		// The first of each slot's pair goes stale; the others hit.
		fillIn(t, st, ks[0], envelope(t, ks[0].Value, "v"), valueTTL, "fleet", "ns", "gone")
		fillIn(t, st, ks[1], envelope(t, ks[1].Value, "v"), valueTTL, known...)
		fillIn(t, st, ks[2], envelope(t, ks[2].Value, "v"), valueTTL, known...)
		keys = append(keys, ks...)
	}
	if _, err := st.Apply(ctx, []l2.Change{{Group: "gone"}}, nil); err != nil {
		t.Fatal(err)
	}
	alone := make([]peekResult, len(keys))
	for i, k := range keys {
		r, ok, err := st.Peek(ctx, k, known, l2.Claim{})
		alone[i] = peekResult{r, ok, err}
	}
	if got, want := okOf(alone), []bool{false, true, true, false, true, true, false, true, true}; !cmp.Equal(got, want) {
		t.Fatalf("peeks alone answered %v; want %v", got, want)
	}
	if n := len(l2.Joiners(st)); n != 3 {
		t.Fatalf("peeks went through %d masters' clients; want 3", n)
	}

	gate := newPeekGate(l2.Joiners(st)...)
	var leaders []chan peekResult
	for _, ks := range perMaster {
		leaders = append(leaders, peekAsync(ctx, st, ks[1]))
	}
	for range perMaster {
		if got := gate.batch(t); !cmp.Equal(got, []string{"pttl", "mget"}) {
			t.Fatalf("a lone peek sent %v; want a PTTL and an MGET", got)
		}
	}
	joined := make([]chan peekResult, len(keys))
	for i, k := range keys {
		joined[i] = peekAsync(ctx, st, k)
	}
	waitQueued(t, st, len(keys))
	for range perMaster {
		gate.release <- nil
	}
	for range perMaster {
		want := []string{"pttl", "pttl", "pttl", "mget", "mget"}
		if got := gate.batch(t); !cmp.Equal(got, want) {
			t.Fatalf("a master's queued peeks sent %v; want one batch: %v", got, want)
		}
	}
	for range perMaster {
		gate.release <- nil
	}
	for _, ch := range leaders {
		if r := <-ch; r.err != nil || !r.ok {
			t.Fatalf("a leader's peek = %+v", r)
		}
	}
	sameAsAlone(t, keys, alone, joined)
}

// sameAsAlone checks that each joined peek of keys[i] answered what the
// peek alone did, with a lifetime no longer than alone's.
func sameAsAlone(t *testing.T, keys []l2.Keys, alone []peekResult, joined []chan peekResult) {
	t.Helper()
	opts := []cmp.Option{
		cmp.AllowUnexported(peekResult{}),
		cmpopts.IgnoreFields(l2.Read{}, "TTL"),
		cmpopts.EquateErrors(),
	}
	for i, ch := range joined {
		r := <-ch
		if diff := cmp.Diff(alone[i], r, opts...); diff != "" {
			t.Errorf("peek of %q joined differs from alone (-alone +joined):\n%s", keys[i].Value, diff)
		}
		if r.ok && (r.r.TTL <= 0 || r.r.TTL > alone[i].r.TTL) {
			t.Errorf("peek of %q joined: TTL %v; want in (0, %v]", keys[i].Value, r.r.TTL, alone[i].r.TTL)
		}
	}
}

// TestRace_R57_ClusterBatchWithAMovedSlot proves that in a batch joined on
// a cluster, a peek of a key whose slot moved since the client last looked
// is left to the read script (MOVED), while the batch's other peeks of the
// same master still answer.
func TestRace_R57_ClusterBatchWithAMovedSlot(t *testing.T) {
	cl := redistest.StartCluster(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	// A client that does not reload its slot map of its own accord: it
	// learns of the move only from a MOVED reply to a command of its own.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ClusterStateReloadInterval: time.Hour})
	t.Cleanup(func() { rdb.Close() })
	ctx := t.Context()
	st := l2.NewStore(rdb, "tc")
	// Two keys of one master, in different slots.
	var moved, stays l2.Keys
	for i := 0; stays.Value == ""; i++ {
		k := l2.KeysFor("tc", "ns", fmt.Sprintf("k%d", i))
		switch {
		case moved.Value == "":
			moved = k
		case cl.MasterOfSlot(l2.Slot(k.Value)) == cl.MasterOfSlot(l2.Slot(moved.Value)) && l2.Slot(k.Value) != l2.Slot(moved.Value):
			stays = k
		}
	}
	for _, k := range []l2.Keys{moved, stays} {
		fillIn(t, st, k, envelope(t, k.Value, "v"), valueTTL, known...)
		if _, ok, err := st.Peek(ctx, k, known, l2.Claim{}); err != nil || !ok {
			t.Fatalf("Peek of %q before the move = %v, %v; want a hit", k.Value, ok, err)
		}
	}
	cl.MigrateSlotAway(t, l2.Slot(moved.Value))

	gate := newPeekGate(l2.Joiners(st)...)
	lead := peekAsync(ctx, st, stays)
	gate.batch(t)
	queued := []chan peekResult{peekAsync(ctx, st, moved), peekAsync(ctx, st, stays)}
	waitQueued(t, st, 2)
	gate.release <- nil
	if got, want := gate.batch(t), []string{"pttl", "pttl", "mget", "mget"}; !cmp.Equal(got, want) {
		t.Fatalf("the queued peeks sent %v; want %v", got, want)
	}
	gate.release <- nil
	for _, ch := range []chan peekResult{lead, queued[1]} {
		if r := <-ch; r.err != nil || !r.ok {
			t.Fatalf("a peek of the slot that stayed = %+v; want a hit", r)
		}
	}
	if r := <-queued[0]; r.err != nil || r.ok {
		t.Fatalf("the peek of the moved slot = %+v; want it left to the script, without an error", r)
	}
	if r, err := st.ReadOrClaim(ctx, moved, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Hit {
		t.Fatalf("ReadOrClaim after the move = %+v, %v; want the Hit, redirected", r, err)
	}
}

// allComplete reports whether every master has its three keys.
func allComplete(perMaster map[string][]l2.Keys) bool {
	for _, ks := range perMaster {
		if len(ks) < 3 {
			return false
		}
	}
	return true
}

// peekAsync peeks k on st in a goroutine, with the known groups.
func peekAsync(ctx context.Context, st *l2.Store, k l2.Keys) chan peekResult {
	ch := make(chan peekResult, 1)
	go func() {
		r, ok, err := st.Peek(ctx, k, known, l2.Claim{})
		ch <- peekResult{r, ok, err}
	}()
	return ch
}
