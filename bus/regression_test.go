package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
)

// TestPublisherCloseFailsQueuedOpsWithErrClosed proves Close fails every op
// still queued behind the batch in flight with ErrClosed, and never hands
// it to the ExecFunc after Close.
func TestPublisherCloseFailsQueuedOpsWithErrClosed(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "in-flight"))
	f.next(t)
	qc := newWaitingCtx(t.Context())
	queuedOp := goPublish(qc, p, op("ns", "queued"))
	queued(t, qc)
	closed := goClose(p)
	// The in-flight exec returns when Close cancels its ctx (fakeExec selects on it).
	if err := first.wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("in-flight caller: %v, want context.Canceled", err)
	}
	select {
	case <-closed:
	case b := <-f.started:
		t.Errorf("the queued op was executed after Close: %v", opKeys(b))
	case <-time.After(guard):
		t.Fatalf("Close did not return")
	}
	if err := queuedOp.wait(t); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("queued caller: %v, want ErrClosed", err)
	}
	for _, b := range f.recorded() {
		for _, k := range opKeys(b) {
			if k == "ns/queued" {
				t.Errorf("the op queued at Close was handed to the ExecFunc (with a cancelled ctx)")
			}
		}
	}
}

// TestPublisherCancelledLifeRejectsPublish proves a Publisher whose life
// context ended (without Close) rejects later calls instead of queueing
// them for a goroutine that is gone.
func TestPublisherCancelledLifeRejectsPublish(t *testing.T) {
	life, cancel := context.WithCancel(t.Context())
	f := newFakeExec(false)
	p := mustPublisher(t, life, bus.PublisherConfig{Origin: testOrigin, Exec: f.exec})
	t.Cleanup(p.Close)
	if err := p.Publish(t.Context(), op("ns", "k")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	cancel()
	ctx, stop := context.WithTimeout(t.Context(), 5*time.Second)
	defer stop()
	// Until the run goroutine has seen the cancel a call may still be
	// executed; once one returns ErrClosed, the goroutine is gone and every
	// later call must return ErrClosed too, not wait forever.
	for i := 0; ; i++ {
		err := p.Publish(ctx, op("ns", "after"))
		if errors.Is(err, bus.ErrClosed) {
			break
		}
		if err != nil {
			t.Fatalf("Publish %d after life ended: %v, want ErrClosed", i, err)
		}
	}
	if err := p.Publish(ctx, op("ns", "later")); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Publish after the Publisher stopped: %v, want ErrClosed", err)
	}
	if err := p.Flush(ctx); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Flush after the Publisher stopped: %v, want ErrClosed", err)
	}
}

// TestPublisherInvalidOpFailsOnlyItsCaller proves an invalid op (an empty
// key) fails its own caller, not the other callers gathered into its batch.
func TestPublisherInvalidOpFailsOnlyItsCaller(t *testing.T) {
	f := newFakeExec(true)
	p := newPublisher(t, f, bus.PublisherConfig{})
	first := goPublish(t.Context(), p, op("ns", "first"))
	f.next(t)
	gc, bc := newWaitingCtx(t.Context()), newWaitingCtx(t.Context())
	good := goPublish(gc, p, op("ns", "good"))
	bad := goPublish(bc, p, op("ns", ""))
	queued(t, gc)
	// The bad caller is either refused at once or queued with the good one.
	select {
	case <-bc.waiting:
	case err := <-bad:
		bad <- err
	case <-time.After(guard):
		t.Fatalf("the bad caller neither returned nor queued")
	}
	f.finish(t, nil)
	go func() {
		for {
			select {
			case <-f.started:
				f.release <- nil
			case <-t.Context().Done():
				return
			}
		}
	}()
	if err := first.wait(t); err != nil {
		t.Fatalf("first: %v", err)
	}
	if err := bad.wait(t); err == nil {
		t.Fatalf("an empty key was accepted")
	}
	if err := good.wait(t); err != nil {
		t.Fatalf("a valid op failed because another caller's op was invalid: %v", err)
	}
}

// TestSubscriberErrorReplyKeepsLeaseAlive proves an error reply on the
// subscription's connection (here -BUSY to a lease PING while a script
// runs) does not leave the subscriber without a lease for good: once Redis
// answers again, the lease is renewed.
func TestSubscriberErrorReplyKeepsLeaseAlive(t *testing.T) {
	errs := make(chan error, 16)
	f := startSub(t, subOpts{lease: 400 * time.Millisecond, hooks: &bus.Hooks{AfterReceiveError: func(err error) {
		select {
		case errs <- err:
		default:
		}
	}}})
	f.renewed(t, 0)
	f.srv.Do("CONFIG", "SET", "busy-reply-threshold", "50")
	busy := redis.NewClient(&redis.Options{Addr: f.srv.Addr(), ReadTimeout: -1, MaxRetries: -1})
	t.Cleanup(func() { _ = busy.Close() })
	scriptDone := make(chan error, 1)
	go func() { scriptDone <- busy.Eval(context.Background(), "while true do end", nil).Err() }()
	// Busy: pings are refused; the subscriber drops L1 one way or another
	// (a lapse, or, as it is, a disconnect it infers from the -BUSY reply).
	_, e := f.rec.waitFor(t, f.rec.mark(), "a drop while Redis is busy", func(e event) bool { return e.kind == evDrop })
	t.Logf("while busy: %v", e)
	select {
	case err := <-errs:
		t.Logf("receive error while busy: %v", err)
	default:
	}
	f.srv.Do("SCRIPT", "KILL")
	<-scriptDone
	mark := f.rec.mark()
	back := time.Now()
	f.rec.waitFor(t, mark, "Renew after the script was killed", renewAfter(back))
}
