package pgnotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tiercache/tiercache/internal/safelog"
	"github.com/tiercache/tiercache/tier"
)

// Defaults of Config's zero fields.
const (
	// DefaultApplicationName is the application_name of the Listener's
	// connection when ConnString sets none, so that it can be told apart
	// in pg_stat_activity.
	DefaultApplicationName = "tiercache-pgnotify"
	DefaultMinBackoff      = 100 * time.Millisecond
	DefaultMaxBackoff      = 5 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultPingInterval    = 5 * time.Second
	DefaultPingTimeout     = 5 * time.Second
)

// Limits of one batch of notifications applied with one Node.Invalidate
// call: one round trip to Redis and one bus message (of at most
// bus.MaxMessageBytes) for all of them.
const (
	maxBatch      = 256
	maxBatchBytes = 512 << 10
	// queueLen bounds the notifications read from the connection and not
	// yet applied; past it, the reader waits and PostgreSQL queues them.
	queueLen = 1024
	// maxWarned bounds the unknown namespaces warned about by name.
	maxWarned = 64
)

// Config configures a Listener.
type Config struct {
	// ConnString is the database to listen on, as pgx.ParseConfig reads
	// it (a postgres:// URL or keyword=value pairs). Required unless
	// Connect is set. If it sets no application_name, the connection's is
	// DefaultApplicationName.
	ConnString string
	// Connect, if set, opens the Listener's connection instead of
	// ConnString, for a configuration a string cannot hold (a dialer, TLS,
	// a password from a vault). It is called for every connection, with a
	// ctx that Close cancels and ConnectTimeout bounds, and must honour it.
	// The Listener owns the connection it returns and closes it. It must
	// not set pgconn.Config.OnNotification: the Listener would receive no
	// payloads (each would count as Malformed). An error or a panic counts
	// as a failed connection.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Channel is the channel to LISTEN on: TriggerConfig.Channel.
	// Default DefaultChannel. It is an identifier of at most 63 bytes,
	// taken as written (LISTEN quotes it, and pg_notify takes it as is);
	// note that an unquoted NOTIFY Channel folds it to lower case.
	Channel string
	// Node applies the invalidations: through it, to every node of its
	// fleet. Required. One Listener is enough for a fleet; more (one per
	// node, say) are redundant, at the cost of one bus message per
	// Listener per notification, and each one's reconnections invalidate
	// Namespaces fleet-wide.
	Node *tier.Node
	// Namespaces are every namespace whose entries a notification on
	// Channel can make stale: every TriggerConfig.Namespace of the
	// triggers that notify it, including the namespaces of the entries in
	// the groups they send. Required, at least one. They are what the
	// Listener invalidates whole when it cannot prove it saw every
	// notification: after it (re)connects, and for a payload that does not
	// parse. A notification naming another namespace is applied all the
	// same, counted (Stats.UnknownNamespaces) and warned about: list it,
	// or a notification missed in a gap leaves its entries stale.
	Namespaces []string
	// Groups are groups to invalidate with Namespaces, for entries in the
	// triggers' groups that live in a namespace shared with entries no
	// trigger covers (so that invalidating the namespace would be too
	// much): name a group every such entry is in. Optional.
	Groups []string
	// SkipInitialInvalidation skips the invalidation of Namespaces and
	// Groups after the first LISTEN; reconnections still do it. By default
	// the first connection invalidates too, because entries filled before
	// the Listener listened may predate writes it never heard of (a
	// listener that was down, or never ran). Set it only if nothing can
	// have filled those namespaces before Ready is closed: the fleet's
	// Redis is new and no node serves before its Listener is ready.
	SkipInitialInvalidation bool
	// Logger receives connection losses, malformed payloads and failed
	// invalidations as structured records ("channel", "err", "payload",
	// "namespace"). Default slog.Default(). A handler that panics loses
	// its record and nothing else: the Listener goes on, and counts it in
	// Stats.LoggerPanics.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between failed connection
	// attempts: it starts at MinBackoff, doubles up to MaxBackoff, and
	// each wait is drawn at random from its upper half, so that a fleet's
	// listeners do not reconnect in step. The first attempt after a
	// connection that had been listening for MaxBackoff or more is made at
	// once; one lost sooner counts as a failed attempt. Defaults
	// DefaultMinBackoff and DefaultMaxBackoff; negative is an error.
	MinBackoff, MaxBackoff time.Duration
	// ConnectTimeout bounds each attempt to connect and LISTEN. Default
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// PingInterval is how long the connection may stay silent before the
	// Listener pings it, and PingTimeout how long the ping may take: a
	// connection lost without a word (a network partition, a dead host) is
	// found within PingInterval + PingTimeout, and replaced, with the
	// invalidation that a reconnection makes. The pings also keep the
	// session from looking idle: set PingInterval below the server's
	// idle_session_timeout, if it has one. Defaults DefaultPingInterval
	// and DefaultPingTimeout.
	PingInterval, PingTimeout time.Duration
}

