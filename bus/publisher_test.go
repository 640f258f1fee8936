package bus_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tiercache/tiercache/bus"
)

// guard bounds every wait for an event in this package's tests.
const guard = 20 * time.Second

// fakeExec stands in for the Redis script: the Publisher never talks to
// Redis itself, so its batching is tested against this recorder. If gated,
// each call announces its batch on started and returns what the test sends
// on release (or the ctx error if the exec ctx ends first).
type fakeExec struct {
	gated   bool
	started chan *bus.Batch
	release chan error

	mu      sync.Mutex
	batches []*bus.Batch
}

func newFakeExec(gated bool) *fakeExec {
	return &fakeExec{gated: gated, started: make(chan *bus.Batch), release: make(chan error)}
}

func (f *fakeExec) exec(ctx context.Context, b *bus.Batch) error {
	f.mu.Lock()
	f.batches = append(f.batches, b)
	f.mu.Unlock()
	if !f.gated {
		return nil
	}
	select {
	case f.started <- b:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-f.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recorded returns the batches executed so far.
func (f *fakeExec) recorded() []*bus.Batch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*bus.Batch(nil), f.batches...)
}

// next waits for the next gated batch to start.
func (f *fakeExec) next(t *testing.T) *bus.Batch {
	t.Helper()
	select {
	case b := <-f.started:
		return b
	case <-time.After(guard):
		t.Fatalf("no batch started within %v", guard)
		return nil
	}
}

// finish lets the batch in flight return err.
func (f *fakeExec) finish(t *testing.T, err error) {
	t.Helper()
	select {
	case f.release <- err:
	case <-time.After(guard):
		t.Fatalf("no batch in flight to release within %v", guard)
	}
}

func newPublisher(t *testing.T, f *fakeExec, cfg bus.PublisherConfig) *bus.Publisher {
	t.Helper()
	cfg.Exec = f.exec
	if cfg.Origin == (bus.NodeID{}) {
		cfg.Origin = testOrigin
	}
	p := mustPublisher(t, t.Context(), cfg)
	t.Cleanup(p.Close)
	return p
}

// waitingCtx tells the test when a caller is queued: Publish and Flush ask
// for ctx.Done only after their request is in the queue, to wait for it.
type waitingCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func newWaitingCtx(parent context.Context) *waitingCtx {
	return &waitingCtx{Context: parent, waiting: make(chan struct{})}
}

func (c *waitingCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// queued waits until every ctx's caller is waiting in the queue.
func queued(t *testing.T, ctxs ...*waitingCtx) {
	t.Helper()
	timeout := time.After(guard)
	for i, c := range ctxs {
		select {
		case <-c.waiting:
		case <-timeout:
			t.Fatalf("caller %d was not queued within %v", i, guard)
		}
	}
}

// result is the outcome of a call run in the background.
type result chan error

func goPublish(ctx context.Context, p *bus.Publisher, ops ...bus.Op) result {
	r := make(result, 1)
	go func() { r <- p.Publish(ctx, ops...) }()
	return r
}

// goClose closes p in the background; its result is nil once Close
// returned.
func goClose(p *bus.Publisher) result {
	r := make(result, 1)
	go func() {
		p.Close()
		r <- nil
	}()
	return r
}

func goFlush(ctx context.Context, p *bus.Publisher) result {
	r := make(result, 1)
	go func() { r <- p.Flush(ctx) }()
	return r
}

// wait returns the call's error.
func (r result) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r:
		return err
	case <-time.After(guard):
		t.Fatalf("call did not return within %v", guard)
		return nil
	}
}

// pending asserts the call has not returned yet.
func (r result) pending(t *testing.T, what string) {
	t.Helper()
	select {
	case err := <-r:
		t.Fatalf("%s returned early: %v", what, err)
	default:
	}
}

func op(ns, key string) bus.Op { return bus.Op{Namespace: ns, Key: key} }

// opKeys lists a batch's ops as "ns/key".
func opKeys(b *bus.Batch) []string {
	out := make([]string, len(b.Ops))
	for i, o := range b.Ops {
		out[i] = o.Namespace + "/" + o.Key
	}
	return out
}

