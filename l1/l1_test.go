package l1_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/l1"
)

// TestMain fails the package if any test leaks a goroutine (ristretto's goroutines or the coarse-clock ticker).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newCache returns a Cache closed by t.Cleanup. A zero MaxBytes becomes
// 1 MiB, which keeps ristretto's counter table (and the tests) small.
func newCache(t *testing.T, cfg l1.Config) *l1.Cache {
	t.Helper()
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 20
	}
	c, err := l1.New(cfg)
	if err != nil {
		t.Fatalf("l1.New(%+v): %v", cfg, err)
	}
	t.Cleanup(c.Close)
	return c
}

// fill fills h with v under a fresh ticket and waits until ristretto has
// applied the Set.
func fill(t *testing.T, c *l1.Cache, h uint64, v any) {
	t.Helper()
	if !c.Fill(h, v, 1, time.Hour, c.Ticket(h)) {
		t.Fatalf("Fill(%#x) with a fresh ticket = false", h)
	}
	c.Wait()
}

// mustGet fails unless Get(h) hits with want.
func mustGet(t *testing.T, c *l1.Cache, h uint64, want any) {
	t.Helper()
	got, ok := c.Get(h)
	if !ok || got != want {
		t.Fatalf("Get(%#x) = %v, %v; want %v, true", h, got, ok, want)
	}
}

// mustMiss fails unless Get(h) misses.
func mustMiss(t *testing.T, c *l1.Cache, h uint64) {
	t.Helper()
	if got, ok := c.Get(h); ok {
		t.Fatalf("Get(%#x) = %v, true; want a miss", h, got)
	}
}

// TestGet_Miss proves Get of a never-filled hash misses with a nil value, on
// a cache with the default budget.
func TestGet_Miss(t *testing.T) {
	c, err := l1.New(l1.Config{})
	if err != nil {
		t.Fatalf("New with the zero Config: %v", err)
	}
	t.Cleanup(c.Close)
	got, ok := c.Get(42)
	if ok || got != nil {
		t.Fatalf("Get on empty cache = %v, %v; want nil, false", got, ok)
	}
	if d, ok := c.TTL(42); ok || d != 0 {
		t.Fatalf("TTL on empty cache = %v, %v; want 0, false", d, ok)
	}
}

// TestFill_ThenGet proves a fill under a valid ticket is served by Get, and
// only under its own hash.
func TestFill_ThenGet(t *testing.T) {
	c := newCache(t, l1.Config{})
	fill(t, c, 1, "one")
	mustGet(t, c, 1, "one")
	mustMiss(t, c, 2)
}

// TestFill_ReplacesValue proves a second fill of the same hash replaces the
// first value.
func TestFill_ReplacesValue(t *testing.T) {
	c := newCache(t, l1.Config{})
	fill(t, c, 7, "v1")
	fill(t, c, 7, "v2")
	mustGet(t, c, 7, "v2")
}

// TestFill_ReplacesBufferedFill proves the last of two fills wins when the
// first is still in ristretto's buffer as the second is made: ristretto
// alone refuses a second Set of a key it has not applied yet, keeping the
// older value. Each round fills a fresh hash twice without waiting; the
// BeforeSet hook counts the second fills that found the first pending.
func TestFill_ReplacesBufferedFill(t *testing.T) {
	var (
		c       *l1.Cache
		second  bool
		pending int
	)
	c = raceCache(t, &l1.Hooks{BeforeSet: func(h uint64) {
		if _, held := c.TTL(h); second && !held {
			pending++
		}
	}})
	const rounds = 1000
	for h := uint64(1); h <= rounds; h++ {
		second = false
		c.Fill(h, "v1", 1, time.Hour, c.Ticket(h))
		second = true
		c.Fill(h, "v2", 1, time.Hour, c.Ticket(h))
	}
	c.Wait()
	if pending == 0 {
		t.Fatalf("no second fill found the first still buffered: the test did not drive the interleaving")
	}
	for h := uint64(1); h <= rounds; h++ {
		mustGet(t, c, h, "v2")
	}
	t.Logf("%d of %d second fills found the first still buffered", pending, rounds)
}

