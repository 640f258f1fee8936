package l2_test

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/consistency"
	"github.com/tiercache/tiercache/l2"
)

const (
	seqKey  = "tc:seq"
	channel = "tc:bus"
)

// subscribe returns a subscription to ch that the server has confirmed, so
// that every message published afterwards reaches it; closed by t.Cleanup.
func subscribe(t *testing.T, rdb *redis.Client, ch string) *redis.PubSub {
	t.Helper()
	ps := rdb.Subscribe(t.Context(), ch)
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(t.Context()); err != nil {
		t.Fatalf("SUBSCRIBE %s: %v", ch, err)
	}
	return ps
}

// receive returns the next message of ps, failing after a generous bound
// instead of hanging if none comes.
func receive(t *testing.T, ps *redis.PubSub) *redis.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("no message: %v", err)
	}
	return m
}

// payload returns the message Apply documents: head, 8-byte big-endian
// seq, body.
func payload(head []byte, seq uint64, body []byte) string {
	return string(binary.BigEndian.AppendUint64(append([]byte{}, head...), seq)) + string(body)
}

// withoutSent returns a published message without the 8 bytes of Redis's
// clock that the script writes after head and seq, checking that they hold
// a time of today's (Redis runs on this machine's clock).
func withoutSent(t *testing.T, p string, headLen int) string {
	t.Helper()
	at := headLen + 8
	if len(p) < at+8 {
		t.Fatalf("message of %d bytes has no clock after %d", len(p), at)
	}
	sent := time.UnixMicro(int64(binary.BigEndian.Uint64([]byte(p[at : at+8]))))
	if d := time.Since(sent); d < -time.Hour || d > time.Hour {
		t.Fatalf("message clock %v is not today's (now %v)", sent, time.Now())
	}
	return p[:at] + p[at+8:]
}

// TestApply_DeletesWritesAndPublishes proves Apply deletes the value and
// flag of a delete change, writes a write change with its TTL and clears
// its flag, leaves other keys alone, draws consecutive sequence numbers and
// publishes head, seq and body.
func TestApply_DeletesWritesAndPublishes(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	ps := subscribe(t, f.rdb, channel)
	del, wr, other := l2.KeysFor("tc", "ns", "del"), l2.KeysFor("tc", "ns", "wr"), l2.KeysFor("tc", "ns", "other")
	for _, k := range []l2.Keys{del, wr, other} {
		if err := f.rdb.Set(ctx, k.Value, "old", time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if err := f.rdb.Set(ctx, k.Flag, "tok", time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
	}
	env := envelope(t, "wr", "new")
	head, body := []byte{0x01, 'H', 0x00}, []byte("body\x00\xff")
	seq, err := f.st.Apply(ctx, []l2.Change{
		{Keys: del},
		{Keys: wr, Write: true, Envelope: env, TTL: valueTTL},
	}, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: head, Body: body})
	if err != nil || seq != 1 {
		t.Fatalf("Apply = %d, %v; want 1, nil", seq, err)
	}
	f.mustAbsent(t, del.Value)
	f.mustAbsent(t, del.Flag)
	f.mustHoldEnvelope(t, wr.Value, string(env))
	f.mustAbsent(t, wr.Flag)
	if d := f.pttl(t, wr.Value); d <= 0 || d > valueTTL {
		t.Errorf("written value PTTL = %v; want in (0, %v]", d, valueTTL)
	}
	f.mustHold(t, other.Value, "old")
	f.mustHold(t, other.Flag, "tok")
	if m := receive(t, ps); m.Channel != channel || withoutSent(t, m.Payload, len(head)) != payload(head, 1, body) {
		t.Errorf("message on %q = %q; want %q with Redis's clock after the seq", m.Channel, m.Payload, payload(head, 1, body))
	}

	seq, err = f.st.Apply(ctx, nil, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: head})
	if err != nil || seq != 2 {
		t.Fatalf("second Apply = %d, %v; want 2, nil", seq, err)
	}
	if m := receive(t, ps); withoutSent(t, m.Payload, len(head)) != payload(head, 2, nil) {
		t.Errorf("second message = %q; want %q with Redis's clock after the seq", m.Payload, payload(head, 2, nil))
	}
}

