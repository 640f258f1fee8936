package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/pgnotify"
	"github.com/tiercache/tiercache/sqlsource"
	"github.com/tiercache/tiercache/tier"
)

// serverConfig is what the parent tells an API server process.
type serverConfig struct {
	DSN    string        // the database; queries run in Schema
	Schema string        // also the NOTIFY channel
	Redis  string        // the fleet's Redis
	Lease  time.Duration // NodeConfig.LeaseTTL (0: tier's default)
	Listen bool          // run the pgnotify Listener in this process
}

// ready is the line an API server prints on its standard output when it
// serves: the parent reads its address from it.
type ready struct {
	Addr string `json:"addr"`
}

// api is one API server: one tier.Node, the caches and the resource on
// it, and the handlers that read them.
type api struct {
	db       *sql.DB
	rdb      *redis.Client
	node     *tier.Node
	products *tier.Cache[int64, Product]   // by id
	pages    *tier.Cache[int64, []Product] // by category id
	rates    *tier.Resource[string, Currency]
	listener *pgnotify.Listener // nil unless this process runs it
	log      *slog.Logger
}

// serve runs one API server until its standard input ends (the parent
// closed it, or died), then shuts down in order: HTTP, Listener, Node.
func serve(cfg serverConfig, stdin io.Reader, stdout, stderr io.Writer) error {
	// Ctrl-C in a terminal signals the whole process group: the parent
	// decides when its servers stop, by closing their standard input.
	signal.Ignore(os.Interrupt)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	a, err := newAPI(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if err := json.NewEncoder(stdout).Encode(ready{Addr: ln.Addr().String()}); err != nil {
		return err
	}

	stdinDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(stdinDone)
	}()
	select {
	case <-stdinDone:
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	}
	shutCtx, cancelShut := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShut()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	return nil
}

// newAPI connects to the database and Redis and builds the node, its
// caches, the currencies resource and, if asked, the Listener; it returns
// once all of them are ready to serve.
func newAPI(ctx context.Context, cfg serverConfig, log *slog.Logger) (_ *api, err error) {
	a := &api{log: log}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if a.db, err = openDB(cfg.DSN, cfg.Schema); err != nil {
		return nil, err
	}
	// The client must honour context deadlines, so that the node's
	// RedisTimeout bounds every operation.
	a.rdb = redis.NewClient(&redis.Options{Addr: cfg.Redis, ContextTimeoutEnabled: true})
	// One Node per process: its L1, its Redis connections, its bus
	// subscription, shared by all of its caches.
	if a.node, err = tier.NewNode(ctx, a.rdb, tier.NodeConfig{LeaseTTL: cfg.Lease, Logger: log}); err != nil {
		return nil, err
	}

	table, err := productsTable(a.db)
	if err != nil {
		return nil, err
	}
	a.products, err = tier.New(a.node, tier.Config[int64, Product]{
		Namespace: productsNS,
		Fetch:     table.Fetch,     // SELECT ... WHERE id = $1
		FetchMany: table.FetchMany, // SELECT ... WHERE id = ANY($1), for the batch endpoint
		TTL:       10 * time.Minute,
		L1TTL:     time.Minute,
		// An unknown id is cached as "not found" too, in both tiers, so
		// that asking for it again does not reach the database. An INSERT
		// of that id makes the trigger invalidate it like any other write.
		NotFoundTTL: time.Minute,
		// A product is in its category's group, so that one
		// InvalidateGroup reaches every product of a category (a price
		// change for the whole category, say). Groups is also called with
		// the zero Product for a cached "not found", which is in none.
		Groups: func(_ int64, p Product) []string {
			if p.ID == 0 {
				return nil
			}
			return []string{categoryGroup(p.CategoryID)}
		},
	})
	if err != nil {
		return nil, err
	}
	a.pages, err = tier.New(a.node, tier.Config[int64, []Product]{
		Namespace: pagesNS,
		Fetch: func(ctx context.Context, category int64) ([]Product, error) {
			return categoryPage(ctx, a.db, category)
		},
		TTL:   10 * time.Minute,
		L1TTL: time.Minute,
		// A page is in the group of its category: the trigger sends that
		// group for every write of a product of the category (the old and
		// the new one when a product moves), so no write needs to know
		// which pages show the product.
		Groups: func(category int64, _ []Product) []string { return []string{categoryGroup(category)} },
	})
	if err != nil {
		return nil, err
	}
	rates, err := currenciesTable(a.db)
	if err != nil {
		return nil, err
	}
	// The whole currencies table on every node, loaded once for the fleet
	// and read without a round trip. A write to the table would call
	// a.rates.Refill; this one is only read.
	a.rates, err = sqlsource.NewResource(a.node, rates, tier.ResourceConfig[string, Currency]{Name: "currencies", ReloadEvery: time.Minute})
	if err != nil {
		return nil, err
	}
	if err := a.rates.Wait(ctx); err != nil {
		return nil, fmt.Errorf("loading the currencies: %w", err)
	}

	if cfg.Listen {
		// One Listener serves the whole fleet: it turns each NOTIFY into
		// one Node.Invalidate on this node, and the bus takes it to every
		// other node. (Running one in every process would also work, at
		// the cost of one bus message per Listener per write.)
		a.listener, err = pgnotify.New(pgnotify.Config{
			ConnString: cfg.DSN,
			Channel:    cfg.Schema,
			Node:       a.node,
			// Every namespace a notification can make stale: the trigger's,
			// and the one whose entries are in the groups it sends. After
			// each LISTEN (the first one too) the Listener invalidates them
			// whole, since it cannot know what it missed before.
			Namespaces: []string{productsNS, pagesNS},
			Logger:     log,
		})
		if err != nil {
			return nil, err
		}
		select {
		case <-a.listener.Ready():
		case <-ctx.Done():
			return nil, fmt.Errorf("the pgnotify Listener is not listening yet: %w (its stats: %+v)", ctx.Err(), a.listener.Stats())
		}
	}
	return a, nil
}

