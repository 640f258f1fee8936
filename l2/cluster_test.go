package l2

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// A group invalidation on a cluster advances the clock of every one of the
// 16,384 slots and replaces the group's stamp in the slots that have one,
// and creates none elsewhere, whether it runs one script per master or,
// when the slot map has moved, one per slot.
func TestClusterGroupInvalidationReachesEverySlot(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	rdb := c.Client(t)
	s := NewStore(rdb, "tc")
	ctx := context.Background()
	// A value of group g in one slot: its stamp exists there only.
	k := KeysFor("tc", "ns", "k")
	claimAndFillInG(t, s, k)
	slot := Slot(k.Value)
	stamp := "tc:g:{" + SlotTag(slot) + "}:1:g"
	before := get(t, rdb, stamp)

	ops, err := encodeChanges([]Change{{Group: "g"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func() error{
		"per master": func() error { _, err := s.invalidateGroups(ctx, ops); return err },
		"per slot":   func() error { _, _, err := s.runScripts(ctx, applyScript, s.slotCalls(ops)); return err },
	} {
		clocks := allClocks(t, rdb)
		if err := run(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		after := allClocks(t, rdb)
		for i := range Slots {
			if after[i] == clocks[i] || !strings.Contains(after[i], "/") {
				t.Fatalf("%s: slot %d's clock %q -> %q: not advanced", name, i, clocks[i], after[i])
			}
		}
		now := get(t, rdb, stamp)
		if now == before || !strings.HasPrefix(now, after[slot]+":") {
			t.Fatalf("%s: the stamp in slot %d is %q (was %q), want one of clock %q", name, slot, now, before, after[slot])
		}
		before = now
		if n := countKeys(t, c, "tc:g:*"); n != 1 {
			t.Fatalf("%s: %d stamps in the cluster, want only the one that existed", name, n)
		}
	}
	// The value filled under the old stamp is stale now.
	if r, err := s.ReadOrClaim(ctx, k, "tok2", minute); err != nil || !r.Stale {
		t.Fatalf("read after the group invalidation = %+v, %v; want stale", r, err)
	}
}

const minute = time.Minute

// claimAndFillInG claims k with the token "tok" and fills it with "v" in
// the group g.
func claimAndFillInG(t *testing.T, s *Store, k Keys) {
	t.Helper()
	ctx := context.Background()
	r, err := s.ReadOrClaim(ctx, k, "tok", minute)
	if err != nil || r.State != Claimed {
		t.Fatalf("claim = %+v, %v", r, err)
	}
	if ok, err := s.FillInGroups(ctx, k, "tok", []byte("v"), minute, []string{"g"}, r.Clock); !ok || err != nil {
		t.Fatalf("fill = %v, %v", ok, err)
	}
}

func get(t *testing.T, rdb *redis.ClusterClient, key string) string {
	t.Helper()
	v, err := rdb.Get(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return v
}

// allClocks returns every slot's group clock ("" where there is none).
func allClocks(t *testing.T, rdb *redis.ClusterClient) []string {
	t.Helper()
	ctx := context.Background()
	pipe := rdb.Pipeline()
	cmds := make([]*redis.StringCmd, Slots)
	for i := range Slots {
		cmds[i] = pipe.Get(ctx, "tc:gseq:{"+SlotTag(i)+"}")
	}
	_, _ = pipe.Exec(ctx)
	out := make([]string, Slots)
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out
}

// countKeys counts the keys matching pattern on every master.
func countKeys(t *testing.T, c *redistest.Cluster, pattern string) int {
	t.Helper()
	n := 0
	for _, m := range c.Masters() {
		keys, _ := m.Do("KEYS", pattern).([]any)
		n += len(keys)
	}
	return n
}

// A write that waits for replicas goes through the master's own client,
// which follows no MOVED: after its slot moved, the write fails (and the
// tier queues it), and the cluster client is told to reload its slot map,
// so that the replay lands on the new master at once, not at the next
// periodic reload (an hour here).
func TestClusterWaitReplicasAfterSlotMoved(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{})
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Hour})
	t.Cleanup(func() { rdb.Close() })
	s := NewStore(rdb, "tc", WithWaitReplicas(1, 5*time.Second))
	ctx := context.Background()
	k := KeysFor("tc", "ns", "k")
	change := []Change{{Keys: k}}
	if _, err := s.Apply(ctx, change, nil); err != nil {
		t.Fatalf("Apply before the move: %v", err)
	}
	slot := Slot(k.Value)
	_, to := c.MigrateSlotAway(t, slot)
	_, err := s.Apply(ctx, change, nil)
	if !redis.HasErrorPrefix(err, "MOVED") {
		t.Fatalf("Apply through the old master = %v; want MOVED", err)
	}
	// The failure had the cluster client reload its map, in the
	// background: wait until it names the new master, then the write (as
	// the tier's replay would send it) lands there.
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err := rdb.MasterForKey(ctx, k.Value)
		if err == nil && m.Options().Addr == to.Addr() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster client still sends slot %d to %v (err %v); want %s", slot, m, err, to.Addr())
		}
		time.Sleep(10 * time.Millisecond) // polls a condition; nothing waits on time
	}
	if _, err := s.Apply(ctx, change, nil); err != nil {
		t.Fatalf("Apply after the reload: %v; want it to land on the new master", err)
	}
}