// Stats are a Listener's counters since New. Received counts a
// notification as it arrives; its other counters change once its
// invalidation has returned, Applied last.
type Stats struct {
	// Received counts notifications received on Channel.
	Received uint64
	// Applied counts notifications whose invalidation applied: on this
	// node before it returned, and on the fleet's through Redis and the
	// bus, at once or, if Redis was unreachable, when the node replays it
	// (see Pending).
	Applied uint64
	// Malformed counts payloads that did not parse (see ParsePayload);
	// each was answered by invalidating Namespaces and Groups.
	Malformed uint64
	// Rejected counts notifications that parsed but that the Node refused
	// (a key longer than its NodeConfig.MaxKeyBytes); each was answered by
	// invalidating its namespace.
	Rejected uint64
	// UnknownNamespaces counts notifications naming a namespace not in
	// Namespaces, applied all the same.
	UnknownNamespaces uint64
	// GapInvalidations counts invalidations of Namespaces and Groups
	// applied after a LISTEN succeeded: one per connection (the first one
	// too, unless SkipInitialInvalidation).
	GapInvalidations uint64
	// Reconnects counts LISTENs that succeeded after the first.
	Reconnects uint64
	// ConnectErrors counts attempts to connect and LISTEN that failed.
	ConnectErrors uint64
	// Disconnects counts listening connections lost: closed by the
	// server, broken, or silent past PingInterval + PingTimeout.
	Disconnects uint64
	// Pending counts Node.Invalidate calls that returned tier.ErrPending:
	// applied on this node, queued for the fleet until Redis answers.
	Pending uint64
	// InvalidateErrors counts Node.Invalidate calls that failed otherwise
	// (the Node was closed): what they named was not invalidated.
	InvalidateErrors uint64
	// LoggerPanics counts panics of Config.Logger's handler, recovered:
	// each lost the record it was handed.
	LoggerPanics uint64
}

// counters are Stats, atomically.
type counters struct {
	received, applied, malformed, rejected, unknown atomic.Uint64
	gaps, reconnects, connectErrors, disconnects    atomic.Uint64
	pending, invalidateErrors, loggerPanics         atomic.Uint64
}

// hooks are test-only event points; a production Listener has none.
type hooks struct {
	// counted runs after any counter changed.
	counted func()
	// idle runs when the connection has been silent for PingInterval,
	// before the ping.
	idle func()
	// backoff runs before each wait between attempts, with its length.
	backoff func(time.Duration)
}

// Listener listens for a PostgreSQL channel's notifications and applies
// them to a tier.Node: each payload's keys, groups or namespace are
// invalidated on every node of the fleet. It runs one goroutine, plus one
// that reads the connection while it is listening; both end with Close.
// Its methods are safe for concurrent use.
type Listener struct {
	node       *tier.Node
	connect    func(context.Context) (*pgx.Conn, error)
	channel    string
	listen     string // the LISTEN statement
	namespaces map[string]bool
	gap        []tier.Target // Namespaces and Groups
	skipFirst  bool
	log        *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
	connectTO  time.Duration
	pingEvery  time.Duration
	pingTO     time.Duration
	hooks      hooks

	ctx       context.Context // the lifetime context, cancelled by Close
	cancel    context.CancelFunc
	done      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
	c         counters

	// warned holds the unknown namespaces already warned about; only the
	// run goroutine touches it.
	warned map[string]bool
	// listened: a LISTEN has succeeded. Only the run goroutine touches it,
	// and the one that takes it over (see run).
	listened bool
}