// close stops what newAPI started, the Listener before its Node.
func (a *api) close() {
	if a.listener != nil {
		_ = a.listener.Close()
	}
	if a.node != nil {
		_ = a.node.Close()
	}
	if a.rdb != nil {
		_ = a.rdb.Close()
	}
	if a.db != nil {
		_ = a.db.Close()
	}
}

// maxBatch bounds the ids of one batch request.
const maxBatch = 100

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /products/{id}", a.getProduct)
	mux.HandleFunc("GET /products", a.getProducts)
	mux.HandleFunc("PUT /products/{id}", a.putProduct)
	mux.HandleFunc("GET /categories/{id}/products", a.getPage)
	mux.HandleFunc("GET /currencies/{code}", a.getCurrency)
	mux.HandleFunc("GET /debug/stats", a.getStats)
	return mux
}

// getProduct answers GET /products/{id} from the products cache: L1, else
// Redis, else PostgreSQL. X-Cache says which answered.
func (a *api) getProduct(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var ri tier.ReadInfo
	p, err := a.products.Get(r.Context(), id, tier.Info(&ri))
	w.Header().Set("X-Cache", cacheHeader(ri))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// batchItem is one id of a batch answer: its product, or why there is none.
type batchItem struct {
	ID      int64    `json:"id"`
	Product *Product `json:"product,omitempty"`
	Error   string   `json:"error,omitempty"` // "not found"
}

// getProducts answers GET /products?ids=1,2,3 with one item per id, in the
// request's order: GetList reads what L1 lacks from Redis in one round
// trip, and what Redis lacks from PostgreSQL in one FetchMany query.
func (a *api) getProducts(w http.ResponseWriter, r *http.Request) {
	ids, err := parseIDs(r.URL.Query().Get("ids"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	list, err := a.products.GetList(r.Context(), ids)
	var ke *tier.KeyErrors[int64]
	if err != nil && !errors.As(err, &ke) {
		a.fail(w, r, err) // ctx's error, or the node closed: no values at all
		return
	}
	items := make([]batchItem, len(ids))
	for i, id := range ids {
		items[i].ID = id
		if ke != nil {
			if kerr, failed := ke.Errs[id]; failed {
				if !errors.Is(kerr, tier.ErrNotFound) {
					a.fail(w, r, kerr) // one id failed otherwise: say so for the request
					return
				}
				items[i].Error = "not found"
				continue
			}
		}
		items[i].Product = &list[i]
	}
	writeJSON(w, http.StatusOK, items)
}

// productUpdate is the body of PUT /products/{id}.
type productUpdate struct {
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	CategoryID int64  `json:"category_id"`
}

// putProduct answers PUT /products/{id}: it updates the row, then
// invalidates the product and the pages of its old and new category on
// every node, in one round trip to Redis and one bus message.
func (a *api) putProduct(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var in productUpdate
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	if in.Name == "" || in.PriceCents < 0 || in.CategoryID <= 0 {
		writeError(w, http.StatusBadRequest, "want a name, a price_cents of 0 or more and a positive category_id")
		return
	}
	oldCategory, err := a.update(r.Context(), id, in)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("product %d not found", id))
		return
	}
	if err != nil {
		a.log.Error("updating a product", "id", id, "err", err)
		writeError(w, http.StatusInternalServerError, "the update failed")
		return
	}
	// The write is committed, so its NOTIFY is on its way to the Listener,
	// which will invalidate the same key and groups. Invalidating here as
	// well is what gives this request's caller read-your-writes: when
	// Invalidate returns, no node can read the old product from Redis, and
	// this one serves it from nowhere; other nodes evict their L1 copies
	// when the bus message arrives, within LeaseTTL whatever happens. The
	// second invalidation, NOTIFY's, costs one more round trip and message.
	groups := []string{categoryGroup(oldCategory)}
	if oldCategory != in.CategoryID {
		groups = append(groups, categoryGroup(in.CategoryID))
	}
	if err := a.node.Invalidate(r.Context(), tier.KeysOf(a.products, id), tier.Groups(groups...)); err != nil {
		// ErrPending: Redis was unreachable; this node applied it and
		// the node replays it to the fleet when Redis answers.
		a.log.Warn("invalidating an updated product", "id", id, "err", err)
	}
	writeJSON(w, http.StatusOK, Product{ID: id, Name: in.Name, PriceCents: in.PriceCents, CategoryID: in.CategoryID})
}

// update writes in to product id and returns the category it was in before.
func (a *api) update(ctx context.Context, id int64, in productUpdate) (oldCategory int64, err error) {
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit
	if err := tx.QueryRowContext(ctx, "SELECT category_id FROM products WHERE id = $1 FOR UPDATE", id).Scan(&oldCategory); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE products SET name = $2, price_cents = $3, category_id = $4 WHERE id = $1",
		id, in.Name, in.PriceCents, in.CategoryID); err != nil {
		return 0, err
	}
	return oldCategory, tx.Commit()
}