// TestFill_OlderFillNeverReplacesNewer proves a fill put back after
// ristretto refused it cannot undo a later fill that lands between the
// put-back's check and its Set: v1 and v2 are buffered, v1 is applied, v2 is
// refused and passes the check against v1, then v3 replaces v1 in place;
// v2 must not replace v3. A round whose v1 was applied before v2 was made
// has nothing to put back and must end at v2.
func TestFill_OlderFillNeverReplacesNewer(t *testing.T) {
	var (
		c     *l1.Cache
		raced = map[uint64]bool{} // written on ristretto's goroutine, read after Wait
	)
	c = raceCache(t, &l1.Hooks{BeforePutBack: func(h uint64) {
		if !raced[h] {
			raced[h] = true
			c.Fill(h, "v3", 1, time.Hour, c.Ticket(h))
		}
	}})
	const rounds = 100
	for h := uint64(1); h <= rounds; h++ {
		c.Fill(h, "v1", 1, time.Hour, c.Ticket(h))
		c.Fill(h, "v2", 1, time.Hour, c.Ticket(h))
	}
	c.Wait()
	if len(raced) == 0 {
		t.Fatalf("no v2 was put back: the test did not drive the interleaving")
	}
	for h := uint64(1); h <= rounds; h++ {
		want := "v2"
		if raced[h] {
			want = "v3"
		}
		mustGet(t, c, h, want)
	}
}

// TestFill_RefusedWhenTicketStale proves Fill refuses, and stores nothing,
// when the ticket was invalidated before the fill (by Evict, by a Bump of the
// shared table, or by EvictAll).
func TestFill_RefusedWhenTicketStale(t *testing.T) {
	const h = 0x77
	tests := []struct {
		name       string
		invalidate func(c *l1.Cache, e *consistency.Epochs)
	}{
		{"Evict", func(c *l1.Cache, _ *consistency.Epochs) { c.Evict(h) }},
		{"EvictAll", func(c *l1.Cache, _ *consistency.Epochs) { c.EvictAll() }},
		{"SharedBump", func(_ *l1.Cache, e *consistency.Epochs) { e.Bump(h) }},
		{"SharedBumpAll", func(_ *l1.Cache, e *consistency.Epochs) { e.BumpAll() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := consistency.NewEpochs(0)
			c := newCache(t, l1.Config{Epochs: e})
			tk := c.Ticket(h)
			tc.invalidate(c, e)
			if c.Fill(h, "stale", 1, time.Hour, tk) {
				t.Fatalf("Fill with a stale ticket = true")
			}
			c.Wait()
			mustMiss(t, c, h)
			if _, ok := c.TTL(h); ok {
				t.Fatalf("a refused fill left an entry in ristretto")
			}
		})
	}
}

// TestEvict_HidesEntry proves Evict makes a filled entry invisible at once
// and removes it, while other stripes keep their entries.
func TestEvict_HidesEntry(t *testing.T) {
	c := newCache(t, l1.Config{Epochs: consistency.NewEpochs(16)})
	fill(t, c, 0x10, "a")
	fill(t, c, 0x11, "b") // another stripe
	c.Evict(0x10)
	mustMiss(t, c, 0x10)
	if _, ok := c.TTL(0x10); ok {
		t.Fatalf("TTL reports the evicted entry")
	}
	mustGet(t, c, 0x11, "b")
	// A fill with a ticket taken after the Evict lands again.
	fill(t, c, 0x10, "a2")
	mustGet(t, c, 0x10, "a2")
}