// New checks cfg and starts a Listener: it connects, LISTENs on
// cfg.Channel, invalidates cfg.Namespaces and cfg.Groups (unless
// cfg.SkipInitialInvalidation), and then applies each notification, in
// the background; Ready says when it first listens. It does no I/O
// itself: a database that does not answer is retried, with backoff, until
// Close. An invalid cfg is an error wrapping ErrConfig.
func New(cfg Config) (*Listener, error) {
	return newListener(cfg, hooks{})
}

func newListener(cfg Config, h hooks) (*Listener, error) {
	bad := func(format string, args ...any) (*Listener, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if cfg.Node == nil {
		return bad("nil Node")
	}
	l := &Listener{
		node:       cfg.Node,
		connect:    cfg.Connect,
		channel:    cfg.Channel,
		namespaces: make(map[string]bool, len(cfg.Namespaces)),
		skipFirst:  cfg.SkipInitialInvalidation,
		minBackoff: orDefault(cfg.MinBackoff, DefaultMinBackoff),
		maxBackoff: orDefault(cfg.MaxBackoff, DefaultMaxBackoff),
		connectTO:  orDefault(cfg.ConnectTimeout, DefaultConnectTimeout),
		pingEvery:  orDefault(cfg.PingInterval, DefaultPingInterval),
		pingTO:     orDefault(cfg.PingTimeout, DefaultPingTimeout),
		hooks:      h,
		done:       make(chan struct{}),
		ready:      make(chan struct{}),
		warned:     map[string]bool{},
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"MinBackoff", cfg.MinBackoff}, {"MaxBackoff", cfg.MaxBackoff}, {"ConnectTimeout", cfg.ConnectTimeout},
		{"PingInterval", cfg.PingInterval}, {"PingTimeout", cfg.PingTimeout},
	} {
		if d.d < 0 {
			return bad("negative %s %v", d.name, d.d)
		}
	}
	if l.minBackoff > l.maxBackoff {
		return bad("MinBackoff %v above MaxBackoff %v", l.minBackoff, l.maxBackoff)
	}
	if l.channel == "" {
		l.channel = DefaultChannel
	}
	q, err := quoteIdent(l.channel)
	if err != nil {
		return bad("Channel %q: %v", l.channel, err)
	}
	l.listen = "LISTEN " + q
	l.log = safelog.New(cfg.Logger, func() { l.count(&l.c.loggerPanics, 1) })
	if len(cfg.Namespaces) == 0 {
		return bad("no Namespaces: a gap in the connection could not be closed")
	}
	for i, ns := range cfg.Namespaces {
		if err := checkNamespace(ns); err != nil {
			return bad("Namespaces[%d]: %v", i, err)
		}
		if !l.namespaces[ns] {
			l.namespaces[ns] = true
			l.gap = append(l.gap, tier.Namespace(ns))
		}
	}
	for i, g := range cfg.Groups {
		if err := checkGroup(g); err != nil {
			return bad("Groups[%d]: %v", i, err)
		}
	}
	if len(cfg.Groups) > 0 {
		l.gap = append(l.gap, tier.Groups(append([]string(nil), cfg.Groups...)...))
	}
	if l.connect == nil {
		if cfg.ConnString == "" {
			return bad("neither ConnString nor Connect")
		}
		pc, err := pgx.ParseConfig(cfg.ConnString)
		if err != nil {
			// pgx's message masks the password.
			return bad("ConnString: %w", err)
		}
		if _, ok := pc.RuntimeParams["application_name"]; !ok {
			pc.RuntimeParams["application_name"] = DefaultApplicationName
		}
		l.connect = func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, pc.Copy())
		}
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	go l.run(0, false)
	return l, nil
}

// orDefault returns d, or def if d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Ready returns a channel closed once the Listener first listens: its
// LISTEN succeeded and, unless SkipInitialInvalidation, Namespaces and
// Groups were invalidated. From then on, every write committed is either
// notified to it or covered by the invalidation of its next
// reconnection. A program can wait for it before serving.
func (l *Listener) Ready() <-chan struct{} {
	return l.ready
}

// Close stops the Listener: it cancels what it was doing, closes its
// connection and returns once its goroutines have ended. It is idempotent
// and returns nil.
func (l *Listener) Close() error {
	l.cancel()
	<-l.done
	return nil
}