// getPage answers GET /categories/{id}/products from the category pages
// cache: the category's products, in id order.
func (a *api) getPage(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var ri tier.ReadInfo
	page, err := a.pages.Get(r.Context(), id, tier.Info(&ri))
	w.Header().Set("X-Cache", cacheHeader(ri))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// getCurrency answers GET /currencies/{code} from the resource: a map
// lookup in this process, no lock, no round trip.
func (a *api) getCurrency(w http.ResponseWriter, r *http.Request) {
	code := strings.ToUpper(r.PathValue("code"))
	c, ok := a.rates.Get(code)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("currency %q not found", code))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// statsReply is the answer of GET /debug/stats.
type statsReply struct {
	Node      tier.Stats           `json:"node"`
	Caches    []cacheStats         `json:"caches"`
	Resources []tier.ResourceStats `json:"resources"`
	Listener  *pgnotify.Stats      `json:"listener,omitempty"` // only where it runs
}

// cacheStats are one cache's counters on this node, with its hit ratio.
type cacheStats struct {
	Namespace string
	tier.Counts
	HitRatio float64 `json:"hit_ratio"`
}

func (a *api) getStats(w http.ResponseWriter, _ *http.Request) {
	reply := statsReply{Node: a.node.Stats(), Resources: []tier.ResourceStats{a.rates.Stats()}}
	products, pages := a.products.Stats(), a.pages.Stats()
	reply.Caches = []cacheStats{
		{Namespace: productsNS, Counts: products, HitRatio: products.HitRatio()},
		{Namespace: pagesNS, Counts: pages, HitRatio: pages.HitRatio()},
	}
	if a.listener != nil {
		ls := a.listener.Stats()
		reply.Listener = &ls
	}
	writeJSON(w, http.StatusOK, reply)
}

// fail answers a cache's error: "not found" is a 404; anything else is
// the source's or Redis's failure, logged.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, tier.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not found")
		return
	}
	if r.Context().Err() == nil {
		a.log.Error("reading the cache", "path", r.URL.Path, "err", err)
	}
	writeError(w, http.StatusBadGateway, err.Error())
}

// cacheHeader says which tier answered: l1, l2 or fetch (PostgreSQL), and
// whether the answer was a cached "not found".
func cacheHeader(ri tier.ReadInfo) string {
	if ri.Negative {
		return ri.Source.String() + " (not found)"
	}
	return ri.Source.String()
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("id %q is not a positive integer", r.PathValue("id")))
		return 0, false
	}
	return id, true
}

// parseIDs reads "1,2,3": 1 to maxBatch positive integers.
func parseIDs(s string) ([]int64, error) {
	if s == "" {
		return nil, errors.New("want ids=1,2,3")
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxBatch {
		return nil, fmt.Errorf("%d ids; at most %d", len(parts), maxBatch)
	}
	ids := make([]int64, len(parts))
	for i, p := range parts {
		id, err := strconv.ParseInt(p, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("id %q is not a positive integer", p)
		}
		ids[i] = id
	}
	return ids, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
