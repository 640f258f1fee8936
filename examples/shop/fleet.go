package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Timeouts of the parent: far beyond what a loaded machine takes.
const (
	startTimeout   = 30 * time.Second // a server process, from exec to serving
	stopTimeout    = 10 * time.Second // a server process, from stdin closed to exit
	requestTimeout = 10 * time.Second // one HTTP request
)

// servers is the size of the fleet.
const servers = 3

// options are the parent's flags.
type options struct {
	DSN        string        // the database; the shop makes a schema of its own in it
	For        time.Duration // how long the load runs
	Readers    int           // concurrent readers
	Writes     int           // writes a second
	Products   int           // rows of the products table
	Categories int           // categories they are spread over
	Lease      time.Duration // the servers' NodeConfig.LeaseTTL
	Seed       uint64        // of the readers' and the writer's choices
	// Log receives the servers' standard error, each line prefixed with
	// the server's number. Default os.Stderr.
	Log io.Writer
	// noTrigger leaves the trigger out, so that nothing tells the fleet of
	// the writer's writes: the negative control of TestShopWithoutTrigger.
	noTrigger bool
}

// shop is the parent's view of a running shop: the schema it made, the
// Redis it started, the server processes, and a client for them.
type shop struct {
	opts   options
	schema string
	db     *sql.DB // the parent's own pool: setup, the writer, cleanup
	redis  *redistest.Server
	procs  []*process
	client *http.Client
	made   bool // the schema may exist: close drops it

	closeOnce sync.Once
	closeErr  error
}

// process is one API server process.
type process struct {
	n        int
	url      string // http://127.0.0.1:port
	listener bool   // it runs the pgnotify Listener
	cmd      *exec.Cmd
	stdin    io.Closer
	exited   chan struct{} // closed when it has exited and been reaped
	err      error         // Wait's, once exited is closed
}

// start makes the shop: a private redis-server, a fresh schema with the
// tables, their rows and the trigger, and the server processes, each
// serving. On error, what it had made is removed.
func start(ctx context.Context, o options) (_ *shop, err error) {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	s := &shop{opts: o, schema: newSchemaName()}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	if s.redis, err = redistest.Launch(); err != nil {
		return nil, err // it says how to install redis-server
	}
	if s.db, err = openDB(o.DSN, s.schema); err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.db.PingContext(pingCtx); err != nil {
		return nil, fmt.Errorf("PostgreSQL did not answer at %s: %w\n%s", o.DSN, err, pgHint)
	}
	s.made = true
	if err := createSchema(ctx, s.db, s.schema, o.Products, o.Categories, !o.noTrigger); err != nil {
		return nil, err
	}
	bin, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program, to start it as the servers: %w", err)
	}
	// Start all of them, then wait for each: they come up together, as a
	// fleet that is deployed does.
	ready := make([]chan string, servers)
	for n := range servers {
		ready[n] = make(chan string, 1)
		p, err := s.launch(bin, n, ready[n])
		if err != nil {
			return nil, err
		}
		s.procs = append(s.procs, p)
	}
	for n, p := range s.procs {
		if err := p.awaitReady(ctx, ready[n]); err != nil {
			return nil, err
		}
	}
	s.client = &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: o.Readers + 2*servers + 2},
		Timeout:   requestTimeout,
	}
	return s, nil
}

// launch starts server n: this program again, with -serve. Server 0 runs
// the pgnotify Listener.
func (s *shop) launch(bin string, n int, ready chan<- string) (*process, error) {
	p := &process{n: n, listener: n == 0, exited: make(chan struct{})}
	args := []string{"-serve", "-db", s.opts.DSN, "-schema", s.schema, "-redis", s.redis.Addr(), "-lease", s.opts.Lease.String()}
	if p.listener {
		args = append(args, "-listen")
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = &firstLine{line: ready}
	p.cmd.Stderr = &prefixed{w: s.opts.Log, prefix: "server " + strconv.Itoa(n) + ": "}
	// The server runs until its standard input ends: when the parent closes
	// it, or dies.
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting server %d: %w", n, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// awaitReady waits for the server's address on its standard output.
func (p *process) awaitReady(ctx context.Context, lines <-chan string) error {
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case line := <-lines:
		var r ready
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Addr == "" {
			return fmt.Errorf("server %d said %q, not its address", p.n, line)
		}
		p.url = "http://" + r.Addr
		return nil
	case <-p.exited:
		return fmt.Errorf("server %d exited before it served (%v); its standard error says why", p.n, p.err)
	case <-t.C:
		return fmt.Errorf("server %d did not serve within %v", p.n, startTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait waits for the server to exit after its standard input was closed,
// killing it if it takes past deadline.
func (p *process) wait(deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("server %d did not stop within %v, killed", p.n, stopTimeout)
	}
	if p.err != nil {
		return fmt.Errorf("server %d: %w", p.n, p.err)
	}
	return nil
}

// close stops the servers, drops the schema and stops Redis: on every way
// out, whatever start got to. It is idempotent.
func (s *shop) close() error {
	s.closeOnce.Do(func() {
		// The client's idle connections first: a server's Shutdown waits
		// for a connection that never carried a request (the Transport
		// dials one now and then that another's return makes needless)
		// for 5 seconds, unless the client closes it.
		if s.client != nil {
			s.client.CloseIdleConnections()
		}
		// Then every server at once: each takes a moment to exit (a
		// second, in a binary built with -race, whose runtime waits that
		// long at exit).
		var errs []error
		for _, p := range s.procs {
			_ = p.stdin.Close()
		}
		deadline := time.Now().Add(stopTimeout)
		for _, p := range s.procs {
			errs = append(errs, p.wait(deadline))
		}
		if s.made {
			// Not the run's context: it may be the one Ctrl-C cancelled.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			errs = append(errs, dropSchema(ctx, s.db, s.schema))
			cancel()
		}
		if s.db != nil {
			errs = append(errs, s.db.Close())
		}
		if s.redis != nil {
			s.redis.Stop()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// firstLine is a server's standard output: it sends the first line on
// line and discards the rest.
type firstLine struct {
	buf  []byte
	line chan<- string
	sent bool
}

func (f *firstLine) Write(b []byte) (int, error) {
	if f.sent {
		return len(b), nil
	}
	f.buf = append(f.buf, b...)
	if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
		f.line <- string(f.buf[:i])
		f.sent, f.buf = true, nil
	}
	return len(b), nil
}

// prefixed writes each whole line written to it to w, after prefix.
type prefixed struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		line := append([]byte(p.prefix), p.buf[:i+1]...)
		p.buf = p.buf[i+1:]
		if _, err := p.w.Write(line); err != nil {
			return len(b), err
		}
	}
}
