package faultproxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestMain fails the package if any test leaves a goroutine running: Close
// must stop every goroutine the proxy started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// guard bounds every wait for something the proxy must make happen. It only
// turns a hang into a failure; no test asserts an upper bound on latency.
const guard = 10 * time.Second

// setup starts a private redis-server and a proxy in front of it.
func setup(t *testing.T) (*redistest.Server, *faultproxy.Proxy) {
	t.Helper()
	srv := redistest.Start(t)
	return srv, faultproxy.Start(t, srv.Addr())
}

// newClient returns a go-redis client of the proxy that never retries, so
// every injected fault shows as an error; it is closed by t.Cleanup.
func newClient(t *testing.T, p *faultproxy.Proxy) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:                  p.Addr(),
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialTimeout:           200 * time.Millisecond,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ctxGuard returns a context that ends after guard.
func ctxGuard(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

func mustPing(t *testing.T, ctx context.Context, c redis.Cmdable) {
	t.Helper()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
}

// waitConns waits until p.Conns() == want: a connection closed by the client
// leaves the proxy's table when the proxy has read the close, which it does
// on its own goroutines.
func waitConns(t *testing.T, p *faultproxy.Proxy, want int) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for p.Conns() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Conns() = %d, want %d", p.Conns(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// isTimeout reports whether err is a deadline error: the context's own, or
// the socket deadline go-redis derives from it.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestPass(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)

	if got := p.Conns(); got != 0 {
		t.Fatalf("Conns() before any client = %d, want 0", got)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want \"v\", nil", got, err)
	}
	// The reply passed through the proxy, so the connection was registered
	// before it: no wait is needed here.
	if got := p.Conns(); got != 1 {
		t.Fatalf("Conns() with one pooled connection = %d, want 1", got)
	}

	c2 := newClient(t, p)
	mustPing(t, ctx, c2)
	if got := p.Conns(); got != 2 {
		t.Fatalf("Conns() with two clients = %d, want 2", got)
	}
	if err := c2.Close(); err != nil {
		t.Fatalf("closing the second client: %v", err)
	}
	waitConns(t, p, 1)
}

// A large value crosses the proxy in many chunks, both ways, intact.
func TestPassLargeValue(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if err := c.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	got, err := c.Get(ctx, "big").Bytes()
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	if string(got) != string(big) {
		t.Fatalf("GET returned %d bytes that differ from the %d written", len(got), len(big))
	}
}

func TestDelay(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	mustPing(t, ctx, c) // dial outside the measurement

	const d = 50 * time.Millisecond
	p.Delay(d)
	start := time.Now()
	mustPing(t, ctx, c)
	if took := time.Since(start); took < d {
		t.Fatalf("PING under Delay(%v) took %v, want at least %v", d, took, d)
	}

	p.Pass()
	mustPing(t, ctx, c)
}

// A chunk held by a long Delay is released when the delay ends, instead of
// waiting out the old delay. Whether Pass comes while the request is held or
// before it is read, the PING must complete; guard only catches a hang.
func TestDelayReleasedByPass(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	mustPing(t, ctx, c)

	p.Delay(time.Hour)
	errc := make(chan error, 1)
	go func() { errc <- c.Ping(ctx).Err() }()
	p.Pass()
	if err := <-errc; err != nil {
		t.Fatalf("PING after Delay(1h) then Pass: %v", err)
	}
}

func TestRefuse(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	mustPing(t, ctx, c)

	p.Refuse()
	if got := p.Conns(); got != 0 {
		t.Fatalf("Conns() after Refuse = %d, want 0", got)
	}
	// The pooled connection was reset; a new one is reset on accept.
	// Either way the command fails.
	for i := range 2 {
		if err := c.Ping(ctx).Err(); err == nil {
			t.Fatalf("PING %d under Refuse succeeded", i)
		}
	}
	// A raw client sees the reset on connect, if it arrives before the
	// dial returns, or else on its first read.
	raw, err := net.DialTimeout("tcp", p.Addr(), guard)
	if err == nil {
		defer raw.Close()
		_ = raw.SetReadDeadline(time.Now().Add(guard))
		_, err = raw.Read(make([]byte, 1))
	}
	if err == nil || isTimeout(err) {
		t.Fatalf("dial and read under Refuse: %v, want a reset", err)
	}

	p.Pass()
	mustPing(t, ctx, c)
}

