package l2_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

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

// errGatePanic, released to a peekGate, makes the hook panic.
var errGatePanic = errors.New("panic")

func newPeekGate(rdb *redis.Client) *peekGate {
	g := &peekGate{held: make(chan []redis.Cmder), release: make(chan error)}
	rdb.AddHook(g)
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
	opts := []cmp.Option{
		cmp.AllowUnexported(peekResult{}),
		cmpopts.IgnoreFields(l2.Read{}, "TTL"),
		cmpopts.EquateErrors(),
	}
	for i, ch := range joined {
		r := <-ch
		if diff := cmp.Diff(alone[i], r, opts...); diff != "" {
			t.Errorf("peek of %q joined differs from alone (-alone +joined):\n%s", peeks[i].k.Value, diff)
		}
		if r.ok && (r.r.TTL <= 0 || r.r.TTL > alone[i].r.TTL) {
			t.Errorf("peek of %q joined: TTL %v; want in (0, %v]", peeks[i].k.Value, r.r.TTL, alone[i].r.TTL)
		}
	}
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

// peekAsync peeks k on st in a goroutine, with the known groups.
func peekAsync(ctx context.Context, st *l2.Store, k l2.Keys) chan peekResult {
	ch := make(chan peekResult, 1)
	go func() {
		r, ok, err := st.Peek(ctx, k, known, l2.Claim{})
		ch <- peekResult{r, ok, err}
	}()
	return ch
}
