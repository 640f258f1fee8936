package tier_test

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tiercache/tiercache/internal/hooks"
	"github.com/tiercache/tiercache/tier"
)

// goroutineID returns the ID of the calling goroutine, from the first line
// of its stack ("goroutine 18 [running]:").
func goroutineID() string {
	var b [64]byte
	fields := strings.Fields(string(b[:runtime.Stack(b[:], false)]))
	if len(fields) < 2 {
		return ""
	}
	return fields[1]
}

// flightCallers are a flight's two kinds of caller: one whose ctx cannot be
// cancelled, which runs the load in its own goroutine, and one whose can.
var flightCallers = []struct {
	name string
	ctx  func() (context.Context, context.CancelFunc)
}{
	{"Background", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }},
	{"WithCancel", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }},
}

// A Get whose ctx can never be cancelled runs its flight's load in its own
// goroutine; one whose ctx can be cancelled leaves it to another, so that
// its cancellation returns it alone (TestCancelledWaiter).
func TestFlight_LoadRunsInACallerThatCannotLeave(t *testing.T) {
	f := newFleet(t)
	n := f.node(tier.NodeConfig{}, nil)
	var fetchedIn atomic.Value
	c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: func(context.Context, string) (string, error) {
		fetchedIn.Store(goroutineID())
		return "v", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	type key struct{}
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		inline bool
	}{
		{"Background", context.Background(), true},
		{"WithValue over Background", context.WithValue(context.Background(), key{}, 1), true},
		{"WithoutCancel", context.WithoutCancel(cancellable), true},
		{"WithCancel", cancellable, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caller := goroutineID()
			var ri tier.ReadInfo
			if v, err := c.Get(tc.ctx, tc.name, tier.Info(&ri)); err != nil || v != "v" || ri.Source != tier.SourceFetch {
				t.Fatalf("Get = %q, %v, %+v; want v, fetched", v, err, ri)
			}
			if inline := fetchedIn.Load() == caller; inline != tc.inline {
				t.Fatalf("the fetch ran in the caller's goroutine: %v, want %v", inline, tc.inline)
			}
		})
	}
}

// Close cancels a load that runs in its caller's goroutine and waits for
// it, as it does for one in a goroutine of the node's: the load, cancelled,
// holds on until released, and Close is seen waiting on the node's
// WaitGroup, not returning, until then.
func TestFlight_CloseWaitsForALoadThatItsCallerRuns(t *testing.T) {
	for _, tc := range flightCallers {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			started, cancelled := make(chan struct{}), make(chan struct{})
			release := make(chan struct{})
			n := f.node(tier.NodeConfig{}, nil)
			c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: func(ctx context.Context, _ string) (string, error) {
				close(started)
				<-ctx.Done()
				close(cancelled)
				<-release
				return "", ctx.Err()
			}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tc.ctx()
			defer cancel()
			got := goGet(ctx, c, "k")
			wait(t, started, "the fetch")
			closed := make(chan error, 1)
			go func() { closed <- n.Close() }()
			wait(t, cancelled, "Close to cancel the fetch")
			var early bool
			eventually(t, func() bool {
				select {
				case <-closed:
					early = true
					return true
				default:
					return closeIsWaiting()
				}
			}, "Close to wait for the load")
			if early {
				t.Fatal("Close returned while a load was still running")
			}
			close(release)
			if err := wait(t, closed, "Close"); err != nil {
				t.Fatal(err)
			}
			if r := await(t, got); r.err == nil {
				t.Fatalf("Get through a closing node = %q, want an error", r.v)
			}
		})
	}
}

// closeIsWaiting reports whether a goroutine is in Node.Close, waiting on
// the node's WaitGroup.
func closeIsWaiting() bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "sync.(*WaitGroup).Wait") && strings.Contains(g, "tier.(*Node).Close") {
			return true
		}
	}
	return false
}

// A load that ends its goroutine (runtime.Goexit, as t.FailNow in a Fetch
// does) instead of returning leaves an error, never a zero value, to
// everyone waiting for its flight, gives up its claim at once (not after
// FlagTTL), and does not keep Close waiting: a load that its caller runs
// ends the caller's goroutine, one in a goroutine of its own only that.
func TestFlight_LoadThatEndsItsGoroutine(t *testing.T) {
	for _, tc := range flightCallers {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			joined, onFlight := events[bool]()
			n := f.node(tier.NodeConfig{}, &hooks.Points{Flight: func(_ string, started bool) { onFlight(started) }})
			release := make(chan struct{})
			c, err := tier.New(n, tier.Config[string, string]{Namespace: ns, Fetch: func(context.Context, string) (string, error) {
				<-release
				runtime.Goexit()
				return "", nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tc.ctx()
			defer cancel()
			ended := make(chan struct{})
			leader := make(chan result, 1)
			go func() {
				defer close(ended)
				v, err := c.Get(ctx, "k")
				leader <- result{v, err}
			}()
			if started := wait(t, joined, "the leader"); !started {
				t.Fatal("the first Get did not start the flight")
			}
			joiner := goGet(context.Background(), c, "k")
			if started := wait(t, joined, "the joiner"); started {
				t.Fatal("the second Get started a flight of its own")
			}
			close(release)
			wait(t, ended, "the leader's goroutine to end")
			select {
			case r := <-leader:
				if ctx.Done() == nil {
					t.Fatalf("the leader that ran the load returned %q, %v", r.v, r.err)
				}
				if r.err == nil {
					t.Fatalf("the leader = %q, want an error", r.v)
				}
			default:
				if ctx.Done() != nil {
					t.Fatal("the leader's goroutine ended without returning, though the load ran in another")
				}
			}
			if r := await(t, joiner); r.err == nil {
				t.Fatalf("the joiner = %q, want an error", r.v)
			}
			if flag := f.flag("k"); flag != "" {
				t.Fatalf("the claim %q outlived the load, which holds it until FlagTTL; want it released", flag)
			}
			if st := n.Stats().Caches; st.Fetches != 1 || st.FetchErrors != 1 {
				t.Fatalf("%d fetches, %d failed; want the one counted as failed", st.Fetches, st.FetchErrors)
			}
			closed := make(chan error, 1)
			go func() { closed <- n.Close() }()
			if err := wait(t, closed, "Close"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