// decodeBatch decodes a batch's message as the script would assemble it,
// with seq inserted between Head and Body.
func decodeBatch(t *testing.T, b *bus.Batch, seq uint64) *bus.Message {
	t.Helper()
	raw := binary.BigEndian.AppendUint64(append([]byte(nil), b.Head...), seq)
	raw = binary.BigEndian.AppendUint64(raw, 0) // no clock
	m, err := bus.Decode(append(raw, b.Body...))
	if err != nil {
		t.Fatalf("Decode(Head+seq+clock+Body): %v", err)
	}
	return m
}

// TestPublisherLonePublishExecutesAtOnce proves a lone Publish is executed
// as one batch of its own ops, with no timer to wait for, and an empty
// Publish executes nothing.
func TestPublisherLonePublishExecutesAtOnce(t *testing.T) {
	f := newFakeExec(false)
	p := newPublisher(t, f, bus.PublisherConfig{})
	if err := p.Publish(t.Context()); err != nil {
		t.Fatalf("empty Publish: %v", err)
	}
	if err := p.Publish(t.Context(), op("ns", "k1"), op("ns", "k2")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	got := f.recorded()
	if len(got) != 1 {
		t.Fatalf("%d batches, want 1", len(got))
	}
	if diff := cmp.Diff([]string{"ns/k1", "ns/k2"}, opKeys(got[0])); diff != "" {
		t.Fatalf("batch ops (-want +got):\n%s", diff)
	}
	if got[0].Flush {
		t.Fatalf("a keys batch is marked Flush")
	}
}

// TestPublisherGathersConcurrentCallersIntoOneBatch proves group commit:
// while one batch is in flight, the ops of N concurrent callers are gathered
// into exactly one next batch, each op exactly once, and every caller
// returns when that batch is done.
func TestPublisherGathersConcurrentCallersIntoOneBatch(t *testing.T) {
	const n = 64
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "first"))
	f.next(t)

	ctxs := make([]*waitingCtx, n)
	results := make([]result, n)
	for i := range n {
		ctxs[i] = newWaitingCtx(t.Context())
		ops := []bus.Op{op("ns", fmt.Sprintf("a%d", i))}
		if i%2 == 0 {
			ops = append(ops, op("other", fmt.Sprintf("b%d", i)))
		}
		results[i] = goPublish(ctxs[i], p, ops...)
	}
	queued(t, ctxs...)
	for i, r := range results {
		r.pending(t, fmt.Sprintf("caller %d (its batch has not run)", i))
	}
	f.finish(t, nil)
	if err := first.wait(t); err != nil {
		t.Fatalf("first Publish: %v", err)
	}
	second := f.next(t)
	f.finish(t, nil)
	for i, r := range results {
		if err := r.wait(t); err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}

	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("ns/a%d", i))
		if i%2 == 0 {
			want = append(want, fmt.Sprintf("other/b%d", i))
		}
	}
	got := opKeys(second)
	sort.Strings(want)
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("second batch: every op exactly once (-want +got):\n%s", diff)
	}
	if all := f.recorded(); len(all) != 2 {
		t.Fatalf("%d batches, want 2 (the first and one gathered batch)", len(all))
	}
}

// TestPublisherMaxOpsSplitsARequest proves MaxOps caps each batch, a request
// spanning several batches keeps its op order across them, and it returns
// only after the last of them was executed.
func TestPublisherMaxOpsSplitsARequest(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{MaxOps: 3})
	var ops []bus.Op
	for i := range 7 {
		ops = append(ops, op("ns", fmt.Sprint("k", i)))
	}
	r := goPublish(t.Context(), p, ops...)
	want := [][]string{{"ns/k0", "ns/k1", "ns/k2"}, {"ns/k3", "ns/k4", "ns/k5"}, {"ns/k6"}}
	for i, w := range want {
		b := f.next(t)
		// The previous batches are done; this one is in flight.
		r.pending(t, fmt.Sprintf("a 7-op Publish with batch %d of 3 in flight", i+1))
		if diff := cmp.Diff(w, opKeys(b)); diff != "" {
			t.Fatalf("batch %d (-want +got):\n%s", i+1, diff)
		}
		f.finish(t, nil)
	}
	if err := r.wait(t); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// TestPublisherMaxBytesSplitsBatches proves MaxBytes caps the key bytes of a
