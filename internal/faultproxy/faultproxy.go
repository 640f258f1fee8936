package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// dialTimeout bounds one dial from the proxy to the target.
	dialTimeout = 5 * time.Second
	// bufSize is the size of one copying goroutine's read buffer, the
	// largest chunk forwarded at once.
	bufSize = 32 << 10
	// acceptBackoff is the pause after an Accept error other than the
	// listener's close (EMFILE and the like), so the loop does not spin.
	acceptBackoff = 5 * time.Millisecond
)

// mode is the fault the proxy currently injects.
type mode int

const (
	modePass mode = iota
	modeDelay
	modeRefuse
	modeBlackhole
)

// Proxy forwards TCP connections from its own 127.0.0.1 port to a target
// address, and injects faults on command. A Proxy is created by [Start]; all
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     *net.TCPListener

	// ctx is the proxy's lifetime; Close cancels it, which aborts dials to
	// the target in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy started

	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	mode  mode
	delay time.Duration // valid in modeDelay
	// changed is closed, and replaced, on every fault change, so that a
	// goroutine holding a chunk (Delay) or a close (Blackhole) re-evaluates
	// at once.
	changed chan struct{}
	// epoch counts Reset and Refuse calls. A connection accepted before
	// one of them but registered after it (its dial to the target was in
	// flight) is reset too: it already existed when the fault was called.
	epoch  uint64
	conns  map[*link]struct{}
	closed bool
}

// link is one proxied connection: the accepted client side and the dialled
// server side.
type link struct {
	p      *Proxy
	client *net.TCPConn
	server *net.TCPConn

	once sync.Once
	dead chan struct{} // closed when the link is shut
	// eofs counts directions that ended with an orderly EOF; when both
	// have, the link is shut.
	eofs atomic.Int32
	// sunk: this connection is blackholed for good (Sink), whatever the
	// proxy's fault.
	sunk atomic.Bool
}

// Start listens on a free 127.0.0.1 port and forwards every connection to
// target, initially without faults. It registers t.Cleanup to Close the
// proxy, and fails the test with t.Fatalf if it can not listen.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// New is Start outside a test, for the simulation's command: it returns
// the error instead of failing a test, and the caller must Close the proxy.
func New(target string) (*Proxy, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}),
		conns:   make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients should dial, "127.0.0.1:PORT".
func (p *Proxy) Addr() string {
	return p.ln.Addr().String()
}

// Pass restores normal forwarding, the default; it ends any fault. Chunks
// held by a Delay are written at once.
func (p *Proxy) Pass() {
	p.setMode(modePass, 0)
}

// Delay holds every chunk forwarded, in both directions, for d before it is
// written, on existing and new connections. A chunk is held for the delay in
// force when its time is up, counted from when it was read: a later Delay,
// Pass or Blackhole applies to chunks already held. Delay with d <= 0 is
// Pass.
func (p *Proxy) Delay(d time.Duration) {
	if d <= 0 {
		p.Pass()
		return
	}
	p.setMode(modeDelay, d)
}

// Refuse makes the proxy behave as if nothing listened: new connections are
// accepted and reset at once, and every existing connection is reset. It
// lasts until Pass, Delay or Blackhole.
func (p *Proxy) Refuse() {
	p.resetAll(modeRefuse)
}

// Reset resets every existing connection now, on both sides (SO_LINGER 0,
// so each peer sees an RST), and ends any fault: new connections pass.
func (p *Proxy) Reset() {
	p.resetAll(modePass)
}

// Blackhole stops forwarding in either direction, on existing and new
// connections, without closing anything: reads on either side hang until the
// fault ends or their own timeout fires. Bytes read meanwhile are dropped,
// not delivered later; a close from either side is held until the fault
// ends.
func (p *Proxy) Blackhole() {
	p.setMode(modeBlackhole, 0)
}

// Sink blackholes every existing connection for good, and only those: new
// connections pass (under the proxy's fault). It is a connection that died
// without either end knowing (a NAT entry or a load balancer's flow
// dropped) while the path to the server still works. Bytes read on a sunk
// connection are dropped, and so is a close from either side; each end
// notices only by its own timeout.
func (p *Proxy) Sink() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.conns {
		l.sunk.Store(true)
	}
}

// Conns returns the current number of proxied connections: pairs of a client
// connection and its connection to the target, not yet closed or reset.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, closes every connection, and waits until every
// goroutine of the proxy has returned. It is idempotent; every call returns
// the error of closing the listener, and a concurrent call also waits.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		links := p.takeLocked()
		p.mu.Unlock()
		p.cancel()
		p.closeErr = p.ln.Close()
		for _, l := range links {
			l.shut(false)
		}
		p.wg.Wait()
	})
	return p.closeErr
}

// setMode switches the fault and wakes every goroutine waiting on the old
// one.
func (p *Proxy) setMode(m mode, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setModeLocked(m, d)
}

func (p *Proxy) setModeLocked(m mode, d time.Duration) {
	p.mode, p.delay = m, d
	close(p.changed)
	p.changed = make(chan struct{})
}