// Stats returns the Listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Received:          l.c.received.Load(),
		Applied:           l.c.applied.Load(),
		Malformed:         l.c.malformed.Load(),
		Rejected:          l.c.rejected.Load(),
		UnknownNamespaces: l.c.unknown.Load(),
		GapInvalidations:  l.c.gaps.Load(),
		Reconnects:        l.c.reconnects.Load(),
		ConnectErrors:     l.c.connectErrors.Load(),
		Disconnects:       l.c.disconnects.Load(),
		Pending:           l.c.pending.Load(),
		InvalidateErrors:  l.c.invalidateErrors.Load(),
		LoggerPanics:      l.c.loggerPanics.Load(),
	}
}

// count adds n to counter c, and tells the test hook.
func (l *Listener) count(c *atomic.Uint64, n uint64) {
	if n == 0 {
		return
	}
	c.Add(n)
	if l.hooks.counted != nil {
		l.hooks.counted()
	}
}

// run connects, listens and reconnects until Close, after failures
// attempts failed in a row. A callback that ends its goroutine
// (runtime.Goexit in Connect, or in the Logger's handler) ends a session
// as a panic does, and run's goroutine with it: a new one takes over
// (exited), after the backoff of one more failure, so that the Listener
// never stops listening before Close.
func (l *Listener) run(failures int, exited bool) {
	returned := false
	defer func() {
		if returned || l.ctx.Err() != nil {
			close(l.done)
			return
		}
		go l.run(failures+1, true)
	}()
	if exited {
		l.log.Error("pgnotify: a callback ended the Listener's goroutine (runtime.Goexit); a new one took over", "channel", l.channel)
		if !l.pause(failures) {
			returned = true
			return
		}
	}
	for {
		start := time.Now()
		ok := l.session(!l.listened)
		if l.ctx.Err() != nil {
			returned = true
			return
		}
		if ok && time.Since(start) >= l.maxBackoff {
			// A connection that listened for a while and was lost is
			// replaced at once: the gap closes with the next LISTEN.
			failures = 0
		} else {
			// One lost soon after its LISTEN counts as a failure, so that
			// a server that drops every connection at once does not get
			// a reconnection, and a fleet-wide invalidation, in a loop.
			failures++
		}
		if !l.pause(failures) {
			returned = true
			return
		}
	}
}