// TestApply_DeletesOnly proves that a batch of deletes alone, which Apply
// sends to the lean delete script (and only such a batch), does what the
// same deletes do in a batch with a write: each key's value, flag, meta
// list and wake mark are gone, other keys are left alone, and the message,
// with its sequence number and Redis's clock, is the one Apply documents.
func TestApply_DeletesOnly(t *testing.T) {
	for _, mixed := range []bool{false, true} {
		name := "alone"
		if mixed {
			name = "with a write"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			ps := subscribe(t, f.rdb, channel)
			a, b, other := l2.KeysFor("tc", "ns", "a"), l2.KeysFor("tc", "ns", "b"), l2.KeysFor("tc", "ns", "other")
			for _, k := range []l2.Keys{a, b, other} {
				for _, key := range []string{k.Value, k.Flag, k.Flag + "w"} {
					if err := f.rdb.Set(ctx, key, "x", time.Minute).Err(); err != nil {
						t.Fatalf("SET: %v", err)
					}
				}
				if err := f.rdb.RPush(ctx, k.Meta, "1").Err(); err != nil {
					t.Fatalf("RPUSH: %v", err)
				}
			}
			changes := []l2.Change{{Keys: a}, {Keys: b}}
			w, env := l2.KeysFor("tc", "ns", "w"), envelope(t, "w", "new")
			if mixed {
				changes = append(changes, l2.Change{Keys: w, Write: true, Envelope: env, TTL: valueTTL})
			}
			head, body := []byte("head"), []byte("body")
			if seq, err := f.st.Apply(ctx, changes, &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: head, Body: body}); err != nil || seq != 1 {
				t.Fatalf("Apply = %d, %v; want 1, nil", seq, err)
			}
			for _, k := range []l2.Keys{a, b} {
				for _, key := range []string{k.Value, k.Flag, k.Flag + "w", k.Meta} {
					f.mustAbsent(t, key)
				}
			}
			f.mustHold(t, other.Value, "x")
			f.mustHold(t, other.Flag, "x")
			f.mustHold(t, other.Flag+"w", "x")
			if n, err := f.rdb.LLen(ctx, other.Meta).Result(); err != nil || n != 1 {
				t.Errorf("LLEN %s = %d, %v; want 1", other.Meta, n, err)
			}
			if mixed {
				f.mustHoldEnvelope(t, w.Value, string(env))
			}
			if m := receive(t, ps); withoutSent(t, m.Payload, len(head)) != payload(head, 1, body) {
				t.Errorf("message = %q; want %q with Redis's clock after the seq", m.Payload, payload(head, 1, body))
			}
			// The server is the test's own, and Apply sends a script it
			// does not hold yet: the scripts it holds are those that ran.
			ran, err := f.rdb.ScriptExists(ctx, l2.DeleteScriptHash, l2.ApplyScriptHash).Result()
			if err != nil {
				t.Fatalf("SCRIPT EXISTS: %v", err)
			}
			if want := []bool{!mixed, mixed}; ran[0] != want[0] || ran[1] != want[1] {
				t.Errorf("ran the lean delete script, the apply script: %v; want %v", ran, want)
			}
		})
	}
}

