package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/wait"
)

// Reason says why a subscriber told its handler to drop L1.
type Reason int

const (
	// Disconnected: the subscription's connection failed; messages
	// published until it is back are lost (R15, R16).
	Disconnected Reason = iota + 1
	// Gap: a sequence number was skipped, repeated or reordered (R15, R19).
	Gap
	// LeaseLapsed: no ping was answered within the lease (R15, R27).
	LeaseLapsed
	// EpochChanged: the fleet epoch key vanished or changed: Redis was
	// flushed or restarted without persistence (R23).
	EpochChanged
	// Flushed: a node asked the fleet to drop every L1.
	Flushed
)

func (r Reason) String() string {
	switch r {
	case Disconnected:
		return "disconnected"
	case Gap:
		return "sequence gap"
	case LeaseLapsed:
		return "lease lapsed"
	case EpochChanged:
		return "fleet epoch changed"
	case Flushed:
		return "flushed"
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// Handler applies what the bus delivers. Its methods are called from the
// subscriber's goroutines, never concurrently with each other, and must not
// block on I/O.
type Handler interface {
	// Apply evicts the keys of a message from another node. Messages come
	// in sequence order.
	Apply(m *Message)
	// Drop evicts everything: the node can no longer prove that its L1 is
	// fresh. If revoke is true the lease ends too: L1 must not serve until
	// the next Renew.
	Drop(reason Reason, revoke bool)
	// Renew extends the lease: every message published before sentAt has
	// been applied, and the fleet epoch is unchanged.
	Renew(sentAt time.Time)
}

// Hooks are test-only fault and observation points of a Subscriber. Nil
// funcs are skipped.
type Hooks struct {
	// BeforeSubscribe runs before the first SUBSCRIBE (R18).
	BeforeSubscribe func()
	// DropMessage discards a received message as if it had been lost.
	DropMessage func(payload []byte) bool
	// DropPong discards a received pong as if the subscription were stuck.
	DropPong func() bool
	// AfterReceiveError runs after the subscription's connection failed,
	// before it reconnects.
	AfterReceiveError func(err error)
	// Applied runs after a message was handled (applied, or skipped as the
	// node's own).
	Applied func(m *Message)
	// Dropped runs after the handler was told to drop L1.
	Dropped func(reason Reason)
	// Renewed runs after the lease was renewed.
	Renewed func(sentAt time.Time)
	// Ticked runs after each round of the lease loop (a lapse check and a
	// ping, every LeaseTTL/4), so that a test can wait for rounds to pass
	// instead of for time to pass.
	Ticked func()
}

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// Client is the node's Redis client; the subscription takes a
	// connection of its own from it.
	Client redis.UniversalClient
	// Channel is the bus channel.
	Channel string
	// Sharded makes Channel a shard channel (SSUBSCRIBE, Redis 7), for a
	// Redis Cluster, where the bus's messages are published with SPUBLISH
	// in the slot of Channel: the subscription goes to the master that
	// serves that slot, and the lease's pings prove delivery there. When
	// the slot moves (a reshard) Redis ends the subscription; the
	// subscriber then counts a disconnect, drops L1, and subscribes again
	// where the slot went. The WakeChannel stays a classic channel, which a
	// cluster broadcasts to every node; it must hash to Channel's slot, so
	// that the one connection goes to Channel's master.
	Sharded bool
	// WakeChannel, if set, is a second channel subscribed on the same
	// connection, whose messages go to Wake as they come: no order, no
	// sequence, no lease, and nothing lost but latency if one is missed.
	// One connection serves both, so a node holds one subscription.
	WakeChannel string
	Wake        func(payload string)
	// EpochKey holds the fleet epoch token.
	EpochKey string
	// SeqKey, if set, is the counter the publishers draw sequence numbers
	// from. The subscriber then reads it before every subscription and
	// before every ping, and renews the lease from a ping only once it has
	// received every message numbered up to what the counter held when the
	// ping was about to be sent: the proof of delivery no longer rests on
	// which server answered the ping. On a cluster the subscription can
	// land on a replica of the bus's shard (a client whose slot map is out
	// of date after a failover), which relays the master's messages late,
	// or not at all until it has learnt its new role, while answering pings
	// at once (R53). Without SeqKey, the pong alone proves delivery, which
	// holds when the subscription is on the server that publishes.
	SeqKey string
	// Self is this node's ID: its own messages are not applied again.
	Self NodeID
	// LeaseTTL is how long one answered ping lets L1 serve. Required.
	LeaseTTL time.Duration
	// Handler receives what the bus delivers. Required.
	Handler Handler
	// Logger, default discard.
	Logger *slog.Logger
	// Hooks, nil in production.
	Hooks *Hooks
}

// Counters are a Subscriber's event counts.
type Counters struct {
	Messages, Applied, Garbage, Gaps, Disconnects, Lapses, EpochChanges, Renewals uint64
	// Replacements counts subscription connections replaced for silence.
	Replacements uint64
}

// Subscriber keeps one node's subscription to the bus and its L1 lease.
type Subscriber struct {
	cfg  SubscriberConfig
	log  *slog.Logger
	ps   *redis.PubSub
	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	pingNow chan struct{}
	pongs   chan pong

	mu        sync.Mutex // serialises handler calls and the fields below
	gen       uint64     // connection generation: pongs of older ones are void
	confirmed bool       // the current connection's subscription is confirmed
	lastSeq   uint64     // 0: no message since (re)subscribing
	// base is SeqKey's value read before the current subscription was
	// asked for (0 without SeqKey): messages up to it were published
	// before, and the first one after it must be base+1. nextBase is the
	// value read for the subscription asked for next.
	base, nextBase uint64
	// lagging is when a pong first came back before the messages its ping
	// had to cover (zero: not lagging): a connection that lags for a whole
	// lease is replaced.
	lagging  time.Time
	leased   bool // a lease was granted and has not been revoked
	leaseEnd time.Time
	epoch    string
	// retired is a subscription connection being replaced: it went silent
	// (no message, pong or error) while no lease ran; replaced is when the
	// current one was made.
	retired  *redis.PubSub
	replaced time.Time
	heard    atomic.Int64 // when Receive last returned: nanoseconds since born
	clock    atomic.Pointer[ClockSample]
	born     time.Time // monotonic origin of heard

	pingID atomic.Uint64
	sentMu sync.Mutex
	sent   map[uint64]sentPing

	n struct {
		messages, applied, garbage, gaps, disconnects, lapses, epochs, renewals, replaced atomic.Uint64
	}
}

type sentPing struct {
	at  time.Time
	gen uint64
	seq uint64 // SeqKey's value read after at, before the ping was sent
}

type pong struct {
	sentPing
	ok bool
}

// NewSubscriber starts subscribing in the background; Close stops it.
func NewSubscriber(life context.Context, cfg SubscriberConfig) (*Subscriber, error) {
	if cfg.Client == nil || cfg.Handler == nil || cfg.LeaseTTL <= 0 || cfg.Channel == "" || cfg.EpochKey == "" {
		return nil, errors.New("bus: subscriber needs a client, a handler, a channel, an epoch key and a lease")
	}
	s := &Subscriber{
		cfg:     cfg,
		log:     cfg.Logger,
		pingNow: make(chan struct{}, 1),
		pongs:   make(chan pong, 16),
		sent:    make(map[uint64]sentPing),
		born:    time.Now(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.cfg.Hooks == nil {
		s.cfg.Hooks = &Hooks{}
	}
	s.life, s.stop = context.WithCancel(life)
	s.wg.Add(2)
	go s.receive(0)
	go s.keepLease(0)
	return s, nil
}

// errHandlerExited is why a subscription is renewed after its Handler (or
// a hook) ended the goroutine that received for it (runtime.Goexit).
var errHandlerExited = errors.New("bus: the handler ended the subscriber's goroutine")

// exitWait is how long a goroutine of the subscriber that the Handler ended
// waits before it starts again: after waited (0 at first), doubling from 10
// ms to a second, so that a Handler that always ends the goroutine is not
// called in a loop.
func exitWait(waited time.Duration) time.Duration {
	return min(max(2*waited, 10*time.Millisecond), time.Second)
}

// supervise runs loop, the work of one of the subscriber's goroutines,
// until the subscriber closes. A goroutine started after the Handler (or
// a hook) ended its predecessor (after > 0) first calls resume, which
// waits that long and reports whether the subscriber is still open. If
// loop does not return (R37), start begins the goroutine again, after
// exitWait(after), unless the subscriber is closing; wg counts the new
// one before it lets go of this one, so that Close cannot miss it.
func (s *Subscriber) supervise(after time.Duration, start func(time.Duration), resume func(time.Duration) bool, loop func()) {
	defer s.wg.Done()
	returned := false
	defer func() {
		if !returned && s.life.Err() == nil {
			s.wg.Add(1)
			go start(exitWait(after))
		}
	}()
	if after == 0 || resume(after) {
		loop()
	}
	returned = true
}

// Close stops the subscription and waits for its goroutines. Idempotent.
func (s *Subscriber) Close() {
	s.stop()
	s.mu.Lock()
	if s.ps != nil {
		_ = s.ps.Close() // unblocks Receive
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Counters returns the subscriber's event counts.
func (s *Subscriber) Counters() Counters {
	return Counters{
		Messages: s.n.messages.Load(), Applied: s.n.applied.Load(), Garbage: s.n.garbage.Load(),
		Gaps: s.n.gaps.Load(), Disconnects: s.n.disconnects.Load(), Lapses: s.n.lapses.Load(),
		EpochChanges: s.n.epochs.Load(), Renewals: s.n.renewals.Load(), Replacements: s.n.replaced.Load(),
	}
}

// receive subscribes and applies what arrives until the subscriber closes.
// If the Handler ends its goroutine, a new one takes over after a pause
// (supervise), as after a lost connection: the old connection is closed, L1
// dropped and the lease ended, since the message being applied may be half
// applied, and the new goroutine subscribes again.
func (s *Subscriber) receive(after time.Duration) {
	s.supervise(after, s.receive, s.abandon, s.receiveLoop)
}

// abandon ends, after a pause, the subscription of a receiving goroutine
// that the Handler ended: its connection is closed and L1 dropped, as
// after a lost connection. It returns false if the subscriber is closing.
func (s *Subscriber) abandon(after time.Duration) bool {
	if wait.Sleep(s.life, after) != nil {
		return false
	}
	s.mu.Lock()
	ps := s.ps
	s.ps, s.retired = nil, nil
	s.mu.Unlock()
	if ps != nil {
		_ = ps.Close()
	}
	s.disconnected(errHandlerExited)
	return s.life.Err() == nil
}

// receiveLoop is receive's work: it returns when the subscriber closes.
func (s *Subscriber) receiveLoop() {
	if h := s.cfg.Hooks.BeforeSubscribe; h != nil {
		h()
	}
	if !s.readBase() {
		return
	}
	s.mu.Lock()
	if s.life.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.ps = s.subscribe()
	s.replaced = time.Now()
	ps := s.ps
	s.mu.Unlock()
	s.hear()
	backoff := 10 * time.Millisecond
	for {
		msg, err := ps.Receive(s.life)
		if s.life.Err() != nil {
			return
		}
		s.hear()
		if err != nil {
			// A connection retired for silence: subscribe on a new one at
			// once (the old one's Close unblocked this Receive).
			s.mu.Lock()
			retired := s.retired == ps
			s.mu.Unlock()
			if retired {
				s.disconnected(err)
				if !s.readBase() {
					return
				}
				s.mu.Lock()
				s.ps = s.subscribe()
				s.replaced, s.retired = time.Now(), nil
				ps = s.ps
				s.mu.Unlock()
				continue
			}
		}
		var reply redis.Error
		if errors.As(err, &reply) {
			s.log.Warn("tiercache bus: error reply on the subscription", "err", err)
			s.mu.Lock()
			subscribed := s.confirmed
			s.mu.Unlock()
			if subscribed {
				// Say -BUSY to a ping while a script runs: the connection and
				// the subscription are intact and in order. If pings keep
				// failing, the lease lapses on its own.
				continue
			}
			// The subscription itself was refused (SUBSCRIBE answered -BUSY,
			// or the handshake of a new connection failed): back off, and
			// ask again, or nothing ever will.
			if wait.Sleep(s.life, backoff) != nil {
				return
			}
			backoff = min(2*backoff, time.Second)
			if !s.readBase() {
				return
			}
			s.resubscribe(ps) // a failure shows up in Receive
			continue
		}
		if err != nil {
			s.disconnected(err)
			if h := s.cfg.Hooks.AfterReceiveError; h != nil {
				h(err)
			}
			// The next Receive reconnects and resubscribes (a ping cannot:
			// none is sent until the subscription is confirmed); do not
			// spin while Redis is unreachable.
			if wait.Sleep(s.life, backoff) != nil {
				return
			}
			backoff = min(2*backoff, time.Second)
			if !s.readBase() {
				return
			}
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			switch {
			case m.Channel != s.cfg.Channel:
			case m.Kind == "subscribe" || m.Kind == "ssubscribe":
				s.subscribed()
			case m.Kind == "sunsubscribe":
				// Redis ended the subscription: the channel's slot moved to
				// another master (a reshard or a failover's aftermath). What
				// is published there until this node subscribes again is
				// lost to it: drop, and subscribe again on a new connection,
				// which goes to the slot's master as the client now knows it.
				s.mu.Lock()
				s.retired = ps
				s.mu.Unlock()
				if c, ok := s.cfg.Client.(*redis.ClusterClient); ok {
					c.ReloadState(s.life)
				}
				_ = ps.Close() // the next Receive fails, and the retired path takes over
			}
		case *redis.Message:
			if m.Channel == s.cfg.WakeChannel && s.cfg.Wake != nil {
				s.cfg.Wake(m.Payload)
				continue
			}
			s.message([]byte(m.Payload))
		case *redis.Pong:
			s.pong(m.Payload)
		}
	}
}

// readBase reads SeqKey for the subscription about to be asked for (see
// SubscriberConfig.SeqKey), retrying with backoff while Redis does not
// answer, each failure counted as a failed reconnect: no subscription is
// asked for without it. It returns false once the subscriber is closing.
func (s *Subscriber) readBase() bool {
	if s.cfg.SeqKey == "" {
		return s.life.Err() == nil
	}
	backoff := 10 * time.Millisecond
	for {
		seq, err := s.readSeq()
		if err == nil {
			s.mu.Lock()
			s.nextBase = seq
			s.mu.Unlock()
			return true
		}
		if s.life.Err() != nil {
			return false
		}
		// As a failed reconnect: Redis does not answer, and nothing is
		// subscribed meanwhile.
		s.disconnected(err)
		if h := s.cfg.Hooks.AfterReceiveError; h != nil {
			h(err)
		}
		if wait.Sleep(s.life, backoff) != nil {
			return false
		}
		backoff = min(2*backoff, time.Second)
	}
}

// readSeq returns SeqKey's value, 0 if it is missing.
func (s *Subscriber) readSeq() (uint64, error) {
	ctx, cancel := context.WithTimeout(s.life, s.cfg.LeaseTTL)
	defer cancel()
	v, err := s.cfg.Client.Get(ctx, s.cfg.SeqKey).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return v, err
}

// subscribe returns a new subscription to the bus channel and the wake
// channel.
func (s *Subscriber) subscribe() *redis.PubSub {
	var ps *redis.PubSub
	if s.cfg.Sharded {
		ps = s.cfg.Client.SSubscribe(s.life)
	} else {
		ps = s.cfg.Client.Subscribe(s.life)
	}
	s.resubscribe(ps)
	return ps
}

// resubscribe asks ps for the bus channel and the wake channel. A failure
// shows up in Receive.
func (s *Subscriber) resubscribe(ps *redis.PubSub) {
	wakes := s.cfg.WakeChannel != "" && s.cfg.Wake != nil
	switch {
	case !s.cfg.Sharded && wakes:
		_ = ps.Subscribe(s.life, s.cfg.Channel, s.cfg.WakeChannel)
	case !s.cfg.Sharded:
		_ = ps.Subscribe(s.life, s.cfg.Channel)
	default:
		// The bus channel first: a cluster client sends the connection to
		// the master of its first channel's slot.
		_ = ps.SSubscribe(s.life, s.cfg.Channel)
		if wakes {
			_ = ps.Subscribe(s.life, s.cfg.WakeChannel)
		}
	}
}

// disconnected drops L1 and ends the lease: whatever is published until the
// subscription is back is lost to this node.
func (s *Subscriber) disconnected(err error) {
	s.n.disconnects.Add(1)
	s.log.Warn("tiercache bus: subscription lost", "err", err)
	s.mu.Lock()
	defer s.mu.Unlock() // the handler may end the goroutine (R37)
	s.gen++
	s.confirmed = false
	s.lastSeq = 0
	s.dropLocked(Disconnected, true)
}

// subscribed starts a new generation: L1 was dropped when the previous
// connection failed (or was never filled), and the lease is renewed by the
// first ping answered on this connection (R18).
func (s *Subscriber) subscribed() {
	func() {
		s.mu.Lock()
		defer s.mu.Unlock() // the handler may end the goroutine (R37)
		s.gen++
		if s.confirmed || s.leased {
			// A confirmation without a failure seen first: treat it as one.
			s.n.disconnects.Add(1)
			s.dropLocked(Disconnected, true)
		}
		s.confirmed = true
		s.lastSeq = 0
		s.base = s.nextBase
		s.lagging = time.Time{}
	}()
	select {
	case s.pingNow <- struct{}{}:
	default:
	}
}

func (s *Subscriber) message(payload []byte) {
	if h := s.cfg.Hooks.DropMessage; h != nil && h(payload) {
		return
	}
	s.n.messages.Add(1)
	m, err := Decode(payload)
	if err != nil {
		// A stranger's bytes on our channel: not ours to act on.
		s.n.garbage.Add(1)
		s.log.Debug("tiercache bus: ignoring a malformed message", "err", err)
		return
	}
	s.take(m)
	if h := s.cfg.Hooks.Applied; h != nil {
		h(m)
	}
}

// take notes m's sequence number and applies m, under the lock, which is
// released however the handler ends: a handler that ends the goroutine
// (runtime.Goexit) must not keep Close waiting for the lock (R37).
func (s *Subscriber) take(m *Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last := max(s.lastSeq, s.base); last != 0 && m.Seq != last+1 {
		// Lost, repeated or reordered: delete-only messages commute, but a
		// skipped number means an invalidation this node never saw.
		s.n.gaps.Add(1)
		s.dropLocked(Gap, false)
	}
	s.lastSeq = m.Seq
	switch {
	case m.Origin == s.cfg.Self:
		// Applied locally before the publisher returned.
	case m.Kind == KindFlush:
		s.dropLocked(Flushed, false)
	default:
		s.cfg.Handler.Apply(m)
		s.n.applied.Add(1)
	}
}

// pong hands an answered ping to keepLease, which checks the fleet epoch
// off this goroutine so that messages keep flowing.
func (s *Subscriber) pong(data string) {
	if h := s.cfg.Hooks.DropPong; h != nil && h() {
		return
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(data, "tc-lease-"), 10, 64)
	if err != nil {
		return
	}
	s.sentMu.Lock()
	p, ok := s.sent[id]
	for k := range s.sent {
		if k <= id {
			delete(s.sent, k)
		}
	}
	s.sentMu.Unlock()
	if !ok {
		return
	}
	select {
	case s.pongs <- pong{sentPing: p, ok: true}:
	case <-s.life.Done():
	}
}

// keepLease pings the subscription every quarter of the lease, renews the
// lease when a ping is answered and the fleet epoch is unchanged, and drops
// L1 when the lease runs out, until the subscriber closes. If the Handler
// ends its goroutine, a new one takes over after a pause (supervise);
// until then the lease is not renewed, and it lapses if the pause outlasts
// it.
func (s *Subscriber) keepLease(after time.Duration) {
	s.supervise(after, s.keepLease, func(d time.Duration) bool { return wait.Sleep(s.life, d) == nil }, s.leaseLoop)
}

// leaseLoop is keepLease's work: it returns when the subscriber closes.
func (s *Subscriber) leaseLoop() {
	t := time.NewTicker(s.cfg.LeaseTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-s.life.Done():
			return
		case <-t.C:
			s.checkLapse()
			s.ping()
			if h := s.cfg.Hooks.Ticked; h != nil {
				h()
			}
		case <-s.pingNow:
			s.ping()
		case p := <-s.pongs:
			s.renew(p.sentPing)
		}
	}
}

func (s *Subscriber) ping() {
	s.mu.Lock()
	ps, gen, ok := s.ps, s.gen, s.confirmed
	s.mu.Unlock()
	if ps == nil || !ok {
		return
	}
	now := time.Now()
	var seq uint64
	if s.cfg.SeqKey != "" {
		// Every message published before now is numbered at most seq.
		var err error
		if seq, err = s.readSeq(); err != nil {
			return // nothing this ping could prove; the next tick tries again
		}
	}
	id := s.pingID.Add(1)
	s.sentMu.Lock()
	for k, p := range s.sent {
		if now.Sub(p.at) > s.cfg.LeaseTTL {
			delete(s.sent, k) // its pong could not renew anything any more
		}
	}
	s.sent[id] = sentPing{at: now, gen: gen, seq: seq}
	s.sentMu.Unlock()
	// Bounded: a reconnect inside Ping (the client's dial and handshake)
	// must not hold the subscription's lock, and so Close, past the lease.
	// An error here shows up in Receive, which handles it.
	ctx, cancel := context.WithTimeout(s.life, s.cfg.LeaseTTL)
	defer cancel()
	_ = ps.Ping(ctx, "tc-lease-"+strconv.FormatUint(id, 10))
}

func (s *Subscriber) checkLapse() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.leased && !now.Before(s.leaseEnd) {
		s.n.lapses.Add(1)
		s.log.Warn("tiercache bus: lease lapsed; L1 off until the subscription answers")
		s.dropLocked(LeaseLapsed, true)
	}
	// A connection that stays silent (no message, no pong, no error) for a
	// lease while no lease runs may be dead without knowing it (a
	// blackhole, a dropped NAT entry): replace it, rather than wait for TCP
	// to give up, so that L1 serves again soon after the path heals. One
	// replacement per lease at most.
	silent := time.Since(s.born) - time.Duration(s.heard.Load())
	lags := !s.lagging.IsZero() && now.Sub(s.lagging) >= s.cfg.LeaseTTL
	if !s.leased && s.ps != nil && s.retired == nil && (silent >= s.cfg.LeaseTTL || lags) && now.Sub(s.replaced) >= s.cfg.LeaseTTL {
		s.retired = s.ps
		s.n.replaced.Add(1)
		if lags {
			s.log.Warn("tiercache bus: subscription lags behind the bus; replacing its connection")
			if c, ok := s.cfg.Client.(*redis.ClusterClient); ok {
				c.ReloadState(s.life) // it may sit on a replica an old slot map named
			}
		} else {
			s.log.Warn("tiercache bus: subscription silent; replacing its connection")
		}
		old := s.ps
		s.wg.Add(1)
		go func() { // Close may wait for a ping in flight on the connection
			defer s.wg.Done()
			_ = old.Close()
		}()
	}
}

// hear notes that the subscription's connection said something.
func (s *Subscriber) hear() { s.heard.Store(int64(time.Since(s.born))) }

func (s *Subscriber) renew(p sentPing) {
	epoch, err := s.fleetEpoch()
	if err != nil {
		s.log.Warn("tiercache bus: cannot read the fleet epoch; lease not renewed", "err", err)
		return
	}
	if !s.renewWith(p, epoch) {
		return
	}
	if h := s.cfg.Hooks.Renewed; h != nil {
		h(p.at)
	}
}

// renewWith renews the lease from the answered ping p and the fleet epoch
// read since, under the lock, which is released however the handler ends
// (R37), and reports whether it did.
func (s *Subscriber) renewWith(p sentPing, epoch string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.gen != s.gen || !s.confirmed {
		return false // answered on a connection that has failed since
	}
	if max(s.lastSeq, s.base) < p.seq {
		// The pong overtook messages published before the ping: the
		// subscription is on a server that relays them late (R53). No
		// renewal from this ping; one that lags for a lease is replaced.
		if s.lagging.IsZero() {
			s.lagging = time.Now()
		}
		return false
	}
	s.lagging = time.Time{}
	if s.epoch != "" && epoch != s.epoch {
		s.n.epochs.Add(1)
		s.log.Warn("tiercache bus: fleet epoch changed (Redis flushed or restarted); dropping L1")
		s.dropLocked(EpochChanged, false)
	}
	s.epoch = epoch
	s.leased = true
	s.leaseEnd = p.at.Add(s.cfg.LeaseTTL)
	s.cfg.Handler.Renew(p.at)
	s.n.renewals.Add(1)
	return true
}

// fleetEpoch reads the fleet epoch token, creating it if it is missing,
// and samples Redis's clock (TIME) in the same round trip.
func (s *Subscriber) fleetEpoch() (string, error) {
	ctx, cancel := context.WithTimeout(s.life, s.cfg.LeaseTTL)
	defer cancel()
	var b [16]byte
	_, _ = rand.Read(b[:])
	// SET NX then GET in one round trip: whichever token won is the epoch.
	pipe := s.cfg.Client.Pipeline()
	set := pipe.SetArgs(ctx, s.cfg.EpochKey, hex.EncodeToString(b[:]), redis.SetArgs{Mode: "NX", Get: true})
	clock := pipe.Time(ctx)
	start := time.Now()
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	end := time.Now()
	if t, err := clock.Result(); err == nil {
		s.clock.Store(&ClockSample{Redis: t, Start: start, End: end})
	}
	v, err := set.Result()
	if errors.Is(err, redis.Nil) {
		return hex.EncodeToString(b[:]), nil // ours was set
	}
	return v, err
}

// ClockSample relates Redis's clock to this process's monotonic clock:
// Redis's TIME was Redis when read, at some moment between Start and End
// on this process's clock. No clock of this process is compared with
// Redis's: a later instant t of this process is at least Redis + (t - End)
// on Redis's clock, and at most Redis + (t - Start), as long as neither
// clock steps.
type ClockSample struct {
	// Redis is what TIME answered.
	Redis time.Time
	// Start and End are this process's clock (with its monotonic reading)
	// when the round trip that read TIME began and ended.
	Start, End time.Time
}

// Since estimates how long before this process's instant now the instant
// t of Redis's clock was: Redis's clock at now is taken as Redis plus the
// time since the middle of the sample's round trip, so the estimate errs by
// at most half that round trip, as long as neither clock steps. A message's
// SentAt gives its delay from publish to now.
func (c ClockSample) Since(t, now time.Time) time.Duration {
	mid := c.Start.Add(c.End.Sub(c.Start) / 2)
	return c.Redis.Add(now.Sub(mid)).Sub(t)
}

// RedisClock returns the latest sample of Redis's clock, taken at each
// lease renewal, and false before the first.
func (s *Subscriber) RedisClock() (ClockSample, bool) {
	c := s.clock.Load()
	if c == nil {
		return ClockSample{}, false
	}
	return *c, true
}

func (s *Subscriber) dropLocked(reason Reason, revoke bool) {
	if revoke {
		s.leased = false
	}
	s.cfg.Handler.Drop(reason, revoke)
	if h := s.cfg.Hooks.Dropped; h != nil {
		h(reason)
	}
}