// batch, and that a single op larger than MaxBytes goes alone rather than
// being refused.
func TestPublisherMaxBytesSplitsBatches(t *testing.T) {
	f := newFakeExec(false)
	// "n" + 4-byte key = 5 bytes: two fit in 10.
	p := newPublisher(t, f, bus.PublisherConfig{MaxBytes: 10})
	big := "0123456789abcdefghij" // 21 bytes with its namespace
	err := p.Publish(t.Context(), op("n", "aaaa"), op("n", "bbbb"), op("n", "cccc"), op("n", big), op("n", "dddd"), op("n", "eeee"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	var got [][]string
	for _, b := range f.recorded() {
		got = append(got, opKeys(b))
	}
	want := [][]string{{"n/aaaa", "n/bbbb"}, {"n/cccc"}, {"n/" + big}, {"n/dddd", "n/eeee"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("batches (-want +got):\n%s", diff)
	}
}

// TestPublisherFlushGoesAlone proves a Flush is executed as a batch of its
// own, of kind flush with no ops and no body, never merged with queued keys.
func TestPublisherFlushGoesAlone(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "first"))
	f.next(t)
	kc, fc := newWaitingCtx(t.Context()), newWaitingCtx(t.Context())
	keys := goPublish(kc, p, op("ns", "queued"))
	flush := goFlush(fc, p)
	queued(t, kc, fc)
	f.finish(t, nil)

	var sawFlush, sawKeys bool
	for range 2 {
		b := f.next(t)
		f.finish(t, nil)
		m := decodeBatch(t, b, 5)
		if b.Flush {
			sawFlush = true
			if len(b.Ops) != 0 || len(b.Body) != 0 || m.Kind != bus.KindFlush || len(m.Groups) != 0 {
				t.Fatalf("flush batch: %d ops, %d body bytes, message %+v; want alone, kind flush", len(b.Ops), len(b.Body), m)
			}
			if m.Origin != testOrigin {
				t.Fatalf("flush origin %x, want %x", m.Origin, testOrigin)
			}
			continue
		}
		sawKeys = true
		if diff := cmp.Diff([]string{"ns/queued"}, opKeys(b)); diff != "" || m.Kind != bus.KindKeys {
			t.Fatalf("keys batch: kind %d, ops (-want +got):\n%s", m.Kind, diff)
		}
	}
	if !sawFlush || !sawKeys {
		t.Fatalf("saw flush batch %v, keys batch %v; want both, separately", sawFlush, sawKeys)
	}
	for name, r := range map[string]result{"first": first, "keys": keys, "flush": flush} {
		if err := r.wait(t); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if n := len(f.recorded()); n != 3 {
		t.Fatalf("%d batches, want 3", n)
	}
}

// TestPublisherExecErrorReachesEveryCaller proves an ExecFunc error fails
// every caller whose ops were in that batch, wrapped so errors.Is finds it,
// and no caller of another batch.
func TestPublisherExecErrorReachesEveryCaller(t *testing.T) {
	boom := errors.New("redis on fire")
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "first"))
	f.next(t)
	ctxs := make([]*waitingCtx, 3)
	results := make([]result, 3)
	for i := range ctxs {
		ctxs[i] = newWaitingCtx(t.Context())
		results[i] = goPublish(ctxs[i], p, op("ns", fmt.Sprint("k", i)))
	}
	fc := newWaitingCtx(t.Context())
	flush := goFlush(fc, p)
	queued(t, append(ctxs, fc)...)
	f.finish(t, nil)
	if err := first.wait(t); err != nil {
		t.Fatalf("first batch: %v", err)
	}
	for range 2 {
		b := f.next(t)
		if b.Flush {
			f.finish(t, nil)
			continue
		}
		if len(b.Ops) != 3 {
			t.Fatalf("%d ops in the failing batch, want 3", len(b.Ops))
		}
		f.finish(t, boom)
	}
	for i, r := range results {
		if err := r.wait(t); !errors.Is(err, boom) {
			t.Fatalf("caller %d: %v, want an error wrapping %v", i, err, boom)
		}
	}
	if err := flush.wait(t); err != nil {
		t.Fatalf("Flush, in another batch: %v", err)
	}
}

