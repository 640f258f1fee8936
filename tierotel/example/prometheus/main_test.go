package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

// quiet drops go-redis's own log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const guard = 20 * time.Second

// newTestApp is the example's app on a private redis-server, without its
// load: the test drives the node itself.
func newTestApp(t *testing.T) *app {
	t.Helper()
	srv := redistest.Start(t)
	a, err := newApp(context.Background(), srv.Client(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newApp: %v", err)
	}
	t.Cleanup(a.close)
	return a
}

// scrape GETs url and parses the text exposition format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// value returns the count (histogram) or value (counter, gauge) of the
// sample of family name whose labels include labels, failing the test if
// there is not exactly one.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
	var found []float64
	for _, m := range mf.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			found = append(found, float64(m.GetHistogram().GetSampleCount()))
		case dto.MetricType_COUNTER:
			found = append(found, m.GetCounter().GetValue())
		case dto.MetricType_GAUGE:
			found = append(found, m.GetGauge().GetValue())
		default:
			t.Fatalf("%s is a %v", name, mf.GetType())
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d samples, want 1", name, labels, len(found))
	}
	return found[0]
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

var syncKeys atomic.Int64

// settleL1 waits until the node's L1 serves what it filled so far: see
// the same helper in package tierotel's tests (L1 counts an entry's cost a
// moment before it makes the entry visible, and applies fills in order).
func settleL1(t *testing.T, a *app, sync *tier.Cache[string, string]) {
	t.Helper()
	wait := func(what string, cond func() bool) {
		deadline := time.Now().Add(guard)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(2 * time.Millisecond) // polling a condition, bounded by the guard
		}
	}
	var before uint64
	wait("L1 to count the fills", func() bool {
		before = a.node.Stats().L1Bytes
		return before > 0
	})
	if _, err := sync.Get(context.Background(), fmt.Sprint("s", syncKeys.Add(1))); err != nil {
		t.Fatal(err)
	}
	wait("L1 to count the sync fill", func() bool { return a.node.Stats().L1Bytes > before })
}

// The known workload, 100 Gets of one key on a fresh node, read back
// from /metrics over HTTP under the names Prometheus gives the
// instruments.
func TestScrape(t *testing.T) {
	a := newTestApp(t)
	srv := httptest.NewServer(a.handler)
	defer srv.Close()
	sync, err := tier.New(a.node, tier.Config[string, string]{
		Namespace: "sync",
		Fetch:     func(_ context.Context, k string) (string, error) { return k, nil },
	})
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	if _, err := a.users.Get(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	settleL1(t, a, sync)
	for range 99 {
		if v, err := a.users.Get(ctx, "1"); err != nil || v != "user 1" {
			t.Fatalf("Get = %q, %v", v, err)
		}
	}

	mfs := scrape(t, srv.URL+"/metrics")
	users := func(kv ...string) map[string]string {
		m := map[string]string{"tiercache_namespace": "users"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tiercache_get_duration_seconds", users("tiercache_answer", "fetch"), 1},
		{"tiercache_get_duration_seconds", users("tiercache_answer", "l1"), 99},
		{"tiercache_fetch_duration_seconds", users("tiercache_fetch_outcome", "success"), 1},
		{"tiercache_fetch_keys_total", users("tiercache_fetch_outcome", "success"), 1},
		{"tiercache_fills_total", users("tiercache_fill_result", "landed"), 1},
		{"tiercache_invalidation_pending", nil, 0},
		{"tiercache_breaker_open", nil, 0},
		{"tiercache_l1_limit_bytes", nil, float64(tier.DefaultL1MaxBytes)},
	} {
		if got := value(t, mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := len(mfs["tiercache_get_duration_seconds"].GetMetric()); n != 3 { // users: fetch, l1; sync: fetch
		t.Errorf("tiercache_get_duration_seconds has %d series, want 3", n)
	}
	if got := value(t, mfs, "tiercache_l1_usage_bytes", nil); got <= 0 {
		t.Errorf("tiercache_l1_usage_bytes = %v, want > 0", got)
	}
}

// run serves /metrics on the address it is given and stops with its
// context; without redis-server or -redis it says what to do.
func TestRun(t *testing.T) {
	srv := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	log := &lines{ch: make(chan string, 64)}
	go func() { done <- run(ctx, []string{"-redis", srv.Addr(), "-addr", "127.0.0.1:0"}, log) }()

	// run logs the address it listens on.
	var url string
	for url == "" {
		select {
		case l := <-log.ch:
			if strings.Contains(l, `msg="serving metrics"`) {
				_, url, _ = strings.Cut(l, "url=")
			}
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		case <-time.After(guard):
			t.Fatal("run never said where it serves")
		}
	}
	mfs := scrape(t, url)
	if _, ok := mfs["tiercache_l1_limit_bytes"]; !ok {
		t.Fatalf("%s has no tiercache_l1_limit_bytes", url)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(guard):
		t.Fatal("run did not return after its context ended")
	}

	t.Setenv("PATH", "")
	err := run(context.Background(), []string{"-addr", "127.0.0.1:0"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "apt-get install -y redis-server") {
		t.Fatalf("run without redis-server = %v, want the install command", err)
	}
}

// lines is a writer that hands each line written to it to ch, dropping
// lines ch has no room for.
type lines struct {
	mu  sync.Mutex
	buf []byte
	ch  chan string
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		line, rest, ok := strings.Cut(string(l.buf), "\n")
		if !ok {
			return len(p), nil
		}
		l.buf = []byte(rest)
		select {
		case l.ch <- line:
		default:
		}
	}
}
