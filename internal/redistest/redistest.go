package redistest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// installHint is included in the failure message when redis-server is missing.
	installHint = "apt-get install -y redis-server"

	// startAttempts is how many free ports Start tries before giving up.
	startAttempts = 5
	// readyTimeout bounds how long a launch waits for the server to answer PING.
	readyTimeout = 10 * time.Second
	// readyPollInterval is the pause between two readiness probes.
	readyPollInterval = 5 * time.Millisecond
	// probeTimeout bounds one readiness probe (dial plus round trip).
	probeTimeout = 250 * time.Millisecond

	// clientTimeout is the dial, read and write timeout of the clients this
	// package creates.
	clientTimeout = 2 * time.Second

	logName    = "redis.log"
	stdioName  = "redis-server.stdio.log"
	tailBytes  = 4096
	tailMaxLns = 30
)

// Server is one private redis-server process owned by a test.
//
// A Server is created by [Start], or as a member of a deployment by
// [StartCluster] and [StartSentinel], and stopped automatically when the test
// that started it finishes. All methods are safe for concurrent use.
type Server struct {
	t       testing.TB
	bin     string
	conf    string   // config file passed as the first argument; "" for none
	extra   []string // appended to the standard arguments
	bus     bool     // a cluster member: it also needs a cluster bus port
	dir     string
	logPath string
	ioPath  string
	port    int // fixed once Start returns
	busPort int // --cluster-port of a cluster member, 0 otherwise; fixed like port

	mu     sync.Mutex
	proc   *process // nil when not running
	closed bool     // set by cleanup; no further launches
}

// process is one running redis-server and the goroutine reaping it.
type process struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd.Wait has returned
	waitErr error         // valid after done is closed
}

// alive reports whether the process has not exited yet.
func (p *process) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill SIGKILLs the process (a stopped process is killed too) and waits until
// it has been reaped.
func (p *process) kill() {
	_ = p.cmd.Process.Kill() // error only if it already exited
	<-p.done
}

// Start launches a fresh redis-server on a free 127.0.0.1 port, waits until it
// answers PING, and registers t.Cleanup to stop it (with SIGKILL) and reap the
// process.
//
// The server runs with persistence disabled, its working directory and log
// file in t.TempDir(), and args appended to its command line (for example
// "--maxmemory", "1mb"). If the chosen port turns out to be taken, Start
// retries with a new one a few times.
//
// If redis-server is not on PATH, or the server does not come up, Start calls
// t.Fatalf; the message for a missing binary includes the install command
// "apt-get install -y redis-server". Start never calls t.Skip.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return start(t, kind{args: args})
}

// kind says how a server differs from a plain one: a cluster member and a
// sentinel are launched, watched, killed and restarted by the same code as
// the server [Start] returns.
type kind struct {
	// args are appended to the standard arguments, last.
	args []string
	// setup, if not nil, runs once in the server's directory before the
	// first launch; it returns a config file to pass as the first argument
	// ("" for none) and more arguments, which go before args.
	setup func(dir string) (conf string, args []string, err error)
	// bus asks for a second free port, the cluster bus port (--cluster-port).
	bus bool
}

// start is Start for any kind of server.
func start(t testing.TB, k kind) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server not found on PATH (%v); these tests need a private Redis, install it with: %s", err, installHint)
	}
	s := newServer(bin, t.TempDir(), k)
	s.t = t
	// Registered before the first launch so a Fatalf below still reaps.
	t.Cleanup(s.cleanup)
	if err := s.launchKind(k); err != nil {
		t.Fatal(err)
	}
	return s
}

// newServer returns a server of kind k, not yet launched, that runs bin in
// dir.
func newServer(bin, dir string, k kind) *Server {
	return &Server{
		bin:     bin,
		bus:     k.bus,
		dir:     dir,
		logPath: filepath.Join(dir, logName),
		ioPath:  filepath.Join(dir, stdioName),
	}
}

// launchKind prepares the server's directory and arguments as k says and
// launches it for the first time.
func (s *Server) launchKind(k kind) error {
	if k.setup != nil {
		conf, args, err := k.setup(s.dir)
		if err != nil {
			return fmt.Errorf("redistest: preparing redis-server in %s: %w", s.dir, err)
		}
		s.conf = conf
		s.extra = args
	}
	// The caller's arguments come last, so they win over the kind's.
	s.extra = append(s.extra, k.args...)
	if err := s.launchFirst(); err != nil {
		return fmt.Errorf("redistest: starting redis-server failed: %w", err)
	}
	return nil
}

// StartForMain starts a server outside any test, for TestMain and the
// Example functions that run under it, where no testing.TB exists. It
// returns the server's address and a stop function that kills it and
// removes its directory; the caller must call stop before the process
// exits. Errors name the install command when redis-server is missing.
func StartForMain(args ...string) (addr string, stop func(), err error) {
	s, err := Launch(args...)
	if err != nil {
		return "", nil, err
	}
	return s.Addr(), s.Stop, nil
}