// TestPublisherCancelledCallerIsNotExecuted proves a caller whose ctx ends
// while its ops are queued returns ctx.Err() at once, and its ops are
// dropped from the queue rather than executed.
func TestPublisherCancelledCallerIsNotExecuted(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "first"))
	f.next(t)

	cctx, cancel := context.WithCancel(t.Context())
	cc := newWaitingCtx(cctx)
	gone := goPublish(cc, p, op("ns", "cancelled-1"), op("ns", "cancelled-2"))
	kc := newWaitingCtx(t.Context())
	kept := goPublish(kc, p, op("ns", "kept"))
	queued(t, cc, kc)
	cancel()
	if err := gone.wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v, want context.Canceled", err)
	}
	f.finish(t, nil)
	b := f.next(t)
	f.finish(t, nil)
	if diff := cmp.Diff([]string{"ns/kept"}, opKeys(b)); diff != "" {
		t.Fatalf("next batch (-want +got):\n%s", diff)
	}
	for _, r := range []result{first, kept} {
		if err := r.wait(t); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	for _, b := range f.recorded() {
		for _, k := range opKeys(b) {
			if k == "ns/cancelled-1" || k == "ns/cancelled-2" {
				t.Fatalf("the cancelled caller's op %s was executed", k)
			}
		}
	}
}

// TestPublisherCloseRejectsAndIsIdempotent proves Publish and Flush after
// Close return ErrClosed without executing anything, and that Close can be
// called again, also concurrently.
func TestPublisherCloseRejectsAndIsIdempotent(t *testing.T) {
	f := newFakeExec(false)
	p := newPublisher(t, f, bus.PublisherConfig{})
	if err := p.Publish(t.Context(), op("ns", "before")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	p.Close()
	if err := p.Publish(t.Context(), op("ns", "after")); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	if err := p.Flush(t.Context()); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Flush after Close: %v, want ErrClosed", err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(p.Close)
	}
	wg.Wait()
	if n := len(f.recorded()); n != 1 {
		t.Fatalf("%d batches executed, want 1 (nothing after Close)", n)
	}
}

// TestPublisherCloseCancelsAndWaitsForTheBatchInFlight proves Close cancels
// the ctx of the batch in flight and returns only after its ExecFunc has
// returned, whose caller then gets the ctx error: a batch that a lone
// caller runs itself, and one that the Publisher's goroutine runs for a
// caller with a deadline.
func TestPublisherCloseCancelsAndWaitsForTheBatchInFlight(t *testing.T) {
	t.Run("lone", func(t *testing.T) { testCloseWaitsForTheBatchInFlight(t, t.Context()) })
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*guard)
		defer cancel()
		testCloseWaitsForTheBatchInFlight(t, ctx)
	})
}

func testCloseWaitsForTheBatchInFlight(t *testing.T, ctx context.Context) {
	started := make(chan struct{})
	sawCancel := make(chan struct{})
	letReturn := make(chan struct{})
	exec := func(ctx context.Context, b *bus.Batch) error {
		close(started)
		select {
		case <-ctx.Done():
		case <-time.After(guard):
			return errors.New("exec ctx never cancelled")
		}
		close(sawCancel)
		<-letReturn
		return ctx.Err()
	}
	// A Timeout longer than the "deadline" caller's deadline, so that it
	// hands its batch over.
	p := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: testOrigin, Exec: exec, Timeout: time.Hour})
	t.Cleanup(p.Close)
	inFlight := goPublish(ctx, p, op("ns", "k"))
	select {
	case <-started:
	case <-time.After(guard):
		t.Fatalf("the batch did not start within %v", guard)
	}
	closed := goClose(p)
	select {
	case <-sawCancel:
	case <-time.After(guard):
		t.Fatalf("Close did not cancel the exec ctx within %v", guard)
	}
	closed.pending(t, "Close, while the batch in flight was still executing,")
	close(letReturn)
	_ = closed.wait(t)
	if err := inFlight.wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("in-flight caller: %v, want context.Canceled", err)
	}
}