// TestApply_OneWrite proves that a batch of one write, which Apply sends on
// one server to the lean write script, stores what the apply script stores
// for the same write (the header's groups with their current stamps, the
// envelope, the TTL; the flag, its wake mark and the meta list deleted),
// keeps the stamps alive as long as the value, bounds a late write as the
// apply script does (R44), and announces it once; and that when a stamp is
// missing the lean script changes and announces nothing, and the apply
// script creates the stamp and makes the write.
func TestApply_OneWrite(t *testing.T) {
	groups := []string{"\x00fleet", "g:1"}
	ann := func(suffix string) *l2.Announcement {
		return &l2.Announcement{SeqKey: seqKey, Channel: channel, Head: []byte("head" + suffix), Body: []byte("body")}
	}
	// ran reports which of the lean write script and the apply script the
	// server holds: those that ran since the last SCRIPT FLUSH.
	ran := func(t *testing.T, f *fixture) [2]bool {
		t.Helper()
		got, err := f.rdb.ScriptExists(t.Context(), l2.WriteScriptHash, l2.ApplyScriptHash).Result()
		if err != nil {
			t.Fatalf("SCRIPT EXISTS: %v", err)
		}
		return [2]bool{got[0], got[1]}
	}
	// stored returns what key holds, parsed, checking its groups' stamps
	// are the current ones.
	stored := func(t *testing.T, f *fixture, key string) l2.Stored {
		t.Helper()
		v, _ := f.get(t, key)
		st, err := l2.ParseStored(v)
		if err != nil {
			t.Fatalf("%q = %q: %v", key, v, err)
		}
		if len(st.Pairs) != 2*len(groups) {
			t.Fatalf("%q has groups %q; want %q", key, st.Pairs, groups)
		}
		for i, g := range groups {
			cur, _ := f.get(t, l2.GroupKey("tc", g))
			if st.Pairs[2*i] != g || st.Pairs[2*i+1] != cur || cur == "" {
				t.Fatalf("%q's group %d = %q with stamp %q; want %q with its stamp %q", key, i, st.Pairs[2*i], st.Pairs[2*i+1], g, cur)
			}
		}
		return st
	}
	// seed writes k once through the apply script alone (no announcement),
	// which creates the stamps, and gives k a flag, a wake mark and a meta
	// list for the next write to delete.
	seed := func(t *testing.T, f *fixture, k l2.Keys) {
		t.Helper()
		ctx := t.Context()
		if _, err := f.st.Apply(ctx, []l2.Change{{Keys: k, Write: true, Envelope: envelope(t, "k", "v0"), TTL: valueTTL, Groups: groups}}, nil); err != nil {
			t.Fatalf("seeding Apply: %v", err)
		}
		for _, key := range []string{k.Flag, k.Flag + "w"} {
			if err := f.rdb.Set(ctx, key, "x", time.Minute).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
		}
		if err := f.rdb.RPush(ctx, k.Meta, "1").Err(); err != nil {
			t.Fatalf("RPUSH: %v", err)
		}
		if err := f.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
	}

	// write makes k's value v1 in one Apply announced as message 1, checks
	// which of the lean write script and the apply script ran (want), and
	// that k's flag, wake mark and meta list are gone; it returns the
	// envelope written.
	write := func(t *testing.T, f *fixture, k l2.Keys, want [2]bool) []byte {
		t.Helper()
		env := envelope(t, "k", "v1")
		seq, err := f.st.Apply(t.Context(), []l2.Change{{Keys: k, Write: true, Envelope: env, TTL: valueTTL, Groups: groups}}, ann("1"))
		if err != nil || seq != 1 {
			t.Fatalf("Apply = %d, %v; want 1, nil", seq, err)
		}
		if got := ran(t, f); got != want {
			t.Fatalf("ran the lean write script, the apply script: %v; want %v", got, want)
		}
		for _, key := range []string{k.Flag, k.Flag + "w", k.Meta} {
			f.mustAbsent(t, key)
		}
		return env
	}

	t.Run("as the apply script", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		ps := subscribe(t, f.rdb, channel)
		k, full := l2.KeysFor("tc", "ns", "k"), l2.KeysFor("tc", "ns", "full")
		seed(t, f, k)
		// The seed made the stamps live a quarter longer than its value:
		// shorten one, so that the write must keep it alive, and lengthen
		// the other, which the write must leave as it is.
		short, long := l2.GroupKey("tc", groups[1]), l2.GroupKey("tc", groups[0])
		if err := f.rdb.PExpire(ctx, short, valueTTL/2).Err(); err != nil {
			t.Fatalf("PEXPIRE: %v", err)
		}
		if err := f.rdb.PExpire(ctx, long, l2.GroupStampTTL).Err(); err != nil {
			t.Fatalf("PEXPIRE: %v", err)
		}
		env := write(t, f, k, [2]bool{true, false})
		lean := stored(t, f, k.Value)
		if d := f.pttl(t, k.Value); d <= valueTTL-time.Minute || d > valueTTL {
			t.Errorf("PTTL %v; want about %v", d, valueTTL)
		}
		if d := f.pttl(t, short); d < valueTTL+valueTTL/4-time.Minute {
			t.Errorf("the shortened stamp lives %v more; want a quarter more than the value's %v", d, valueTTL)
		}
		if d := f.pttl(t, long); d < l2.GroupStampTTL-time.Minute {
			t.Errorf("the stamp that outlived the value lives %v more; want it left at %v", d, l2.GroupStampTTL)
		}
		if m := receive(t, ps); withoutSent(t, m.Payload, len("head1")) != payload([]byte("head1"), 1, []byte("body")) {
			t.Errorf("message = %q; want %q with Redis's clock after the seq", m.Payload, payload([]byte("head1"), 1, []byte("body")))
		}
		// The same write through the apply script (no announcement: a
		// batch the lean script does not take) stores the same.
		if _, err := f.st.Apply(ctx, []l2.Change{{Keys: full, Write: true, Envelope: env, TTL: valueTTL, Groups: groups}}, nil); err != nil {
			t.Fatalf("Apply through the apply script: %v", err)
		}
		want := stored(t, f, full.Value)
		if lean.Envelope != string(env) || want.Envelope != lean.Envelope || !slices.Equal(lean.Pairs, want.Pairs) || lean.Negative || want.Negative {
			t.Errorf("lean write stored %+v; the apply script %+v", lean, want)
		}
		if d := time.Duration(want.Expiry-lean.Expiry) * time.Millisecond; d < 0 || d > time.Minute {
			t.Errorf("the apply script's expiry is %v after the lean script's; want the same, give or take the time between them", d)
		}
	})

	t.Run("late", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		k := l2.KeysFor("tc", "ns", "k")
		seed(t, f, k)
		_, err := f.st.Apply(ctx, []l2.Change{{Keys: k, Write: true, Envelope: envelope(t, "k", "v1"), TTL: valueTTL, Groups: groups,
			LateAfter: time.Now().Add(-time.Hour), LateTTL: 10 * time.Second}}, ann("1"))
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if got := ran(t, f); got != [2]bool{true, false} {
			t.Fatalf("ran the lean write script, the apply script: %v; want [true false]", got)
		}
		if d := f.pttl(t, k.Value); d <= 0 || d > 10*time.Second {
			t.Errorf("a late write lives %v; want at most its LateTTL, 10s", d)
		}
		if st := stored(t, f, k.Value); time.Until(time.UnixMilli(st.Expiry)) > 10*time.Second {
			t.Errorf("a late write's header expires in %v; want at most 10s", time.Until(time.UnixMilli(st.Expiry)))
		}
	})

	t.Run("a stamp missing", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		ps := subscribe(t, f.rdb, channel)
		k := l2.KeysFor("tc", "ns", "k")
		seed(t, f, k)
		gone := l2.GroupKey("tc", groups[1])
		if err := f.rdb.Del(ctx, gone).Err(); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		env := write(t, f, k, [2]bool{true, true})
		if st := stored(t, f, k.Value); st.Envelope != string(env) {
			t.Errorf("stored envelope %q; want %q", st.Envelope, env)
		}
		// One message: the lean script's attempt announced nothing.
		if m := receive(t, ps); withoutSent(t, m.Payload, len("head1")) != payload([]byte("head1"), 1, []byte("body")) {
			t.Errorf("message = %q; want %q with Redis's clock after the seq", m.Payload, payload([]byte("head1"), 1, []byte("body")))
		}
		if seq, err := f.st.Apply(ctx, nil, ann("2")); err != nil || seq != 2 {
			t.Fatalf("next Apply = %d, %v; want 2, nil", seq, err)
		}
		if m := receive(t, ps); withoutSent(t, m.Payload, len("head2")) != payload([]byte("head2"), 2, []byte("body")) {
			t.Errorf("next message = %q; want the next Apply's, numbered 2", m.Payload)
		}
	})

	// A Store that waits for replicas runs the apply script alone: with
	// the lean one, a write whose stamp is missing would wait once more.
	// The seed emptied the script cache, so the write still waits twice
	// (after the NOSCRIPT reply, and after the script): with no replica,
	// both WAITs time out, and the second must end in time for Apply to
	// report ErrNotReplicated rather than its deadline.
	t.Run("waiting for replicas", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		st := l2.NewStore(f.rdb, "tc", l2.WithTimeout(time.Second), l2.WithWaitReplicas(1, time.Second))
		k := l2.KeysFor("tc", "ns", "k")
		seed(t, f, k)
		if err := f.rdb.Del(ctx, l2.GroupKey("tc", groups[1])).Err(); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		_, err := st.Apply(ctx, []l2.Change{{Keys: k, Write: true, Envelope: envelope(t, "k", "v1"), TTL: valueTTL, Groups: groups}}, ann("1"))
		if !errors.Is(err, l2.ErrNotReplicated) {
			t.Fatalf("Apply with no replica = %v; want ErrNotReplicated", err)
		}
		if got := ran(t, f); got != [2]bool{false, true} {
			t.Fatalf("ran the lean write script, the apply script: %v; want the apply script alone", got)
		}
		stored(t, f, k.Value)
	})
}

