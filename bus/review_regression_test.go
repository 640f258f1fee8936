package bus_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/bus"
	"github.com/tiercache/tiercache/internal/faultproxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// logTap forwards log records whose message contains sub, once armed.
type logTap struct {
	sub   string
	armed *atomic.Bool
	hit   chan string
}

func (h logTap) Enabled(context.Context, slog.Level) bool { return true }
func (h logTap) Handle(_ context.Context, r slog.Record) error {
	if h.armed.Load() && strings.Contains(r.Message, h.sub) {
		var e string
		r.Attrs(func(a slog.Attr) bool { e += a.Value.String(); return true })
		select {
		case h.hit <- e:
		default:
		}
	}
	return nil
}
func (h logTap) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logTap) WithGroup(string) slog.Handler      { return h }

// reportWhen returns an AfterReceiveError hook that sends the error on ch
// once armed.
func reportWhen(armed *atomic.Bool, ch chan error) func(error) {
	return func(err error) {
		if armed.Load() {
			select {
			case ch <- err:
			default:
			}
		}
	}
}

// A resubscription refused with an error reply (-BUSY while a script runs)
// is asked again once Redis answers: the subscriber does not stay
// unsubscribed, and its lease is renewed.
func TestRefusedSubscribeIsRetried(t *testing.T) {
	srv := redistest.Start(t)
	p := faultproxy.Start(t, srv.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	var armed atomic.Bool
	tap := logTap{sub: "error reply on the subscription", armed: &armed, hit: make(chan string, 16)}
	cut := make(chan error, 16)
	rec := newRecorder()
	const lease = 400 * time.Millisecond
	sub, err := bus.NewSubscriber(t.Context(), bus.SubscriberConfig{
		Client: rdb, Channel: channel, EpochKey: epochKey, Self: self, LeaseTTL: lease,
		Handler: rec, Logger: slog.New(tap),
		Hooks: &bus.Hooks{AfterReceiveError: reportWhen(&armed, cut)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	rec.waitFor(t, 0, "first Renew", isRenew)

	srv.Do("CONFIG", "SET", "busy-reply-threshold", "50")
	busy := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: -1, MaxRetries: -1})
	t.Cleanup(func() { _ = busy.Close() })
	done := make(chan error, 1)
	go func() { done <- busy.Eval(context.Background(), "while true do end", nil).Err() }()
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = probe.Close() })
	deadline := time.Now().Add(guard)
	for { // poll a condition: Redis answers -BUSY
		if err := probe.Ping(context.Background()).Err(); err != nil && strings.HasPrefix(err.Error(), "BUSY") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis never got busy")
		}
		time.Sleep(5 * time.Millisecond)
	}
	armed.Store(true)
	p.Reset()
	select {
	case <-cut:
	case <-time.After(guard):
		t.Fatal("the cut was not seen")
	}
	select { // the resubscribe is refused
	case <-tap.hit:
	case <-time.After(guard):
		t.Fatal("no error reply to the resubscribe")
	}
	srv.Do("SCRIPT", "KILL")
	<-done
	back := time.Now()
	rec.waitFor(t, rec.mark(), "a Renew after Redis answered again", func(e event) bool {
		return e.kind == evRenew && e.sentAt.After(back)
	})
}

// An error reply in the handshake of a reconnection (a rotated password)
// is retried with backoff, not in a tight loop.
func TestHandshakeErrorBacksOff(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do("CONFIG", "SET", "requirepass", "old")
	p := faultproxy.Start(t, srv.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr(), Password: "old", ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := newRecorder()
	cut := make(chan error, 1)
	var armed atomic.Bool
	sub, err := bus.NewSubscriber(t.Context(), bus.SubscriberConfig{
		Client: rdb, Channel: channel, EpochKey: epochKey, Self: self, LeaseTTL: time.Second, Handler: rec,
		Hooks: &bus.Hooks{AfterReceiveError: reportWhen(&armed, cut)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	rec.waitFor(t, 0, "first Renew", isRenew)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: "old"})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	if err := admin.ConfigSet(ctx, "requirepass", "new").Err(); err != nil {
		t.Fatal(err)
	}
	connections := func() int64 {
		info, err := admin.Info(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_connections_received:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatal("no total_connections_received")
		return 0
	}
	armed.Store(true)
	p.Reset()
	<-cut
	before := connections()
	window := 300 * time.Millisecond
	time.Sleep(window) // an observation window: count the reconnections in it
	if n := connections() - before; n > 20 {
		t.Errorf("%d connections in %v: the subscriber reconnects in a tight loop after an error reply in the handshake", n, window)
	}
}