// TestEvict_FreesWhatItHolds proves that Evict frees the memory of an
// entry ristretto holds, and that an Evict of a hash ristretto does not
// hold yet (its Set still buffered) deletes nothing but still hides the
// entry once the Set lands, which the next fill of the key replaces.
func TestEvict_FreesWhatItHolds(t *testing.T) {
	c := newCache(t, l1.Config{})
	fill(t, c, 0x10, "a")
	one := c.Stats().Cost // an entry's cost, with ristretto's own
	if one == 0 {
		t.Fatal("cost 0 after a fill; want it counted")
	}
	c.Evict(0x10)
	c.Wait()
	if st := c.Stats(); st.Cost != 0 {
		t.Fatalf("cost %d after evicting the only entry; want 0", st.Cost)
	}

	if !c.Fill(0x20, "b", 1, time.Hour, c.Ticket(0x20)) {
		t.Fatal("Fill = false")
	}
	c.Evict(0x20) // the Set may still be buffered: nothing to delete yet
	c.Wait()
	mustMiss(t, c, 0x20)
	fill(t, c, 0x20, "b2")
	mustGet(t, c, 0x20, "b2")
	if st := c.Stats(); st.Cost != one {
		t.Fatalf("cost %d with one entry held; want %d", st.Cost, one)
	}
}

// TestEvict_HidesStripeMates proves Evict(h) also hides entries of other
// hashes in h's stripe (a false invalidation, never a stale hit).
func TestEvict_HidesStripeMates(t *testing.T) {
	c := newCache(t, l1.Config{Epochs: consistency.NewEpochs(16)})
	fill(t, c, 0x10, "a")
	fill(t, c, 0x20, "mate") // same stripe as 0x10 in 16 stripes
	c.Evict(0x10)
	mustMiss(t, c, 0x20)
}

// TestGet_RefusesAfterSharedBump proves an entry dies as soon as its stripe
// is bumped in the shared Epochs table, without any Evict (how a bus message
// reaches L1, R12).
func TestGet_RefusesAfterSharedBump(t *testing.T) {
	e := consistency.NewEpochs(0)
	c := newCache(t, l1.Config{Epochs: e})
	fill(t, c, 5, "v")
	e.Bump(5)
	mustMiss(t, c, 5)
	if _, ok := c.TTL(5); !ok {
		t.Fatalf("entry should still be in ristretto (only its ticket is dead)")
	}
}

// raceCache returns a cache whose fills run the given hooks, with c visible
// to them through the returned pointer.
func raceCache(t *testing.T, hooks *l1.Hooks) *l1.Cache {
	t.Helper()
	return newCache(t, l1.Config{Hooks: hooks})
}

// TestRace_R13_BufferedSet proves R13's fence: an Evict that lands between
// Fill's ticket check and ristretto's buffered Set cannot make the stale
// value visible. The Set is applied after the Del (the stale item is
// physically in ristretto, TTL sees it), yet Get refuses it, Fill reports
// false, and after Wait the entry is gone.
func TestRace_R13_BufferedSet(t *testing.T) {
	const h = 0x1313
	var c *l1.Cache
	var (
		physicallyPresent bool
		windowHit         bool
	)
	c = raceCache(t, &l1.Hooks{
		BeforeSet: func(h uint64) { c.Evict(h) },
		AfterSet: func(h uint64) {
			c.Wait() // apply the buffered Set, which comes after Evict's Del
			_, physicallyPresent = c.TTL(h)
			_, windowHit = c.Get(h)
		},
	})
	if c.Fill(h, "stale", 1, time.Hour, c.Ticket(h)) {
		t.Errorf("Fill = true although an Evict landed before its Set")
	}
	if !physicallyPresent {
		t.Fatalf("the buffered Set was not applied after the Del: the test did not drive R13's interleaving")
	}
	if windowHit {
		t.Errorf("Get served the stale value while it sat in ristretto")
	}
	c.Wait()
	mustMiss(t, c, h)
}

// TestRace_R13_NegativeControl_NoFence proves the R13 test can see the bug:
// with the fence disabled, the same interleaving leaves the stale value
// visible after the Evict returned.
func TestRace_R13_NegativeControl_NoFence(t *testing.T) {
	const h = 0x1313
	var c *l1.Cache
	var windowHit bool
	c = raceCache(t, &l1.Hooks{
		NoFence:   true,
		BeforeSet: func(h uint64) { c.Evict(h) },
		AfterSet: func(h uint64) {
			c.Wait()
			_, windowHit = c.Get(h)
		},
	})
	if !c.Fill(h, "stale", 1, time.Hour, c.Ticket(h)) {
		t.Errorf("unfenced Fill = false; want true")
	}
	if !windowHit {
		t.Errorf("unfenced Get missed while the stale value sat in ristretto")
	}
	c.Wait()
	got, ok := c.Get(h)
	if !ok || got != "stale" {
		t.Fatalf("unfenced: Get after Evict = %v, %v; want the stale value (the R13 bug)", got, ok)
	}
}

