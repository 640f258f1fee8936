// Command prometheus runs a tiercache node with the tierotel Recorder
// exported to Prometheus: it serves /metrics (the OpenTelemetry Prometheus
// exporter, through promhttp) and drives a small load so that the metrics
// move: Gets of a few keys every 100ms, and an Invalidate every second.
//
//	go run ./example/prometheus                  # a private redis-server, :9464
//	go run ./example/prometheus -redis localhost:6379 -addr 127.0.0.1:9464
//	curl -s localhost:9464/metrics | grep tiercache_
//
// Without -redis it starts a private redis-server, which must be on PATH
// (apt-get install -y redis-server), and removes it on exit; it never
// falls back to a Redis it was not given.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
	"github.com/tiercache/tiercache/tierotel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "prometheus:", err)
		os.Exit(1)
	}
}

// run parses args, starts the node, the load and the HTTP server, and
// returns when ctx is done.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("prometheus", flag.ContinueOnError)
	fs.SetOutput(stderr)
	redisAddr := fs.String("redis", "", "use the Redis at `ADDR`; default: a private redis-server, started from PATH")
	addr := fs.String("addr", ":9464", "serve /metrics on `ADDR`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	if *redisAddr == "" {
		if _, err := exec.LookPath("redis-server"); err != nil {
			return errors.New("no -redis ADDR given, and redis-server is not on PATH to start a private one: install it (apt-get install -y redis-server) or pass -redis")
		}
		srv, err := redistest.Launch()
		if err != nil {
			return err
		}
		defer srv.Stop()
		*redisAddr = srv.Addr()
		log.Info("started a private redis-server", "addr", srv.Addr())
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()

	a, err := newApp(ctx, rdb, log)
	if err != nil {
		return err
	}
	defer a.close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: a.handler, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")

	ctx, cancel := context.WithCancel(ctx) // the load stops with the server too
	defer cancel()
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		a.load(ctx)
	}()

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	cancel()
	<-loaded
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := hs.Shutdown(sctx); err == nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// app is a node with the tierotel Recorder, exported to a Prometheus
// registry of its own, and one cache.
type app struct {
	handler http.Handler // serves /metrics
	node    *tier.Node
	users   *tier.Cache[string, string]
	close   func()
}

// newApp wires a node to Prometheus: a registry (not the global one), the
// OpenTelemetry exporter registered in it, a MeterProvider reading through
// the exporter, the Recorder on that provider, and Observe for the node's
// state.
func newApp(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger) (_ *app, err error) {
	var undo []func()
	closeAll := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()

	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		// The default today, stated: names as Prometheus spells them
		// (tiercache_get_duration_seconds, tiercache_fills_total).
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "tiercache-example"))),
	)
	undo = append(undo, func() { _ = mp.Shutdown(context.WithoutCancel(ctx)) })
	rec, err := tierotel.NewRecorder(tierotel.WithMeterProvider(mp))
	if err != nil {
		return nil, err
	}
	node, err := tier.NewNode(ctx, rdb, tier.NodeConfig{Recorder: rec, Logger: log})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = node.Close() })
	observed, err := rec.Observe(node)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = observed.Unregister() })

	users, err := tier.New(node, tier.Config[string, string]{
		Namespace: "users",
		Fetch: func(ctx context.Context, id string) (string, error) {
			return "user " + id, nil // stands for a database read
		},
		TTL:   time.Minute,
		L1TTL: 10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return &app{handler: mux, node: node, users: users, close: closeAll}, nil
}

// load reads a few keys every 100ms and invalidates one every second,
// until ctx is done.
func (a *app) load(ctx context.Context) {
	keys := []string{"1", "2", "3", "4", "5"}
	gets := time.NewTicker(100 * time.Millisecond)
	defer gets.Stop()
	writes := time.NewTicker(time.Second)
	defer writes.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-gets.C:
			for _, k := range keys {
				_, _ = a.users.Get(ctx, k)
			}
		case <-writes.C:
			_ = a.users.Invalidate(ctx, keys[i%len(keys)])
		}
	}
}
