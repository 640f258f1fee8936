package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartSetGet(t *testing.T) {
	s := redistest.Start(t)
	if want := fmt.Sprintf("127.0.0.1:%d", s.Port()); s.Addr() != want {
		t.Fatalf("Addr() = %q, want %q", s.Addr(), want)
	}
	if s.Port() == 6379 {
		t.Fatalf("private server got the default port 6379")
	}
	ctx := context.Background()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want %q, nil", got, err, "v")
	}
}

func TestDo(t *testing.T) {
	s := redistest.Start(t)
	if got := s.Do("SET", "k", "v"); got != "OK" {
		t.Fatalf("Do SET = %#v, want OK", got)
	}
	if got := s.Do("GET", "k"); got != "v" {
		t.Fatalf("Do GET = %#v, want v", got)
	}
	if got := s.Do("GET", "missing"); got != nil {
		t.Fatalf("Do GET missing = %#v, want nil", got)
	}
}

func TestRestartSamePortLosesDataAndClientReconnects(t *testing.T) {
	s := redistest.Start(t)
	ctx := context.Background()
	c := s.Client(t)
	port := s.Port()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	s.Restart()

	if s.Port() != port {
		t.Fatalf("port changed across Restart: %d -> %d", port, s.Port())
	}
	// The pooled connection died with the old process; allow one failure
	// while go-redis notices and redials.
	err := c.Get(ctx, "k").Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Logf("first GET after restart failed (allowed): %v", err)
		err = c.Get(ctx, "k").Err()
	}
	if !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after restart: err = %v, want redis.Nil (data must be gone)", err)
	}
	if err := c.Set(ctx, "k2", "v2", 0).Err(); err != nil {
		t.Fatalf("SET after restart: %v", err)
	}
}

func TestKillThenRestart(t *testing.T) {
	s := redistest.Start(t)
	ctx := context.Background()
	c := s.Client(t)
	s.Kill()
	s.Kill() // no-op on a dead server
	dead, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := c.Ping(dead).Err(); err == nil {
		t.Fatalf("PING on killed server succeeded")
	}
	s.Restart()
	err := c.Ping(ctx).Err()
	if err != nil {
		t.Logf("first PING after restart failed (allowed): %v", err)
		err = c.Ping(ctx).Err()
	}
	if err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
}

func TestPauseResume(t *testing.T) {
	s := redistest.Start(t)
	c := redis.NewClient(&redis.Options{
		Addr:                  s.Addr(),
		ReadTimeout:           200 * time.Millisecond,
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("PING before pause: %v", err)
	}

	s.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	start := time.Now()
	err := c.Ping(ctx).Err()
	cancel()
	if err == nil {
		t.Fatalf("PING on paused server succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("PING on paused server took %v to fail", d)
	}

	s.Resume()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after resume: %v", err)
	}
}

func TestFlush(t *testing.T) {
	s := redistest.Start(t)
	ctx := context.Background()
	c := s.Client(t)
	for i := range 10 {
		if err := c.Set(ctx, fmt.Sprint("k", i), i, 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	}
	s.Flush()
	n, err := c.DBSize(ctx).Result()
	if err != nil || n != 0 {
		t.Fatalf("DBSIZE after Flush = %d, %v; want 0, nil", n, err)
	}
}

func TestExtraArgs(t *testing.T) {
	s := redistest.Start(t, "--maxmemory", "1mb")
	got, err := s.Client(t).ConfigGet(context.Background(), "maxmemory").Result()
	if err != nil {
		t.Fatalf("CONFIG GET maxmemory: %v", err)
	}
	if got["maxmemory"] != "1048576" {
		t.Fatalf("maxmemory = %q, want 1048576", got["maxmemory"])
	}

	// Extra args survive a restart.
	s.Restart()
	got, err = s.Client(t).ConfigGet(context.Background(), "maxmemory").Result()
	if err != nil || got["maxmemory"] != "1048576" {
		t.Fatalf("after restart: maxmemory = %q, %v; want 1048576", got["maxmemory"], err)
	}
}

func TestTwoServersDifferentPorts(t *testing.T) {
	a := redistest.Start(t)
	b := redistest.Start(t)
	if a.Port() == b.Port() {
		t.Fatalf("both servers on port %d", a.Port())
	}
	ctx := context.Background()
	if err := a.Client(t).Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatalf("SET on a: %v", err)
	}
	if err := b.Client(t).Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET on b: err = %v, want redis.Nil (servers must be separate)", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := redistest.Start(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Addr()
		s.Kill()
	}()
	s.Kill()
	<-done
	s.Restart()
	if got := s.Do("PING"); got != "PONG" {
		t.Fatalf("PING = %#v, want PONG", got)
	}
}