// Launch is Start outside any test, for the simulation's command: it
// returns errors instead of failing a test, and the caller must call
// [Server.Stop] before the process exits. Use [Server.Relaunch], not
// Restart, Pause, Resume, Flush or Do, on such a Server: those report
// through a test.
func Launch(args ...string) (*Server, error) {
	return launch(kind{args: args})
}

// launch is Launch for any kind of server.
func launch(k kind) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redistest: redis-server not found on PATH (%w); install it with: %s", err, installHint)
	}
	dir, err := os.MkdirTemp("", "redistest-main-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	s := newServer(bin, dir, k)
	if err := s.launchKind(k); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// launchFirst launches the server on a free port (and a free cluster bus
// port, for a cluster member) and fixes the ports for later restarts. If the
// server exits at once, as it does when a port turned out to be taken, it
// tries new ports a few times.
func (s *Server) launchFirst() error {
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, busPort, err := s.freePorts()
		if err != nil {
			return fmt.Errorf("finding a free port: %w", err)
		}
		s.mu.Lock()
		exited, err := s.launchLocked(port, busPort)
		if err == nil {
			s.port, s.busPort = port, busPort
		}
		s.mu.Unlock()
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("attempt %d on port %d: %w", attempt, port, err)
		if !exited {
			break // a hung server will not do better on another port
		}
	}
	return lastErr
}

// freePorts returns a free port and, for a cluster member, a second one for
// the cluster bus (0 otherwise).
func (s *Server) freePorts() (port, busPort int, err error) {
	if port, err = freePort(); err != nil || !s.bus {
		return port, 0, err
	}
	for busPort == 0 || busPort == port {
		if busPort, err = freePort(); err != nil {
			return 0, 0, err
		}
	}
	return port, busPort, nil
}

// Stop kills a server started by [Launch] for good and removes its
// directory. It is idempotent.
func (s *Server) Stop() {
	s.cleanup()
	_ = os.RemoveAll(s.dir)
}

// Addr returns the server address, "127.0.0.1:PORT".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Port returns the TCP port the server listens on. It does not change across
// [Server.Restart].
func (s *Server) Port() int {
	return s.port
}

// Client returns a new go-redis client for this server, closed automatically
// by t.Cleanup. It uses the go-redis default options except for a 2s dial,
// read and write timeout, and context deadlines honoured on connections. Like any go-redis client it reconnects on its own
// after [Server.Kill] and [Server.Restart].
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:         s.Addr(),
		DialTimeout:  clientTimeout,
		ReadTimeout:  clientTimeout,
		WriteTimeout: clientTimeout,
		// Honour context deadlines on a stuck connection, as a client given
		// to tiercache should (see tier.NodeConfig.RedisTimeout).
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill SIGKILLs the server process and waits until it has exited and been
// reaped. The port stays reserved for [Server.Restart]. Killing a server that
// is not running is a no-op.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Restart kills the server if it is running, then starts it again on the same
// port (and, for a cluster member, the same cluster bus port) with the same
// arguments and waits until it answers PING. There is no
// persistence, so all data is gone afterwards. Clients created by
// [Server.Client] keep working: go-redis redials on a later command (the
// first command after the restart may fail).
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Relaunch(); err != nil {
		s.t.Fatalf("%v", err)
	}
}

// Relaunch is Restart returning its error instead of failing a test.
func (s *Server) Relaunch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("redistest: restart after the server was stopped")
	}
	s.killLocked()
	if _, err := s.launchLocked(s.port, s.busPort); err != nil {
		return fmt.Errorf("redistest: restarting redis-server on port %d failed: %w", s.port, err)
	}
	return nil
}

// Pause stops the server process with SIGSTOP. The kernel still accepts
// connections, but every command hangs until [Server.Resume] (or until the
// client's timeout fires).
func (s *Server) Pause() {
	s.t.Helper()
	s.signal("Pause", syscall.SIGSTOP)
}

// Resume continues a server stopped by [Server.Pause] with SIGCONT.
func (s *Server) Resume() {
	s.t.Helper()
	s.signal("Resume", syscall.SIGCONT)
}

// Flush removes all keys from all databases with FLUSHALL, using a temporary
// client.
func (s *Server) Flush() {
	s.t.Helper()
	s.Do("FLUSHALL")
}

// Do runs one command on a temporary client (no retries, 2s timeouts) and
// returns its reply, as go-redis's Do would. A redis.Nil reply is returned as
// nil; any other error fails the test with t.Fatalf. It is handy for things
// like CONFIG SET or CLIENT KILL (CLIENT KILL TYPE pubsub ends every
// subscriber's connection, SSUBSCRIBE ones included). It works on a cluster
// member, for keys of the slots that member serves, and on a sentinel. The
// client speaks RESP3, so map replies (e.g. CONFIG GET) come back as
// map[any]any.
func (s *Server) Do(args ...any) any {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{
		Addr:         s.Addr(),
		DialTimeout:  clientTimeout,
		ReadTimeout:  clientTimeout,
		WriteTimeout: clientTimeout,
		MaxRetries:   -1,
	})
	defer func() { _ = c.Close() }()
	v, err := c.Do(context.Background(), args...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		s.t.Fatalf("redistest: %v on %s: %v", args, s.Addr(), err)
	}
	return v
}