// TestPublisherTimeoutBoundsExec proves Timeout bounds one ExecFunc call: an
// exec that waits for its ctx fails its callers with DeadlineExceeded, and
// the next batch runs.
func TestPublisherTimeoutBoundsExec(t *testing.T) {
	calls := 0
	exec := func(ctx context.Context, b *bus.Batch) error {
		calls++
		if calls > 1 {
			return nil
		}
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("exec ctx has no deadline")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(guard):
			return errors.New("Timeout not applied")
		}
	}
	p := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: testOrigin, Exec: exec, Timeout: 10 * time.Millisecond})
	t.Cleanup(p.Close)
	if err := p.Publish(t.Context(), op("ns", "slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish: %v, want DeadlineExceeded", err)
	}
	if err := p.Publish(t.Context(), op("ns", "next")); err != nil {
		t.Fatalf("Publish after a timeout: %v", err)
	}
}

// TestPublisherBatchEncodesOpsByNamespace proves a batch hands its ops to
// the ExecFunc in order with their Payload untouched, and that Head + seq +
// Body decode to a keys message from the publisher's Origin listing exactly
// those ops, grouped by namespace in order of first appearance.
func TestPublisherBatchEncodesOpsByNamespace(t *testing.T) {
	f := newFakeExec(false)
	origin := bus.NodeID{0xaa, 0xbb, 15: 0xcc}
	p := newPublisher(t, f, bus.PublisherConfig{Origin: origin})
	payload := &struct{ v int }{7}
	ops := []bus.Op{
		{Namespace: "users", Key: "alice", Payload: payload},
		{Namespace: "orders", Key: "o\x001"},
		{Namespace: "users", Key: "bob"},
		{Namespace: "bin", Key: "\xff\x00"},
		{Namespace: "orders", Key: "o2"},
	}
	if err := p.Publish(t.Context(), ops...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	got := f.recorded()
	if len(got) != 1 {
		t.Fatalf("%d batches, want 1", len(got))
	}
	b := got[0]
	if diff := cmp.Diff(ops, b.Ops, cmp.Comparer(func(a, b *struct{ v int }) bool { return a == b })); diff != "" {
		t.Fatalf("Batch.Ops (-want +got):\n%s", diff)
	}
	if len(b.Head) != bus.HeadLen {
		t.Fatalf("len(Head) = %d, want %d", len(b.Head), bus.HeadLen)
	}
	want := &bus.Message{Kind: bus.KindKeys, Origin: origin, Seq: 1234, Groups: []bus.Group{
		{Namespace: "users", Keys: []string{"alice", "bob"}},
		{Namespace: "orders", Keys: []string{"o\x001", "o2"}},
		{Namespace: "bin", Keys: []string{"\xff\x00"}},
	}}
	if diff := cmp.Diff(want, decodeBatch(t, b, 1234), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("decoded batch (-want +got):\n%s", diff)
	}
}

// mustPublisher is NewPublisher that fails the test on error.
func mustPublisher(t testing.TB, life context.Context, cfg bus.PublisherConfig) *bus.Publisher {
	t.Helper()
	p, err := bus.NewPublisher(life, cfg)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	return p
}

// NewPublisher refuses a config without an Exec func.
func TestNewPublisherNeedsExec(t *testing.T) {
	if _, err := bus.NewPublisher(t.Context(), bus.PublisherConfig{}); err == nil {
		t.Fatal("NewPublisher without Exec succeeded")
	}
}

// A panicking ExecFunc fails its batch's callers instead of crashing.
func TestPublisherExecPanicIsAnError(t *testing.T) {
	p := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: testOrigin, Exec: func(context.Context, *bus.Batch) error {
		panic("exec exploded")
	}})
	t.Cleanup(p.Close)
	if err := p.Publish(t.Context(), op("ns", "k")); err == nil || !strings.Contains(err.Error(), "exec exploded") {
		t.Fatalf("Publish = %v, want the panic as an error", err)
	}
}