// TestRace_R13_AfterSet proves an Evict that lands after the Set but before
// Fill's second check makes Fill report false and leaves nothing visible.
func TestRace_R13_AfterSet(t *testing.T) {
	const h = 0x1314
	var c *l1.Cache
	c = raceCache(t, &l1.Hooks{
		AfterSet: func(h uint64) { c.Evict(h) },
	})
	if c.Fill(h, "stale", 1, time.Hour, c.Ticket(h)) {
		t.Errorf("Fill = true although an Evict landed after its Set")
	}
	c.Wait()
	mustMiss(t, c, h)
	if _, ok := c.TTL(h); ok {
		t.Errorf("the refused fill was not deleted from ristretto")
	}
}

// TestRace_R13_BufferedSet_EvictAll proves the fence also holds when the
// interleaved invalidation is EvictAll (ristretto's Clear).
func TestRace_R13_BufferedSet_EvictAll(t *testing.T) {
	const h = 0x1315
	var c *l1.Cache
	var windowHit bool
	c = raceCache(t, &l1.Hooks{
		BeforeSet: func(uint64) { c.EvictAll() },
		AfterSet: func(h uint64) {
			c.Wait()
			_, windowHit = c.Get(h)
		},
	})
	if c.Fill(h, "stale", 1, time.Hour, c.Ticket(h)) {
		t.Errorf("Fill = true although EvictAll landed before its Set")
	}
	if windowHit {
		t.Errorf("Get served the stale value after EvictAll")
	}
	c.Wait()
	mustMiss(t, c, h)
}

// TestRace_R13_EvictAfterFillReturned proves an Evict issued after Fill
// returned but before ristretto applied the buffered Set still wins.
func TestRace_R13_EvictAfterFillReturned(t *testing.T) {
	c := newCache(t, l1.Config{})
	const h = 0x1316
	if !c.Fill(h, "v", 1, time.Hour, c.Ticket(h)) {
		t.Fatalf("Fill = false")
	}
	c.Evict(h) // the Set may still be in ristretto's buffer
	c.Wait()
	mustMiss(t, c, h)
}

// TestEvictAll proves EvictAll hides every entry, refuses fills under
// tickets taken before it, and accepts fills under fresh tickets.
func TestEvictAll(t *testing.T) {
	c := newCache(t, l1.Config{})
	for h := range uint64(10) {
		fill(t, c, h*0x1001, fmt.Sprint("v", h))
	}
	old := c.Ticket(3)
	c.EvictAll()
	for h := range uint64(10) {
		mustMiss(t, c, h*0x1001)
	}
	if c.Fill(3, "stale", 1, time.Hour, old) {
		t.Errorf("Fill with a ticket from before EvictAll = true")
	}
	fill(t, c, 3, "fresh")
	mustGet(t, c, 3, "fresh")
}

// TestFill_NonPositiveTTLStoresNothing proves ttl <= 0 is refused and
// stores nothing.
func TestFill_NonPositiveTTLStoresNothing(t *testing.T) {
	for _, ttl := range []time.Duration{0, -1, -l1.Tick, -time.Hour} {
		t.Run(ttl.String(), func(t *testing.T) {
			c := newCache(t, l1.Config{})
			if c.Fill(9, "v", 1, ttl, c.Ticket(9)) {
				t.Fatalf("Fill with ttl %v = true", ttl)
			}
			c.Wait()
			mustMiss(t, c, 9)
			if _, ok := c.TTL(9); ok {
				t.Fatalf("Fill with ttl %v stored an entry", ttl)
			}
		})
	}
}