// TestApply_WithoutAnnouncementPublishesNothing proves an Apply with no
// announcement draws no sequence number and publishes nothing: the next
// message a subscriber gets is the following Apply's, numbered 1.
func TestApply_WithoutAnnouncementPublishesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	ps := subscribe(t, f.rdb, channel)
	k := l2.KeysFor("tc", "ns", "k")
	if seq, err := f.st.Apply(ctx, []l2.Change{{Keys: k}}, nil); err != nil || seq != 0 {
		t.Fatalf("Apply without announcement = %d, %v; want 0, nil", seq, err)
	}
	if seq, err := f.st.Apply(ctx, nil, &l2.Announcement{SeqKey: seqKey, Channel: channel}); err != nil || seq != 1 {
		t.Fatalf("Apply = %d, %v; want 1, nil", seq, err)
	}
	if m := receive(t, ps); withoutSent(t, m.Payload, 0) != payload(nil, 1, nil) {
		t.Fatalf("first message = %q; want the second Apply's %q", m.Payload, payload(nil, 1, nil))
	}
}

// TestApply_RefusesFillInProgress proves R01 through Apply: a delete or a
// write change clears the flag, so the fill of a claim made before it is
// refused.
func TestApply_RefusesFillInProgress(t *testing.T) {
	for _, write := range []bool{false, true} {
		name := "delete"
		if write {
			name = "write"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			k := l2.KeysFor("tc", "ns", "k")
			tok := f.claim(t, k)
			written := envelope(t, "k", "v2")
			if _, err := f.st.Apply(ctx, []l2.Change{{Keys: k, Write: write, Envelope: written, TTL: valueTTL}}, nil); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if ok, err := f.st.Fill(ctx, k, tok, envelope(t, "k", "v1"), valueTTL); err != nil || ok {
				t.Fatalf("Fill after Apply = %v, %v; want false, nil", ok, err)
			}
			if write {
				f.mustHoldEnvelope(t, k.Value, string(written))
			} else {
				f.mustAbsent(t, k.Value)
			}
		})
	}
}