// On a cluster, a batch of deletes beside a group invalidation runs the
// deletes through the lean delete script, slot by slot, the group apart,
// and then the announcement (the lean script too): every key is gone, the
// group's stamp is replaced, and the message is the one Apply documents.
func TestClusterApplyDeletesBesideAGroup(t *testing.T) {
	c := redistest.StartCluster(t, redistest.ClusterOptions{ReplicasPerMaster: -1})
	rdb := c.Client(t)
	s := NewStore(rdb, "tc")
	ctx := context.Background()
	bk := BusKeysFor("tc", true)
	sub := rdb.SSubscribe(ctx, bk.Channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatalf("SSUBSCRIBE: %v", err)
	}
	// A value of group g, to find its stamp replaced; two keys to delete,
	// in other slots.
	g := KeysFor("tc", "ns", "g")
	claimAndFillInG(t, s, g)
	stamp := "tc:g:{" + SlotTag(Slot(g.Value)) + "}:1:g"
	before := get(t, rdb, stamp)
	var dels []Keys
	for _, name := range []string{"a", "b"} {
		k := KeysFor("tc", "ns", name)
		for _, key := range []string{k.Value, k.Flag, k.Flag + "w"} {
			if err := rdb.Set(ctx, key, "x", minute).Err(); err != nil {
				t.Fatalf("SET %s: %v", key, err)
			}
		}
		dels = append(dels, k)
	}
	if Slot(dels[0].Value) == Slot(dels[1].Value) {
		t.Fatal("the two keys share a slot; pick others")
	}
	head, body := []byte("head"), []byte("body")
	seq, err := s.Apply(ctx, []Change{{Keys: dels[0]}, {Group: "g"}, {Keys: dels[1]}}, &Announcement{SeqKey: bk.Seq, Channel: bk.Channel, Head: head, Body: body})
	if err != nil || seq != 1 {
		t.Fatalf("Apply = %d, %v; want 1, nil", seq, err)
	}
	for _, k := range dels {
		for _, key := range []string{k.Value, k.Flag, k.Flag + "w"} {
			if n, err := rdb.Exists(ctx, key).Result(); err != nil || n != 0 {
				t.Errorf("EXISTS %s = %d, %v; want 0", key, n, err)
			}
		}
	}
	if now := get(t, rdb, stamp); now == before {
		t.Errorf("the stamp of g is still %q", now)
	}
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg, err := sub.ReceiveMessage(mctx)
	if err != nil {
		t.Fatalf("no message: %v", err)
	}
	p := msg.Payload
	if len(p) != len(head)+16+len(body) || p[:len(head)] != string(head) || p[len(head)+16:] != string(body) {
		t.Fatalf("message %q: want head, 16 bytes of sequence and clock, body", p)
	}
	if got := binary.BigEndian.Uint64([]byte(p[len(head) : len(head)+8])); got != 1 {
		t.Errorf("message sequence number %d, want 1", got)
	}
	// The servers are the test's own, and Apply sends a script a master
	// does not hold yet: the scripts the masters hold are those that ran.
	var ran [2]bool
	for _, m := range c.Masters() {
		held, _ := m.Do("SCRIPT", "EXISTS", deleteScript.Hash(), applyScript.Hash()).([]any)
		for i := range ran {
			ran[i] = ran[i] || (i < len(held) && held[i] == int64(1))
		}
	}
	if !ran[0] || ran[1] {
		t.Errorf("ran the lean delete script, the apply script: %v; want [true false]", ran)
	}
}
