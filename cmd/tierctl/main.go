package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tier"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errRefused reports an action asked for without -yes: the command said
// what it would do and did nothing.
var errRefused = errors.New("tierctl: refused without -yes")

// common are the flags every command takes.
type common struct {
	redis  string
	prefix string
	json   bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.redis, "redis", c.redis, "the Redis at `ADDR` (default: a private demo server, empty)")
	fs.StringVar(&c.prefix, "prefix", c.prefix, "the fleet's NodeConfig.Prefix")
	fs.BoolVar(&c.json, "json", c.json, "write JSON instead of text")
}

const usage = `usage: tierctl [-redis ADDR] [-prefix P] [-json] COMMAND [flags] [args]

commands:
  inspect NAMESPACE KEY        a key's state in Redis
  watch                        decode the bus's messages live, report sequence gaps
  stats                        the bus's traffic per origin node and namespace
  invalidate NAMESPACE KEY...  evict keys on every node (needs -yes)
  invalidate-group GROUP...    invalidate groups on every node (needs -yes)
  flush                        drop every node's L1 (needs -yes)

"tierctl COMMAND -h" lists a command's flags.
`

// run is the command: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := common{prefix: tier.DefaultPrefix}
	top := flag.NewFlagSet("tierctl", flag.ContinueOnError)
	top.SetOutput(stderr)
	top.Usage = func() { fmt.Fprint(stderr, usage) }
	c.register(top)
	if err := top.Parse(args); err != nil {
		return 2
	}
	if top.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := top.Arg(0), top.Args()[1:]
	fs := flag.NewFlagSet("tierctl "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.register(fs)

	var do func(ctx context.Context, rdb redis.UniversalClient) error
	switch cmd {
	case "inspect":
		o := inspectOptions{}
		fs.DurationVar(&o.ttl, "ttl", tier.DefaultTTL, "the Cache's Config.TTL, for the freshness zone")
		fs.DurationVar(&o.freshFor, "fresh-for", 0, "the Cache's Config.FreshFor (0: -ttl)")
		fs.DurationVar(&o.maxStale, "max-stale", 0, "the Cache's Config.MaxStale")
		if !parse(fs, rest, 2, 2, "NAMESPACE KEY", stderr) {
			return 2
		}
		do = func(ctx context.Context, rdb redis.UniversalClient) error {
			o.prefix, o.json = c.prefix, c.json
			return inspect(ctx, rdb, o, fs.Arg(0), fs.Arg(1), stdout)
		}
	case "watch", "stats":
		o := listenOptions{}
		fs.IntVar(&o.n, "n", 0, "stop after `N` messages (0: no limit)")
		defFor := time.Duration(0)
		if cmd == "stats" {
			defFor = 5 * time.Second
		}
		fs.DurationVar(&o.dur, "for", defFor, "stop after this long (0: until interrupted)")
		if !parse(fs, rest, 0, 0, "", stderr) {
			return 2
		}
		do = func(ctx context.Context, rdb redis.UniversalClient) error {
			o.prefix, o.json = c.prefix, c.json
			if cmd == "stats" {
				return stats(ctx, rdb, o, stdout)
			}
			return watch(ctx, rdb, o, stdout)
		}
	case "invalidate", "invalidate-group", "flush":
		o := actOptions{}
		fs.BoolVar(&o.yes, "yes", false, "do it (without: say what would be done, and exit 2)")
		lo, what := 1, "GROUP..."
		switch cmd {
		case "invalidate":
			lo, what = 2, "NAMESPACE KEY..."
		case "flush":
			lo, what = 0, ""
		}
		hi := -1
		if cmd == "flush" {
			hi = 0
		}
		if !parse(fs, rest, lo, hi, what, stderr) {
			return 2
		}
		do = func(ctx context.Context, rdb redis.UniversalClient) error {
			o.prefix, o.json = c.prefix, c.json
			o.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			switch cmd {
			case "invalidate":
				return invalidateKeys(ctx, rdb, o, fs.Arg(0), fs.Args()[1:], stdout)
			case "invalidate-group":
				return invalidateGroups(ctx, rdb, o, fs.Args(), stdout)
			}
			return flush(ctx, rdb, o, stdout)
		}
	default:
		fmt.Fprintf(stderr, "tierctl: unknown command %q\n\n%s", cmd, usage)
		return 2
	}

	addr := c.redis
	if addr == "" {
		a, stopDemo, err := startDemo(stderr)
		if err != nil {
			fmt.Fprintln(stderr, "tierctl:", err)
			return 1
		}
		defer stopDemo()
		addr = a
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	err := do(ctx, rdb)
	switch {
	case errors.Is(err, errRefused):
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "tierctl:", err)
		return 1
	}
	return 0
}

// parse parses a command's flags and checks that it has between lo and hi
// arguments (hi < 0: no upper bound), printing the usage if not.
func parse(fs *flag.FlagSet, args []string, lo, hi int, what string, stderr io.Writer) bool {
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [flags] %s\n", fs.Name(), what)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() < lo || (hi >= 0 && fs.NArg() > hi) {
		fs.Usage()
		return false
	}
	return true
}

// startDemo starts the Redis of a demo, as tiersim does: a private
// redis-server if one is on PATH, else the embedded miniredis, and says
// which on stderr.
func startDemo(stderr io.Writer) (addr string, stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err == nil {
		s, err := redistest.Launch()
		if err != nil {
			return "", nil, err
		}
		fmt.Fprintf(stderr, "tierctl: no -redis given; started a private redis-server at %s for a demo (it holds no keys)\n", s.Addr())
		return s.Addr(), s.Stop, nil
	}
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		return "", nil, fmt.Errorf("starting the embedded miniredis: %w", err)
	}
	fmt.Fprintf(stderr, "tierctl: no -redis given and redis-server is not on PATH; started an embedded miniredis at %s for a demo (it holds no keys)\n", m.Addr())
	return m.Addr(), m.Close, nil
}