// TestFill_EntryExpires proves an entry's lifetime is rounded down by one
// Tick (TTL never reports more than ttl-Tick) and that the entry stops being
// served once it has expired. It waits for the coarse clock by polling on
// Tick boundaries, bounded by a generous deadline; it asserts no upper
// bound on timing.
func TestFill_EntryExpires(t *testing.T) {
	c := newCache(t, l1.Config{})
	const ttl = 3 * l1.Tick
	if !c.Fill(8, "v", 1, ttl, c.Ticket(8)) {
		t.Fatalf("Fill with ttl %v = false", ttl)
	}
	c.Wait()
	if d, ok := c.TTL(8); !ok || d > ttl-l1.Tick {
		t.Fatalf("TTL right after Fill = %v, %v; want at most %v (ttl minus one Tick), true", d, ok, ttl-l1.Tick)
	}
	tick := time.NewTicker(l1.Tick)
	defer tick.Stop()
	giveUp := time.After(10 * time.Second)
	for {
		if _, ok := c.Get(8); !ok {
			break
		}
		select {
		case <-tick.C:
		case <-giveUp:
			t.Fatalf("entry with ttl %v still served after 10s", ttl)
		}
	}
	if _, ok := c.TTL(8); ok {
		t.Errorf("TTL reports an entry that Get treats as expired")
	}
}

// TestTTL proves TTL reports the remaining lifetime of a filled entry,
// also once its ticket is dead, and nothing for a missing one.
func TestTTL(t *testing.T) {
	e := consistency.NewEpochs(0)
	c := newCache(t, l1.Config{Epochs: e})
	const ttl = time.Hour
	fill(t, c, 3, "v")
	d, ok := c.TTL(3)
	if !ok || d <= 0 || d > ttl {
		t.Fatalf("TTL = %v, %v; want in (0, %v], true", d, ok, ttl)
	}
	if d < ttl-time.Minute {
		t.Errorf("TTL = %v; want close to %v", d, ttl)
	}
	e.Bump(3) // the ticket dies, the entry stays until evicted
	if d, ok := c.TTL(3); !ok || d <= 0 || d > ttl {
		t.Errorf("TTL after the ticket died = %v, %v; want in (0, %v], true", d, ok, ttl)
	}
	if _, ok := c.TTL(99); ok {
		t.Errorf("TTL of a missing entry reports ok")
	}
}

// TestNew_ConfigErrors proves a negative MaxBytes is an ErrConfig error
// (not a panic), and that zero and positive budgets are accepted.
func TestNew_ConfigErrors(t *testing.T) {
	for _, mb := range []int64{-1, -1 << 40} {
		c, err := l1.New(l1.Config{MaxBytes: mb})
		if !errors.Is(err, l1.ErrConfig) {
			t.Errorf("New(MaxBytes: %d) error = %v; want ErrConfig", mb, err)
		}
		if c != nil {
			c.Close()
			t.Errorf("New(MaxBytes: %d) returned a cache with its error", mb)
		}
	}
	for _, mb := range []int64{0, 1, 1 << 10, l1.DefaultMaxBytes, 1 << 40} {
		c, err := l1.New(l1.Config{MaxBytes: mb})
		if err != nil {
			t.Errorf("New(MaxBytes: %d) = %v; want nil", mb, err)
			continue
		}
		c.Close()
	}
}

// TestHash_HashBytesAgree proves Hash and HashBytes give the same hash for
// the same bytes, whatever they hold.
func TestHash_HashBytesAgree(t *testing.T) {
	keys := []string{"", "k", "user:42", "\x00", "\xff\xfe\x00{}", string(make([]byte, 1000))}
	for _, ns := range []string{"", "ns", "other"} {
		seed := l1.Seed(ns)
		for _, k := range keys {
			if a, b := l1.Hash(seed, k), l1.HashBytes(seed, []byte(k)); a != b {
				t.Errorf("ns %q key %q: Hash = %#x, HashBytes = %#x", ns, k, a, b)
			}
		}
	}
}

// TestHash_Deterministic proves Seed and Hash are pure functions (every node
// computes the same hash for the same key).
func TestHash_Deterministic(t *testing.T) {
	if l1.Seed("ns") != l1.Seed("ns") {
		t.Fatalf("Seed is not deterministic")
	}
	if l1.Hash(l1.Seed("ns"), "k") != l1.Hash(l1.Seed("ns"), "k") {
		t.Fatalf("Hash is not deterministic")
	}
	if l1.Hash(l1.Seed("ns"), "k1") == l1.Hash(l1.Seed("ns"), "k2") {
		t.Fatalf("Hash of k1 and k2 collide")
	}
}