// TestStats proves that Stats reads a server's CPU time and its commands'
// counts, and that work on the server shows in them.
func TestStats(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	srv.Do("CONFIG", "RESETSTAT")
	before := srv.Stats()
	if before.CPU <= 0 {
		t.Fatalf("CPU of a running server = %v; want more than 0", before.CPU)
	}
	value := strings.Repeat("v", 1000)
	for i := range 2000 {
		if err := rdb.Set(t.Context(), "k"+strconv.Itoa(i), value, 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	}
	after := srv.Stats()
	if after.CPU <= before.CPU {
		t.Fatalf("CPU after 2,000 SETs = %v, before %v; want it to have grown", after.CPU, before.CPU)
	}
	if set := after.Commands["set"]; set.Calls != 2000 || set.Time <= 0 {
		t.Fatalf("INFO commandstats for SET = %+v; want 2000 calls and their time", set)
	}
}

// TestParseStats proves ParseStats reads the CPU and commands lines and
// refuses what it cannot read, rather than count it as nothing.
func TestParseStats(t *testing.T) {
	info := "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\n\r\n# Commandstats\r\n" +
		"cmdstat_get:calls=3,usec=5,usec_per_call=1.67,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_config|resetstat:calls=1,usec=40,usec_per_call=40.00,rejected_calls=0,failed_calls=0\r\n"
	st, err := redistest.ParseStats(info)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU != 1750*time.Millisecond || st.Commands["get"] != (redistest.CommandStats{Calls: 3, Time: 5 * time.Microsecond}) || st.Commands["config|resetstat"].Calls != 1 {
		t.Fatalf("ParseStats = %+v", st)
	}
	for _, bad := range []string{
		"# Commandstats\r\ncmdstat_get:calls=3,usec=5\r\n", // no CPU lines
		"used_cpu_sys:x\r\n", // unreadable CPU
		"used_cpu_sys:1\r\ncmdstat_get:calls=three,usec=5\r\n", // unreadable calls
		"used_cpu_sys:1\r\ncmdstat_get:calls=3,usec=-5\r\n",    // negative time
	} {
		if st, err := redistest.ParseStats(bad); err == nil {
			t.Errorf("ParseStats(%q) = %+v, nil; want an error", bad, st)
		}
	}
}

// FuzzParseStats checks that no INFO text makes ParseStats panic, and
// that what it accepts has a CPU time and no negative count.
func FuzzParseStats(f *testing.F) {
	f.Add("used_cpu_sys:1.5\r\nused_cpu_user:0.25\r\ncmdstat_get:calls=3,usec=5,usec_per_call=1.67\r\n")
	f.Add("cmdstat_evalsha:calls=1,usec=40\r\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, info string) {
		st, err := redistest.ParseStats(info)
		if err != nil {
			return
		}
		if st.CPU < 0 {
			t.Fatalf("CPU %v", st.CPU)
		}
		for name, cs := range st.Commands {
			if cs.Calls < 0 || cs.Time < 0 {
				t.Fatalf("%s: %+v", name, cs)
			}
		}
	})
}

// TestDrain proves that Drain's subscription is in place when it returns
// (a PUBLISH reaches one subscriber) and ends with the test (goleak).
func TestDrain(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	redistest.Drain(t, rdb, "ch")
	for i := range 100 {
		if n, err := rdb.Publish(t.Context(), "ch", i).Result(); err != nil || n != 1 {
			t.Fatalf("PUBLISH = %d, %v; want 1 subscriber", n, err)
		}
	}
}