// TestPublisherLoneCallerRunsItsOwnBatch proves that a lone caller whose
// ctx outlasts a batch (no deadline, or one past Timeout) runs its batch
// in its own goroutine, and that one whose deadline comes sooner hands it
// to the Publisher's goroutine, so that it can return at its deadline
// while the batch goes on.
func TestPublisherLoneCallerRunsItsOwnBatch(t *testing.T) {
	var (
		mu     sync.Mutex
		stacks []string
	)
	exec := func(ctx context.Context, b *bus.Batch) error {
		buf := make([]byte, 64<<10)
		mu.Lock()
		defer mu.Unlock()
		stacks = append(stacks, string(buf[:runtime.Stack(buf, false)]))
		return nil
	}
	const timeout = time.Hour
	p := mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: testOrigin, Exec: exec, Timeout: timeout})
	t.Cleanup(p.Close)
	if err := p.Publish(t.Context(), op("ns", "no-deadline")); err != nil {
		t.Fatalf("Publish without a deadline: %v", err)
	}
	sooner, cancel := context.WithTimeout(t.Context(), timeout/2)
	defer cancel()
	if err := p.Publish(sooner, op("ns", "sooner")); err != nil {
		t.Fatalf("Publish with a deadline sooner than Timeout: %v", err)
	}
	later, cancel := context.WithTimeout(t.Context(), 2*timeout)
	defer cancel()
	if err := p.Publish(later, op("ns", "later")); err != nil {
		t.Fatalf("Publish with a deadline later than Timeout: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stacks) != 3 {
		t.Fatalf("%d batches, want 3", len(stacks))
	}
	const caller, publisher = "bus.(*Publisher).Publish(", "bus.(*Publisher).run("
	for i, own := range []bool{true, false, true} {
		if got := strings.Contains(stacks[i], caller) && !strings.Contains(stacks[i], publisher); got != own {
			t.Errorf("batch %d ran in its caller's goroutine: %v, want %v:\n%s", i+1, got, own, stacks[i])
		}
	}
}

// TestPublisherOpsQueuedBehindALoneBatchRunNext proves that a batch a lone
// caller runs itself is the one batch in flight: callers that arrive
// meanwhile queue, and are gathered into the next batch once it is done.
func TestPublisherOpsQueuedBehindALoneBatchRunNext(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	lone := goPublish(t.Context(), p, op("ns", "lone"))
	if diff := cmp.Diff([]string{"ns/lone"}, opKeys(f.next(t))); diff != "" {
		t.Fatalf("lone batch (-want +got):\n%s", diff)
	}
	bc, cc := newWaitingCtx(t.Context()), newWaitingCtx(t.Context())
	b := goPublish(bc, p, op("ns", "b"))
	c := goPublish(cc, p, op("ns", "c"))
	queued(t, bc, cc)
	lone.pending(t, "the lone caller (its batch is in flight)")
	f.finish(t, nil)
	if err := lone.wait(t); err != nil {
		t.Fatalf("lone Publish: %v", err)
	}
	// Had either been taken while the lone batch was in flight, this batch
	// would hold it alone.
	got := opKeys(f.next(t))
	sort.Strings(got)
	if diff := cmp.Diff([]string{"ns/b", "ns/c"}, got); diff != "" {
		t.Fatalf("the batch after the lone one (-want +got):\n%s", diff)
	}
	f.finish(t, nil)
	for _, r := range []result{b, c} {
		if err := r.wait(t); err != nil {
			t.Fatalf("queued Publish: %v", err)
		}
	}
	if n := len(f.recorded()); n != 2 {
		t.Fatalf("%d batches, want 2", n)
	}
}

