//go:build linux

package tier_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/l1"
	"github.com/tiercache/tiercache/tier"
)

// pauseChildEnv, when set to a Redis address, makes the test binary run as
// the child node of TestRace_R40_PausedProcess instead of running tests.
const pauseChildEnv = "TIERCACHE_PAUSE_CHILD"

func init() {
	if addr := os.Getenv(pauseChildEnv); addr != "" {
		os.Exit(runPauseChild(addr, os.Getenv(pauseChildEnv+"_COARSE") != ""))
	}
}

// pauseLease is the LeaseTTL of the nodes of TestRace_R40_PausedProcess.
const pauseLease = 100 * time.Millisecond

// R40: a process paused (SIGSTOP) while another node invalidates, then
// resumed (SIGCONT), never serves from L1 what was invalidated more than
// LeaseTTL before a read that begins after it resumed, however long the
// pause. The node runs in a child OS process, the test binary run again;
// the read is requested while the child is stopped, so it runs the moment
// the child resumes, racing every goroutine of the child's, the ticker of
// L1's coarse clock included. Twenty pauses, each twice the lease.
func TestRace_R40_PausedProcess(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	const srcKey = "r40:source"
	if err := f.rdb.Set(ctx, srcKey, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	writer := f.node(tier.NodeConfig{LeaseTTL: pauseLease}, nil)
	w, err := tier.New(writer, tier.Config[string, int]{Namespace: ns, Fetch: func(ctx context.Context, _ string) (int, error) {
		return f.rdb.Get(ctx, srcKey).Int()
	}})
	if err != nil {
		t.Fatal(err)
	}

	child := startPauseChild(t, f.srv.Addr(), false)
	for i := range 20 {
		// The child holds the current version in its L1.
		// Once it resumed, its lease is renewed within a few pings; until
		// then reads go to Redis.
		v, src := child.get(t)
		for deadline := time.Now().Add(guard); src != tier.SourceL1 && time.Now().Before(deadline); {
			child.wait(t)
			v, src = child.get(t)
		}
		if src != tier.SourceL1 || v != i+1 {
			t.Fatalf("pause %d: the child read version %d from %v; want %d from L1", i, v, src, i+1)
		}
		child.signal(t, syscall.SIGSTOP)
		if err := f.rdb.Incr(ctx, srcKey).Err(); err != nil {
			t.Fatal(err)
		}
		if err := w.Invalidate(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		// The pause itself: twice the lease of wall-clock time while the
		// child is stopped. Nothing waits for anything to settle here.
		time.Sleep(2 * pauseLease)
		child.request(t, "get") // read at once on resuming
		child.signal(t, syscall.SIGCONT)
		v, src = child.answer(t)
		if v != i+2 {
			t.Fatalf("pause %d: the resumed child served version %d from %v, invalidated %v before it resumed; want %d", i, v, src, 2*pauseLease, i+2)
		}
	}
}

// pauseChild is the child node process of TestRace_R40_PausedProcess, spoken
// to line by line over its standard input and output.
type pauseChild struct {
	cmd *exec.Cmd
	in  io.Writer
	out *bufio.Scanner
}

func startPauseChild(t *testing.T, addr string, coarse bool) *pauseChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pauseChildEnv+"="+addr)
	if coarse {
		cmd.Env = append(cmd.Env, pauseChildEnv+"_COARSE=1")
	}
	cmd.Stderr = os.Stderr
	// Killed with the test binary, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &pauseChild{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = in.Close() // the child exits at the end of its input
		_ = cmd.Wait()
	})
	if line := c.line(t); line != "ready" {
		t.Fatalf("child said %q", line)
	}
	return c
}

func (c *pauseChild) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

func (c *pauseChild) request(t *testing.T, req string) {
	t.Helper()
	if _, err := io.WriteString(c.in, req+"\n"); err != nil {
		t.Fatalf("to the child: %v", err)
	}
}

func (c *pauseChild) line(t *testing.T) string {
	t.Helper()
	got := make(chan bool, 1)
	go func() { got <- c.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("the child closed its output: %v", c.out.Err())
		}
		return c.out.Text()
	case <-time.After(guard):
		t.Fatal("the child did not answer")
		return ""
	}
}

// answer reads the child's answer to a get: the version and its tier.
func (c *pauseChild) answer(t *testing.T) (int, tier.Source) {
	t.Helper()
	line := c.line(t)
	vs, src, ok := strings.Cut(line, " ")
	v, err := strconv.Atoi(vs)
	if !ok || err != nil {
		t.Fatalf("the child answered %q", line)
	}
	for _, s := range []tier.Source{tier.SourceL1, tier.SourceL2, tier.SourceFetch, tier.SourceUncached} {
		if s.String() == src {
			return v, s
		}
	}
	t.Fatalf("the child answered from %q", src)
	return 0, 0
}

func (c *pauseChild) get(t *testing.T) (int, tier.Source) {
	t.Helper()
	c.request(t, "get")
	return c.answer(t)
}

// wait has the child wait until its L1 applied every buffered fill.
func (c *pauseChild) wait(t *testing.T) {
	t.Helper()
	c.request(t, "wait")
	if line := c.line(t); line != "ok" {
		t.Fatalf("the child answered %q", line)
	}
}

// runPauseChild is the child's main: one node on the Redis at addr, one
// cache whose source is a counter in that Redis; "get" reads key "k" and
// answers its version and tier, "wait" waits for L1's buffered fills. With
// coarse, L1 checks its lease on its coarse clock (the negative control).
func runPauseChild(addr string, coarse bool) int {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer func() { _ = rdb.Close() }()
	var hk *hooks.Points
	if coarse {
		hk = &hooks.Points{L1: &l1.Hooks{CoarseLease: true}}
	}
	// Its lease lapses at every pause, and it would say so on stderr.
	quiet := slog.New(slog.DiscardHandler)
	n, err := tier.NewNodeWithHooks(ctx, rdb, tier.NodeConfig{LeaseTTL: pauseLease, L1MaxBytes: 1 << 20, Logger: quiet}, hk)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer func() { _ = n.Close() }()
	c, err := tier.New(n, tier.Config[string, int]{Namespace: ns, Fetch: func(ctx context.Context, _ string) (int, error) {
		return rdb.Get(ctx, "r40:source").Int()
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "get":
			var ri tier.ReadInfo
			v, err := c.Get(ctx, "k", tier.Info(&ri))
			if err != nil {
				fmt.Fprintln(os.Stderr, "child get:", err)
				return 1
			}
			fmt.Println(v, ri.Source)
		case "wait":
			tier.WaitL1(n)
			fmt.Println("ok")
		}
	}
	return 0
}