// resetAll switches to m and resets every existing connection.
func (p *Proxy) resetAll(m mode) {
	p.mu.Lock()
	p.setModeLocked(m, 0)
	p.epoch++
	links := p.takeLocked()
	p.mu.Unlock()
	// Shut outside mu: shut calls forget, which takes mu.
	for _, l := range links {
		l.shut(true)
	}
}

// takeLocked removes every link from the table and returns them.
func (p *Proxy) takeLocked() []*link {
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	clear(p.conns)
	return links
}

// state returns the current fault and the channel closed when it changes.
func (p *Proxy) state() (mode, time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.delay, p.changed
}

func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, l)
}

// acceptLoop accepts client connections until the listener is closed.
func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(acceptBackoff):
			}
			continue
		}
		p.mu.Lock()
		closed, m, epoch := p.closed, p.mode, p.epoch
		if !closed && m != modeRefuse {
			// Added under mu with closed false, so before Close's Wait.
			p.wg.Add(1)
		}
		p.mu.Unlock()
		if closed || m == modeRefuse {
			abort(c)
			continue
		}
		go p.handle(c, epoch)
	}
}

// handle dials the target for client c, accepted in epoch, and starts the
// two copying goroutines. A failed dial resets c, as a client of a dead
// server would see.
func (p *Proxy) handle(c *net.TCPConn, epoch uint64) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	sc, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		abort(c)
		return
	}
	s := sc.(*net.TCPConn)
	l := &link{p: p, client: c, server: s, dead: make(chan struct{})}
	p.mu.Lock()
	if p.closed || p.epoch != epoch || p.mode == modeRefuse {
		p.mu.Unlock()
		abort(c)
		abort(s)
		return
	}
	p.conns[l] = struct{}{}
	p.wg.Add(2)
	p.mu.Unlock()
	go p.pipe(l, s, c)
	go p.pipe(l, c, s)
}

// pipe copies src to dst chunk by chunk, applying the fault in force after
// each read.
func (p *Proxy) pipe(l *link, dst, src *net.TCPConn) {
	defer p.wg.Done()
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.forward(dst, buf[:n], time.Now()) {
			l.shut(true)
			return
		}
		if err == nil {
			continue
		}
		// A partition loses FINs and RSTs as well as data: hold the end of
		// the stream until the fault ends, or the link is shut meanwhile.
		if l.sunk.Load() {
			select { // for good: until the link or the proxy is shut
			case <-l.dead:
			case <-l.p.ctx.Done():
			}
			return
		}
		if !l.waitOutBlackhole() {
			return
		}
		if errors.Is(err, io.EOF) {
			// Pass the half close on; the link is done when both
			// directions are.
			_ = dst.CloseWrite()
			if l.eofs.Add(1) == 2 {
				l.shut(false)
			}
			return
		}
		// Our own close (shut) or a reset from the peer: reset the other
		// side too (a no-op if already shut).
		l.shut(true)
		return
	}
}

// forward writes b, read at t0, to dst under the fault in force. It returns
// false if the link must be shut: a write failed, the link or the proxy was
// closed while b was held, or the proxy now refuses.
func (l *link) forward(dst *net.TCPConn, b []byte, t0 time.Time) bool {
	for {
		m, d, changed := l.p.state()
		if l.sunk.Load() {
			return true // dropped
		}
		switch m {
		case modeBlackhole:
			return true // dropped, not delivered later
		case modeRefuse:
			// Refuse shuts every link; this chunk was read just before.
			return false
		case modeDelay:
			wait := d - time.Since(t0)
			if wait <= 0 {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-changed:
				// Re-evaluate under the new fault: Pass writes now,
				// Blackhole drops, another Delay recounts from t0.
				t.Stop()
				continue
			case <-l.dead:
				t.Stop()
				return false
			case <-l.p.ctx.Done():
				t.Stop()
				return false
			}
			continue // re-check: the fault may have changed as the timer fired
		}
		_, err := dst.Write(b)
		return err == nil
	}
}

// waitOutBlackhole blocks while the proxy is blackholed. It returns false if
// the link or the proxy was closed meanwhile.
func (l *link) waitOutBlackhole() bool {
	for {
		m, _, changed := l.p.state()
		if m != modeBlackhole {
			return true
		}
		select {
		case <-changed:
		case <-l.dead:
			return false
		case <-l.p.ctx.Done():
			return false
		}
	}
}

// shut closes both sides of the link once, with SO_LINGER 0 if rst, and
// removes it from the proxy's table.
func (l *link) shut(rst bool) {
	l.once.Do(func() {
		close(l.dead)
		if rst {
			abort(l.client)
			abort(l.server)
		} else {
			_ = l.client.Close()
			_ = l.server.Close()
		}
		l.p.forget(l)
	})
}

// abort closes c with SO_LINGER 0, so the kernel discards unsent data and
// sends an RST instead of a FIN: the peer sees "connection reset by peer".
func abort(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}