// TestPublisherLoneCallerReturnsItsBatchOutcome proves that a lone caller
// whose ctx is cancelled while it runs its own batch returns that batch's
// outcome: its ops were executed, and it says so.
func TestPublisherLoneCallerReturnsItsBatchOutcome(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	ctx, cancel := context.WithCancel(t.Context())
	r := goPublish(ctx, p, op("ns", "k"))
	f.next(t)
	cancel()
	r.pending(t, "a lone caller whose batch is in flight")
	f.finish(t, nil)
	if err := r.wait(t); err != nil {
		t.Fatalf("Publish: %v, want nil (its batch was executed)", err)
	}
	if err := p.Publish(ctx, op("ns", "after")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with an ended ctx: %v, want context.Canceled", err)
	}
	if n := len(f.recorded()); n != 1 {
		t.Fatalf("%d batches, want 1 (nothing for an ended ctx)", n)
	}
}

// exitingPublisher returns a Publisher whose ExecFunc ends its goroutine
// (runtime.Goexit, as t.Fatal in a hook does) at its first call, and counts
// its calls. Its Timeout is longer than the guard, so that a caller with the
// guard as its deadline hands its batch over.
func exitingPublisher(t *testing.T, calls *atomic.Int32) *bus.Publisher {
	t.Helper()
	exec := func(ctx context.Context, b *bus.Batch) error {
		if calls.Add(1) == 1 {
			runtime.Goexit()
		}
		return nil
	}
	return mustPublisher(t, t.Context(), bus.PublisherConfig{Origin: testOrigin, Exec: exec, Timeout: time.Hour})
}

// TestPublisherExecThatEndsItsGoroutine proves that a batch handed over to
// the Publisher's goroutine, whose ExecFunc ends that goroutine
// (runtime.Goexit, as t.Fatal in a hook does) instead of returning, fails
// its caller at once, and that later batches still run and Close returns.
func TestPublisherExecThatEndsItsGoroutine(t *testing.T) {
	var calls atomic.Int32
	p := exitingPublisher(t, &calls)
	for i, want := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(t.Context(), guard)
		err := p.Publish(ctx, op("ns", fmt.Sprint("handed-over-", i)))
		cancel()
		if ok := err == nil; ok != want || (err != nil && !strings.Contains(err.Error(), "ended its goroutine")) {
			t.Fatalf("Publish %d = %v; want an error only for the batch whose exec ended its goroutine, at once", i, err)
		}
	}
	_ = goClose(p).wait(t)
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d batches executed, want 2", n)
	}
}

// TestPublisherLoneExecThatEndsItsGoroutine proves that a lone batch whose
// ExecFunc ends its goroutine (runtime.Goexit, as t.Fatal in a hook does)
// instead of returning is still finished: later batches run, on either
// path, and Close returns.
func TestPublisherLoneExecThatEndsItsGoroutine(t *testing.T) {
	var calls atomic.Int32
	p := exitingPublisher(t, &calls)
	ended := make(chan bool, 1)
	go func() {
		returned := false
		defer func() { ended <- returned }()
		_ = p.Publish(t.Context(), op("ns", "exits"))
		returned = true
	}()
	select {
	case returned := <-ended:
		if returned {
			t.Fatalf("Publish returned although its exec ended the goroutine")
		}
	case <-time.After(guard):
		t.Fatalf("the lone caller's goroutine did not end within %v", guard)
	}
	// No deadline, so that it may run its own batch; cancelled after the
	// guard, so that a batch never finished fails this test, not hangs it.
	lctx, stop := context.WithCancel(t.Context())
	defer time.AfterFunc(guard, stop).Stop()
	if err := p.Publish(lctx, op("ns", "lone")); err != nil {
		t.Fatalf("lone Publish after the exit: %v", err)
	}
	dctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	if err := p.Publish(dctx, op("ns", "handed-over")); err != nil {
		t.Fatalf("Publish with a deadline after the exit: %v", err)
	}
	_ = goClose(p).wait(t)
	stop()
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d batches executed, want 3", n)
	}
}