func TestReset(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	// A dedicated connection: the pool would health-check (and silently
	// replace) a reset idle connection on Get, hiding the error.
	cn := c.Conn()
	t.Cleanup(func() { _ = cn.Close() })
	mustPing(t, ctx, cn)
	mustPing(t, ctx, c)
	if got := p.Conns(); got != 2 {
		t.Fatalf("Conns() = %d, want 2", got)
	}

	p.Reset()
	if got := p.Conns(); got != 0 {
		t.Fatalf("Conns() after Reset = %d, want 0", got)
	}
	if err := cn.Ping(ctx).Err(); err == nil {
		t.Fatal("PING on a reset connection succeeded")
	}
	// The pooled connection is either found dead by the pool's health check
	// and replaced, or fails once; after that the client works again.
	_ = c.Ping(ctx).Err()
	mustPing(t, ctx, c)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET after Reset: %v", err)
	}
}

func TestBlackhole(t *testing.T) {
	srv, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	mustPing(t, ctx, c)

	p.Blackhole()
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := c.Set(short, "lost", "v", 0).Err()
	cancel()
	if !isTimeout(err) {
		t.Fatalf("SET under Blackhole: %v, want a deadline error", err)
	}
	if got := p.Conns(); got != 1 {
		t.Fatalf("Conns() under Blackhole = %d, want 1: nothing is closed", got)
	}

	p.Pass()
	// go-redis discarded the timed-out connection; this dials a new one.
	mustPing(t, ctx, c)
	// The SET was dropped, not delivered after the fault.
	if v := srv.Do("GET", "lost"); v != nil {
		t.Fatalf("GET lost = %v, want nil: bytes sent under Blackhole were delivered", v)
	}
}