// TestSeed_DiffersByNamespace proves namespaces get distinct seeds, so the
// same key hashes differently in each.
func TestSeed_DiffersByNamespace(t *testing.T) {
	nss := []string{"", "a", "b", "users", "users2", "\x00"}
	seeds := map[uint64]string{}
	hashes := map[uint64]string{}
	for _, ns := range nss {
		s := l1.Seed(ns)
		if prev, dup := seeds[s]; dup {
			t.Errorf("Seed(%q) == Seed(%q)", ns, prev)
		}
		seeds[s] = ns
		h := l1.Hash(s, "key")
		if prev, dup := hashes[h]; dup {
			t.Errorf("Hash(Seed(%q), key) == Hash(Seed(%q), key)", ns, prev)
		}
		hashes[h] = ns
	}
}

// TestGet_ZeroAlloc proves the L1 hit path allocates nothing.
func TestGet_ZeroAlloc(t *testing.T) {
	c := newCache(t, l1.Config{})
	const h = 0xa110c
	fill(t, c, h, "value")
	var hits int
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := c.Get(h); ok {
			hits++
		}
	})
	if allocs != 0 {
		t.Errorf("Get allocates %v times per hit; want 0", allocs)
	}
	if hits == 0 {
		t.Fatalf("Get never hit: the measurement is of the miss path")
	}
}

// TestConcurrent_EvictBeatsFill proves the package guarantee under -race
// with real concurrency: once Evict(h) (or EvictAll) has returned, Get(h)
// returns no value filled under a ticket taken before that Evict began.
//
// One evicter numbers its evictions: it stores i in started, evicts, then
// stores i in done. A filler takes a ticket, then loads started (s) and fills
// the value s: every eviction numbered above s began after the ticket was
// taken. A reader loads done (d) before Get; a hit with value s < d means
// eviction s+1 <= d, which began after the fill's ticket and returned
// before the Get began, did not fence the fill. Each round between two
// evictions gets a budget of fills and reads, and the evicter waits for the
// round's counters (never for the clock), so fills get a chance to land and
// be read between evictions without flooding ristretto's buffer.
func TestConcurrent_EvictBeatsFill(t *testing.T) {
	c := newCache(t, l1.Config{MaxBytes: 1 << 20, Epochs: consistency.NewEpochs(4)})
	const (
		h         = 0xc0ffee
		evictions = 1000
		fillers   = 4
		readers   = 4
	)
	var started, done, fills, gets, hits, violations atomic.Uint64
	var roundFills, roundGets atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(stop)
		for i := uint64(1); i <= evictions; i++ {
			roundFills.Store(0)
			roundGets.Store(0)
			for roundFills.Load() < fillers || roundGets.Load() < 4*readers {
				runtime.Gosched()
			}
			started.Store(i)
			if i%100 == 0 {
				c.EvictAll()
			} else {
				c.Evict(h)
			}
			done.Store(i)
		}
	})
	for range fillers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if roundFills.Add(1) > 2*fillers {
					runtime.Gosched() // this round has had its fills
					continue
				}
				tk := c.Ticket(h)
				s := started.Load()
				c.Fill(h, s, 1, time.Hour, tk)
				fills.Add(1)
			}
		})
	}
	for range readers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if roundGets.Add(1) > 16*readers {
					runtime.Gosched() // this round has had its reads
					continue
				}
				d := done.Load()
				v, ok := c.Get(h)
				gets.Add(1)
				if !ok {
					continue
				}
				hits.Add(1)
				if s := v.(uint64); s < d {
					violations.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d hits returned a value filled before an eviction that had returned", n)
	}
	if hits.Load() == 0 {
		t.Fatalf("no Get ever hit: the property was never checked")
	}
	t.Logf("%d fills, %d gets, %d hits checked", fills.Load(), gets.Load(), hits.Load())
}