// TestRace_R14_PublishAfterDelete proves R14 at the store level: with
// publish and delete as two commands in the wrong order, a subscriber that
// reacts to the message can still read the old value (negative control);
// with Apply, a subscriber that has the message never reads it.
func TestRace_R14_PublishAfterDelete(t *testing.T) {
	old := "v1"
	t.Run("NegativeControl_PublishBeforeDelete", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		ps := subscribe(t, f.rdb, channel)
		k := l2.KeysFor("tc", "ns", "k")
		if err := f.rdb.Set(ctx, k.Value, old, time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if err := f.rdb.Publish(ctx, channel, "k changed").Err(); err != nil {
			t.Fatalf("PUBLISH: %v", err)
		}
		// The subscriber reacts before the delete: it refills what it reads.
		receive(t, ps)
		seen, ok := f.get(t, k.Value)
		if err := f.st.Invalidate(ctx, k); err != nil {
			t.Fatalf("Invalidate: %v", err)
		}
		if !ok || seen != old {
			t.Fatalf("negative control: subscriber read %q (exists %v); want the old value", seen, ok)
		}
	})
	t.Run("Apply", func(t *testing.T) {
		f := newFixture(t)
		ctx := t.Context()
		ps := subscribe(t, f.rdb, channel)
		k := l2.KeysFor("tc", "ns", "k")
		if err := f.rdb.Set(ctx, k.Value, old, time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if _, err := f.st.Apply(ctx, []l2.Change{{Keys: k}}, &l2.Announcement{SeqKey: seqKey, Channel: channel}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		receive(t, ps)
		f.mustAbsent(t, k.Value)
		// A reader claiming after the message gets the flag: no stale read.
		if r, err := f.st.ReadOrClaim(ctx, k, consistency.NewToken(), flagTTL); err != nil || r.State != l2.Claimed {
			t.Fatalf("ReadOrClaim after the message = %+v, %v; want Claimed", r, err)
		}
	})
}