// pause waits the backoff after failures failed attempts in a row. It
// returns false if the Listener closed meanwhile.
func (l *Listener) pause(failures int) bool {
	d := l.backoff(failures)
	if l.hooks.backoff != nil {
		l.hooks.backoff(d)
	}
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// backoff returns the wait before the next attempt after failures failed
// ones: none after none, then MinBackoff doubling up to MaxBackoff, each
// drawn from its upper half.
func (l *Listener) backoff(failures int) time.Duration {
	if failures == 0 {
		return 0
	}
	d := l.minBackoff
	for i := 1; i < failures && d < l.maxBackoff; i++ {
		if d > l.maxBackoff/2 {
			d = l.maxBackoff
			break
		}
		d *= 2
	}
	d = min(d, l.maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// session runs one connection: it connects, LISTENs, invalidates what the
// gap before may have hidden, and applies notifications until the
// connection is lost or the Listener closes. It reports whether LISTEN
// succeeded. A panic (of Connect, or of this package) is recovered, logged
// and ends the session, as a lost connection does.
func (l *Listener) session(first bool) (listened bool) {
	returned := false
	defer func() {
		p := recover()
		if p == nil && (returned || l.ctx.Err() != nil) {
			return
		}
		// A panic, or a callback that ended the goroutine (runtime.Goexit,
		// logged by the goroutine that takes over: see run): a failed
		// attempt, or a lost connection.
		if p != nil {
			l.log.Error("pgnotify: panic; reconnecting", "channel", l.channel, "panic", p, "stack", string(debug.Stack()))
		}
		if listened {
			l.count(&l.c.disconnects, 1)
		} else {
			l.count(&l.c.connectErrors, 1)
		}
	}()
	l.serve(first, &listened)
	returned = true
	return listened
}

// serve is session's work; it sets *listened once LISTEN succeeded, and
// notes it in l.listened, which outlasts a goroutine that a callback ends.
func (l *Listener) serve(first bool, listened *bool) {
	conn, err := l.dial()
	if err != nil {
		if l.ctx.Err() == nil {
			l.log.Warn("pgnotify: cannot listen; retrying", "channel", l.channel, "err", err)
			l.count(&l.c.connectErrors, 1)
		}
		return
	}
	defer func() {
		// The lifetime context may be done: closing only sends Terminate,
		// bounded here.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	*listened, l.listened = true, true
	if first {
		l.log.Debug("pgnotify: listening", "channel", l.channel)
	} else {
		l.count(&l.c.reconnects, 1)
		l.log.Info("pgnotify: listening again; invalidating the namespaces", "channel", l.channel)
	}
	// Every write committed from here on is notified to this connection.
	// One committed before, since the last connection was lost (or ever,
	// on the first), may have been missed: its entries are invalidated
	// now, after the LISTEN, so that none is left out.
	if !first || !l.skipFirst {
		if l.invalidate(l.gap, "connection") == nil {
			l.count(&l.c.gaps, 1)
		}
	}
	l.readyOnce.Do(func() { close(l.ready) })

	// The reader receives, the session applies: notifications that arrive
	// while one batch is applied make up the next, one Invalidate for all.
	queue := make(chan received, queueLen)
	rctx, rcancel := context.WithCancel(l.ctx)
	var rerr error
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		defer close(queue)
		defer func() {
			if p := recover(); p != nil {
				rerr = fmt.Errorf("pgnotify: panic reading the connection: %v\n%s", p, debug.Stack())
			}
		}()
		rerr = l.read(rctx, conn, queue)
	}()
	defer func() {
		rcancel()
		<-rdone
	}()
	for {
		batch, open := next(queue)
		if len(batch) > 0 && l.ctx.Err() == nil {
			l.apply(batch)
		}
		if !open {
			break
		}
	}
	<-rdone
	if l.ctx.Err() != nil {
		return
	}
	l.count(&l.c.disconnects, 1)
	l.log.Warn("pgnotify: connection lost; reconnecting", "channel", l.channel, "err", rerr)
	return
}

// dial connects and LISTENs, within ConnectTimeout.
func (l *Listener) dial() (conn *pgx.Conn, err error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.connectTO)
	defer cancel()
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("pgnotify: Connect panicked: %v", p)
			}
		}()
		conn, err = l.connect(ctx)
	}()
	if err == nil && conn == nil {
		err = errors.New("pgnotify: Connect returned no connection and no error")
	}
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if _, err := conn.Exec(ctx, l.listen); err != nil {
		_ = conn.Close(ctx)
		return nil, fmt.Errorf("%s: %w", l.listen, err)
	}
	return conn, nil
}

// received is one notification read from the connection: its payload,
// or lost if the connection did not hand it over.
type received struct {
	payload string
	pid     uint32
	lost    bool
}

// read receives notifications on conn and queues those of the channel,
// until ctx is done or the connection fails. A silence of PingInterval is
// broken by a ping, so that a dead connection is found.
func (l *Listener) read(ctx context.Context, conn *pgx.Conn, queue chan<- received) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, l.pingEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		var r *received
		switch {
		case n != nil && n.Channel == l.channel:
			r = &received{payload: n.Payload, pid: n.PID}
		case n == nil && err == nil:
			// The connection hands notifications to an OnNotification of
			// its own: this one's payload is lost to us.
			r = &received{lost: true}
		}
		if r != nil {
			l.count(&l.c.received, 1)
			select {
			case queue <- *r:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case wctx.Err() != nil && !conn.IsClosed():
			// Silent for PingInterval: prove the connection alive.
			if l.hooks.idle != nil {
				l.hooks.idle()
			}
			pctx, pcancel := context.WithTimeout(ctx, l.pingTO)
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("ping: %w", err)
			}
		default:
			return err
		}
	}
}

// errNoPayload is the parse error of a notification whose payload the
// connection did not hand over.
var errNoPayload = fmt.Errorf("%w: the connection did not hand over the payload (does Connect set OnNotification?)", ErrPayload)

// next returns the notifications queued, at least one unless the queue is
// closed (open false), at most a batch's worth.
func next(queue <-chan received) (batch []received, open bool) {
	r, ok := <-queue
	if !ok {
		return nil, false
	}
	batch = append(batch, r)
	size := len(r.payload)
	for len(batch) < maxBatch && size < maxBatchBytes {
		select {
		case r, ok := <-queue:
			if !ok {
				return batch, false
			}
			batch = append(batch, r)
			size += len(r.payload)
		default:
			return batch, true
		}
	}
	return batch, true
}