// Under Blackhole nothing reaches the other side, on a new connection too,
// and bytes sent meanwhile are not delivered later.
func TestBlackholeRaw(t *testing.T) {
	_, p := setup(t)
	p.Blackhole()
	raw, err := net.DialTimeout("tcp", p.Addr(), guard)
	if err != nil {
		t.Fatalf("dial under Blackhole: %v", err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("PING\r\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := raw.Read(make([]byte, 64)); !isTimeout(err) {
		t.Fatalf("read under Blackhole: %v, want a timeout", err)
	}

	p.Pass()
	// The first PING was dropped: the only reply is to this one.
	if _, err := raw.Write([]byte("ECHO after\r\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(guard))
	want := "$5\r\nafter\r\n"
	got := make([]byte, 0, len(want))
	buf := make([]byte, 64)
	for len(got) < len(want) {
		n, err := raw.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read after Pass: %q, %v", got, err)
		}
	}
	if string(got) != want {
		t.Fatalf("reply after Pass = %q, want %q (the PING sent under Blackhole must be dropped)", got, want)
	}
}

// A client's close during Blackhole is held back, and passed on when the
// fault ends.
func TestBlackholeHoldsClose(t *testing.T) {
	_, p := setup(t)
	raw, err := net.DialTimeout("tcp", p.Addr(), guard)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	waitConns(t, p, 1)
	p.Blackhole()
	_ = raw.Close()
	// No wait can prove a negative; the check after Pass is the point.
	if got := p.Conns(); got != 1 {
		t.Fatalf("Conns() right after a close under Blackhole = %d, want 1", got)
	}
	p.Pass()
	waitConns(t, p, 0)
}

func TestPubSubReset(t *testing.T) {
	srv, p := setup(t)
	ctx := ctxGuard(t)
	c := newClient(t, p)
	ps := c.Subscribe(ctx, "ch")
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(ctx); err != nil { // the subscribe confirmation
		t.Fatalf("first Receive: %v", err)
	}

	errc := make(chan error, 1)
	go func() {
		_, err := ps.Receive(ctx)
		errc <- err
	}()
	p.Reset()
	if err := <-errc; err == nil {
		t.Fatal("Receive after Reset succeeded")
	} else if isTimeout(err) {
		t.Fatalf("Receive after Reset: %v, want a reset, not the guard timeout", err)
	}

	// The next Receive reconnects and resubscribes.
	msg, err := ps.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive after the reset: %v", err)
	}
	if sub, ok := msg.(*redis.Subscription); !ok || sub.Kind != "subscribe" {
		t.Fatalf("Receive after the reset = %#v, want the subscribe confirmation", msg)
	}
	srv.Do("PUBLISH", "ch", "hello")
	msg, err = ps.Receive(ctx)
	if m, ok := msg.(*redis.Message); err != nil || !ok || m.Payload != "hello" {
		t.Fatalf("Receive = %#v, %v; want the message \"hello\"", msg, err)
	}
}

func TestCloseIdempotent(t *testing.T) {
	srv := redistest.Start(t)
	before := goleak.IgnoreCurrent()
	ctx := ctxGuard(t)
	p := faultproxy.Start(t, srv.Addr())
	c := newClient(t, p)
	cn := c.Conn()
	mustPing(t, ctx, cn)

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := p.Conns(); got != 0 {
		t.Fatalf("Conns() after Close = %d, want 0", got)
	}
	if err := cn.Ping(ctx).Err(); err == nil {
		t.Fatal("PING through a closed proxy succeeded")
	}
	// Concurrent and repeated calls all return, with the same result.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := p.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
	wg.Wait()
	// Every mode change after Close is harmless.
	p.Delay(time.Millisecond)
	p.Refuse()
	p.Reset()
	p.Blackhole()
	p.Pass()

	_ = cn.Close()
	_ = c.Close()
	goleak.VerifyNone(t, before)
}

// Faults flip while clients work; run under -race this checks the proxy's
// locking. Commands may fail under a fault; the client must work once the
// faults stop.
func TestConcurrentFaults(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	// Two go-redis mechanisms would outlive the test or the faults:
	//   - it dials on a goroutine of its own that outlives the caller's
	//     timeout and the client's Close; without retries (and their 100ms
	//     backoffs) it ends with the test instead of after goleak looks;
	//   - after PoolSize failed dials it stops dialling (returns the last
	//     dial error) until a probe goroutine succeeds, once a second;
	//     Refuse makes dials fail, so PoolSize is above the number of
	//     commands the workers send.
	c := redis.NewClient(&redis.Options{
		Addr:                  p.Addr(),
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialTimeout:           200 * time.Millisecond,
		DialerRetries:         1,
		PoolSize:              1000,
	})
	t.Cleanup(func() { _ = c.Close() })
	mustPing(t, ctx, c)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
				_ = c.Set(short, fmt.Sprintf("k%d", w), i, 0).Err()
				cancel()
				_ = p.Conns()
			}
		})
	}
	done := make(chan struct{})
	flipped := make(chan struct{})
	go func() {
		defer close(flipped)
		faults := []func(){
			func() { p.Delay(time.Millisecond) },
			p.Blackhole,
			p.Reset,
			p.Pass,
			p.Refuse,
		}
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			faults[i%len(faults)]()
			runtime.Gosched()
		}
	}()
	wg.Wait()
	close(done)
	<-flipped
	p.Pass()
	mustPing(t, ctx, c)
}

// Sink blackholes the connections open now, for good, and no later one:
// a client holding one connection times out on it; a second client's new
// connection answers.
func TestSink(t *testing.T) {
	_, p := setup(t)
	ctx := ctxGuard(t)
	old := newClient(t, p)
	mustPing(t, ctx, old) // its one connection is open
	waitConns(t, p, 1)
	p.Sink()
	mustPing(t, ctx, newClient(t, p))
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := old.Ping(short).Err(); !isTimeout(err) {
		t.Fatalf("PING on a sunk connection = %v; want a timeout", err)
	}
}