// Stats reads the server's INFO cpu and commandstats (see ReadStats). It
// fails the test if the server does not answer or INFO cannot be parsed.
func (s *Server) Stats() Stats {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), DialTimeout: clientTimeout, ReadTimeout: clientTimeout, WriteTimeout: clientTimeout, MaxRetries: -1})
	defer func() { _ = c.Close() }()
	st, err := ReadStats(context.Background(), c)
	if err != nil {
		s.t.Fatalf("redistest: %v", err)
	}
	return st
}

// signal sends sig to the running server process.
func (s *Server) signal(op string, sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	p := s.proc
	var err error
	if p == nil || !p.alive() {
		err = errors.New("server is not running")
	} else {
		err = p.cmd.Process.Signal(sig)
	}
	s.mu.Unlock()
	if err != nil {
		s.t.Fatalf("redistest: %s on %s: %v", op, s.Addr(), err)
	}
}

// cleanup kills the server for good; registered with t.Cleanup by Start.
func (s *Server) cleanup() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.killLocked()
}

// killLocked kills and reaps the current process, if any. s.mu must be held.
func (s *Server) killLocked() {
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
}

// launchLocked starts redis-server on port (and, for a cluster member, its
// bus on busPort) and waits until it is ready.
// On failure no process is left running; exited reports whether the server
// exited on its own (for example because the port was taken), as opposed to
// not becoming ready in time. s.mu must be held.
func (s *Server) launchLocked(port, busPort int) (exited bool, err error) {
	if s.closed {
		return false, errors.New("server already cleaned up")
	}
	logOff := fileSize(s.logPath)
	ioOff := fileSize(s.ioPath)
	withTails := func(err error) error {
		return fmt.Errorf("%w\n--- tail of %s ---\n%s--- tail of %s ---\n%s",
			err, s.logPath, tail(s.logPath, logOff, tailMaxLns), s.ioPath, tail(s.ioPath, ioOff, tailMaxLns))
	}

	stdio, err := os.OpenFile(s.ioPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, err
	}
	var args []string
	if s.conf != "" {
		args = append(args, s.conf) // redis-server wants it first
	}
	args = append(args,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--logfile", s.logPath,
	)
	if busPort != 0 {
		args = append(args, "--cluster-port", strconv.Itoa(busPort))
	}
	args = append(args, s.extra...)
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	// *os.File outputs are handed to the child directly: no copying goroutines.
	cmd.Stdout = stdio
	cmd.Stderr = stdio
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	_ = stdio.Close()
	if err != nil {
		return false, fmt.Errorf("exec %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()

	if err := waitReady(p, port); err != nil {
		exited := !p.alive()
		p.kill()
		return exited, withTails(err)
	}
	s.proc = p
	return false, nil
}

// waitReady polls the server on port until it answers PING and reports the
// pid of p, p exits, or readyTimeout passes.
func waitReady(p *process, port int) error {
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(readyTimeout)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("redis-server (pid %d) exited before becoming ready: %v", pid, p.waitErr)
		case <-timer.C:
		}
		if lastErr = probe(port, pid); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server (pid %d) not ready on port %d after %v: %v", pid, port, readyTimeout, lastErr)
		}
		timer.Reset(readyPollInterval)
	}
}

// probe sends PING and INFO server over a short-lived raw connection and
// checks that the answer comes from process pid, so that a foreign server that
// grabbed the port in the meantime is not mistaken for ours.
func probe(port, pid int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conn, err := net.DialTimeout("tcp", addr, probeTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(probeTimeout)); err != nil {
		return err
	}
	const req = "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	line, err = br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "$") {
		return fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return err
	}
	if !bytes.Contains(body, []byte("\nprocess_id:"+strconv.Itoa(pid)+"\r\n")) {
		return fmt.Errorf("port %d is served by another process, not pid %d", port, pid)
	}
	return nil
}

// freePort asks the kernel for a free loopback port. The port is released
// again before redis-server binds it; Start retries if that race is lost.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// fileSize returns the size of path, or 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tail returns the last lines (at most maxLines) written to path after
// offset, for error messages.
func tail(path string, offset int64, maxLines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	defer func() { _ = f.Close() }()
	size := fileSize(path)
	if size-offset > tailBytes {
		offset = size - tailBytes
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	out := strings.Join(lines, "")
	if out == "" {
		return "(empty)\n"
	}
	if !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return out
}

// Drain subscribes through rdb to channel and reads every message until
// tb's cleanup: the subscriber a node would be, for a benchmark whose
// PUBLISHes must be delivered to one. It returns once the server has
// confirmed the subscription, so that every message published afterwards
// reaches it.
func Drain(tb testing.TB, rdb *redis.Client, channel string) {
	tb.Helper()
	ps := rdb.Subscribe(context.Background(), channel)
	if _, err := ps.Receive(context.Background()); err != nil {
		_ = ps.Close()
		tb.Fatalf("redistest: SUBSCRIBE %s: %v", channel, err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range ps.Channel() {
		}
	}()
	tb.Cleanup(func() {
		_ = ps.Close()
		<-drained
	})
}
