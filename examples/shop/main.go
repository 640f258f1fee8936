// Command shop is an example service built on tiercache: a fleet of three
// identical API servers sharing one consistent cache, over the machine's
// PostgreSQL and a private Redis.
//
//	cd examples/shop && go run .            # exit status 1 if a check failed
//
// It makes a schema of its own in the database (tables products and
// currencies, seed rows, and pgnotify's trigger on products), starts a
// private redis-server, and starts itself three times with -serve: each
// server is one tier.Node with a cache of products by id, a cache of
// category pages, the currencies table as a tier.Resource, and an HTTP
// API; server 0 also runs the pgnotify Listener. It then tours the
// endpoints, checking each answer, stops everything and drops the schema.
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
	fs.IntVar(&o.Products, "products", 1000, "rows of the products table")
	fs.IntVar(&o.Categories, "categories", 20, "categories the products are spread over")
	fs.DurationVar(&o.Lease, "lease", tier.DefaultLeaseTTL, "the servers' NodeConfig.LeaseTTL: the staleness bound")
	var sc serverConfig
	serveMode := fs.Bool("serve", false, "run as one API server: the shop starts itself so, three times")
	fs.StringVar(&sc.Schema, "schema", "", "with -serve: the schema to read, also the NOTIFY channel")
	fs.StringVar(&sc.Redis, "redis", "", "with -serve: the fleet's Redis, `host:port`")
	fs.BoolVar(&sc.Listen, "listen", false, "with -serve: run the pgnotify Listener in this server")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run . [flags]\n\nRuns three API servers sharing a tiercache over PostgreSQL and a private Redis, checks their answers, and exits 1 if a check failed.")
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

// report is what a run saw: the tour, and every check that failed.
type report struct {
	Tour     []tourStep
	Failures []string
}

// exercise takes the tour, prints what it saw, stops the shop and lists
// every check that failed. An error is a run that could not finish
// (Ctrl-C).
func (s *shop) exercise(ctx context.Context, w io.Writer) (*report, error) {
	s.writeHeader(w)
	rep := &report{Tour: s.tour(ctx)}
	writeTour(w, rep.Tour)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep.Failures = failures(rep.Tour)
	if err := s.close(); err != nil {
		rep.Failures = append(rep.Failures, "stopping the shop: "+err.Error())
	}
	writeVerdict(w, rep.Failures)
	return rep, nil
}

// check says which option is out of range, if one is.
func (o options) check() error {
	switch {
	case o.Products < 3:
		return fmt.Errorf("-products %d: want at least 3", o.Products)
	case o.Categories < 2 || o.Categories > o.Products:
		return fmt.Errorf("-categories %d: want 2 to -products", o.Categories)
	case o.Lease < 50*time.Millisecond:
		return fmt.Errorf("-lease %v: tier wants at least 50ms", o.Lease)
	}
	return nil
}
