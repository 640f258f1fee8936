// Command shop is an example service built on tiercache: a fleet of three
// identical API servers sharing one consistent cache, over the machine's
// PostgreSQL and a private Redis, and a load generator that checks what
// they answer.
//
//	cd examples/shop && go run .            # 10s of load; exit status 1 if a check failed
//	go run . -for 30s -readers 16
//
// It makes a schema of its own in the database (tables products and
// currencies, seed rows, and pgnotify's trigger on products), starts a
// private redis-server, and starts itself three times with -serve: each
// server is one tier.Node with a cache of products by id, a cache of
// category pages, the currencies table as a tier.Resource, and an HTTP
// API; server 0 also runs the pgnotify Listener. It then tours the
// endpoints, runs readers against all three servers and a writer that
// renames products straight in PostgreSQL, prints hit ratios and the
// delay from each write's commit to its being seen on every server, stops
// everything and drops the schema. See README.md for the endpoints, the
// table and the checks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/tiercache/tiercache/tier"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the command: the shop, or with -serve one of its API servers.
// Exit status 0 if every check passed, 1 if one failed, 2 if the run
// could not be made or finish.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("shop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.DSN, "db", defaultDSN, "the PostgreSQL database, as a `URL` or keyword=value string; the shop makes a schema of its own there and drops it at the end")
	fs.DurationVar(&o.For, "for", 10*time.Second, "how long the load runs")
	fs.IntVar(&o.Readers, "readers", 8, "concurrent readers, each asking the servers in turn")
	fs.IntVar(&o.Writes, "writes", 20, "writes a second, straight to PostgreSQL")
	fs.IntVar(&o.Products, "products", 1000, "rows of the products table")
	fs.IntVar(&o.Categories, "categories", 20, "categories the products are spread over")
	fs.DurationVar(&o.Lease, "lease", tier.DefaultLeaseTTL, "the servers' NodeConfig.LeaseTTL: the staleness bound, and the grace a write gets after the load")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the readers' and the writer's choices")
	var sc serverConfig
	serveMode := fs.Bool("serve", false, "run as one API server: the shop starts itself so, three times")
	fs.StringVar(&sc.Schema, "schema", "", "with -serve: the schema to read, also the NOTIFY channel")
	fs.StringVar(&sc.Redis, "redis", "", "with -serve: the fleet's Redis, `host:port`")
	fs.BoolVar(&sc.Listen, "listen", false, "with -serve: run the pgnotify Listener in this server")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run . [flags]\n\nRuns three API servers sharing a tiercache over PostgreSQL and a private Redis, loads them, checks their answers, and exits 1 if a check failed.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(stderr, "shop:", err)
		return 2
	}

	if *serveMode {
		sc.DSN, sc.Lease = o.DSN, o.Lease
		if err := serve(sc, stdin, stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "shop server:", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	o.Log = stderr
	s, err := start(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "shop:", err)
		return 2
	}
	defer s.close() // on every way out; exercise closes it first when it finishes
	rep, err := s.exercise(ctx, stdout)
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "shop: interrupted; stopping the servers and dropping the schema")
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "shop:", err)
		return 2
	case len(rep.Failures) > 0:
		return 1
	}
	return 0
}

// report is what a run saw: the tour, the load, and every check that
// failed.
type report struct {
	Tour     []tourStep
	Load     *loadResult
	Failures []string
}

// exercise takes the tour, runs the load, prints what they saw as it goes,
// stops the shop and lists every check that failed. An error is a run
// that could not finish (Ctrl-C, a server that stopped answering
// /debug/stats).
func (s *shop) exercise(ctx context.Context, w io.Writer) (*report, error) {
	s.writeHeader(w)
	rep := &report{Tour: s.tour(ctx)}
	writeTour(w, rep.Tour)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "\nload     %d readers spread over the %d servers, and a writer straight to PostgreSQL (at most %d writes/s), for %v\n",
		s.opts.Readers, servers, s.opts.Writes, s.opts.For)
	var err error
	if rep.Load, err = s.load(ctx); err != nil {
		return nil, err
	}
	rep.Load.write(w)
	rep.Failures = failures(rep.Tour, rep.Load)
	if err := s.close(); err != nil {
		rep.Failures = append(rep.Failures, "stopping the shop: "+err.Error())
	}
	writeVerdict(w, rep.Failures)
	return rep, nil
}

// check says which option is out of range, if one is.
func (o options) check() error {
	switch {
	case o.For <= 0:
		return fmt.Errorf("-for %v: want a positive duration", o.For)
	case o.Readers < 1 || o.Writes < 1:
		return errors.New("-readers and -writes: want at least 1")
	case o.Products < 3:
		return fmt.Errorf("-products %d: want at least 3", o.Products)
	case o.Categories < 2 || o.Categories > o.Products:
		return fmt.Errorf("-categories %d: want 2 to -products", o.Categories)
	case o.Lease < 50*time.Millisecond:
		return fmt.Errorf("-lease %v: tier wants at least 50ms", o.Lease)
	}
	return nil
}