// apply invalidates what a batch of notifications names, with one
// Node.Invalidate call for all; a payload that does not parse adds
// Namespaces and Groups.
func (l *Listener) apply(batch []received) {
	var (
		targets   []tier.Target
		parsed    []Notification
		malformed uint64
		unknown   uint64
	)
	for _, r := range batch {
		n, err := ParsePayload([]byte(r.payload))
		if r.lost {
			err = errNoPayload
		}
		if err != nil {
			malformed++
			l.log.Warn("pgnotify: malformed notification; invalidating every configured namespace",
				"channel", l.channel, "pid", r.pid, "payload", truncate(r.payload, 256), "err", err)
			continue
		}
		if !l.namespaces[n.Namespace] {
			unknown++
			l.warnUnknown(n.Namespace)
		}
		parsed = append(parsed, n)
		targets = append(targets, n.targets()...)
	}
	if malformed > 0 {
		targets = append(targets, l.gap...)
	}
	applied := uint64(len(parsed))
	err := l.invalidate(targets, "notification")
	if err != nil && errors.Is(err, errRefused) {
		// A target the node refused fails the whole call before anything
		// is done: apply the notifications one by one, and answer the one
		// refused by invalidating its namespace.
		applied, err = 0, nil
		for _, n := range parsed {
			err := l.invalidate(n.targets(), "notification")
			if errors.Is(err, errRefused) {
				l.log.Warn("pgnotify: notification refused by the node; invalidating its namespace",
					"channel", l.channel, "namespace", n.Namespace, "err", err)
				l.count(&l.c.rejected, 1)
				err = l.invalidate([]tier.Target{tier.Namespace(n.Namespace)}, "refused notification")
			}
			if err == nil {
				applied++
			}
		}
		if malformed > 0 {
			_ = l.invalidate(l.gap, "malformed notification")
		}
	}
	// Applied last: a test that waits for it sees the rest counted.
	l.count(&l.c.unknown, unknown)
	l.count(&l.c.malformed, malformed)
	if err == nil {
		l.count(&l.c.applied, applied)
	}
}

// targets returns what n names, as Node.Invalidate's targets.
func (n Notification) targets() []tier.Target {
	var t []tier.Target
	if n.All {
		t = append(t, tier.Namespace(n.Namespace))
	} else if len(n.Keys) > 0 {
		t = append(t, tier.Keys(n.Namespace, n.Keys...))
	}
	if len(n.Groups) > 0 {
		t = append(t, tier.Groups(n.Groups...))
	}
	return t
}

// errRefused marks an invalidation that the node refused for one of its
// targets, before doing anything.
var errRefused = errors.New("refused")

// invalidate calls Node.Invalidate and counts its outcome. It returns nil
// for an invalidation applied (tier.ErrPending included: it applied here
// and is queued for the fleet); an error wrapping errRefused if the node
// refused a target; another error, logged and counted, if the node is
// closed; ctx's error if the Listener is closing.
func (l *Listener) invalidate(targets []tier.Target, why string) error {
	if len(targets) == 0 {
		return nil
	}
	err := l.node.Invalidate(l.ctx, targets...)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, tier.ErrPending):
		// Logged before counted: whoever sees the count sees the record.
		l.log.Warn("pgnotify: invalidation applied here, queued for the fleet", "channel", l.channel, "cause", why, "err", err)
		l.count(&l.c.pending, 1)
		return nil
	case l.ctx.Err() != nil:
		return l.ctx.Err()
	case errors.Is(err, tier.ErrClosed):
		l.log.Error("pgnotify: invalidation failed", "channel", l.channel, "cause", why, "err", err)
		l.count(&l.c.invalidateErrors, 1)
		return err
	}
	// Node.Invalidate checks its targets before it does anything, and has
	// no other way to fail.
	return fmt.Errorf("%w: %w", errRefused, err)
}

// warnUnknown warns, once per namespace (for the first few), of a
// notification naming a namespace not in Config.Namespaces.
func (l *Listener) warnUnknown(ns string) {
	if l.warned[ns] || len(l.warned) >= maxWarned {
		return
	}
	l.warned[ns] = true
	l.log.Warn("pgnotify: notification names a namespace not in Config.Namespaces; applied, but a gap would leave it stale: list it",
		"channel", l.channel, "namespace", ns)
}

// truncate returns s cut to at most n bytes, for a log line.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
