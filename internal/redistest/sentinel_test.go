package redistest_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// The deployment comes up with a master, its linked replica and three
// sentinels that each know all of them; the failover client writes to the
// master.
func TestSentinelStarts(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t, redistest.SentinelOptions{})
	if s.MasterName() != "mymaster" {
		t.Fatalf("MasterName() = %q, want mymaster", s.MasterName())
	}
	addrs := s.SentinelAddrs()
	if len(addrs) != 3 || len(s.Sentinels()) != 3 {
		t.Fatalf("SentinelAddrs() = %v, want 3 sentinels", addrs)
	}
	master, replica := s.Master(), s.Replica()
	if master == replica {
		t.Fatalf("Master() and Replica() are both %s", master.Addr())
	}
	if repl := infoOf(t, replica, "INFO", "replication"); repl["role"] != "slave" ||
		repl["master_port"] != strconv.Itoa(master.Port()) || repl["master_link_status"] != "up" {
		t.Fatalf("replica %s: role:%s master_port:%s master_link_status:%s", replica.Addr(), repl["role"], repl["master_port"], repl["master_link_status"])
	}
	for _, sn := range s.Sentinels() {
		if mode := infoOf(t, sn, "INFO", "server")["redis_mode"]; mode != "sentinel" {
			t.Fatalf("%s runs in mode %q, want sentinel", sn.Addr(), mode)
		}
		got := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.MasterName())
		if want := []any{"127.0.0.1", strconv.Itoa(master.Port())}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("sentinel %s names the master %v, want %v", sn.Addr(), got, want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.FailoverClient(t).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the failover client: %v", err)
	}
	if got := master.Do("GET", "k"); got != "v" {
		t.Fatalf("GET on the master = %#v, want v", got)
	}
}

// When the master is killed the sentinels promote the replica, with the
// writes it had replicated, and the failover client made before the kill
// writes on to the new master. Options reach the processes.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t, redistest.SentinelOptions{
		MasterName: "cache",
		DownAfter:  time.Second,
		Args:       []string{"--maxmemory", "10mb"},
	})
	old, replica := s.Master(), s.Replica()
	for _, srv := range []*redistest.Server{old, replica} {
		if got := srv.Do("CONFIG", "GET", "maxmemory").(map[any]any)["maxmemory"]; got != "10485760" {
			t.Fatalf("%s: maxmemory = %#v, want 10485760", srv.Addr(), got)
		}
	}
	fc := s.FailoverClient(t)
	key := func(i int) string { return fmt.Sprint("key:", i) }
	const n = 100
	setAll(t, fc, key, n, "before")
	awaitCaughtUp(t, old, replica)

	start := time.Now()
	s.KillMaster(t)
	promoted := s.AwaitPromotion(t)
	t.Logf("promotion took %v", time.Since(start))
	if promoted != replica {
		t.Fatalf("AwaitPromotion = %s, want the replica %s", promoted.Addr(), replica.Addr())
	}
	if role := infoOf(t, promoted, "INFO", "replication")["role"]; role != "master" {
		t.Fatalf("the promoted %s has role:%s", promoted.Addr(), role)
	}
	if got := s.Master(); got != promoted {
		t.Fatalf("Master() = %s, want %s", got.Addr(), promoted.Addr())
	}
	for _, sn := range s.Sentinels() {
		got := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache")
		if want := []any{"127.0.0.1", strconv.Itoa(promoted.Port())}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("sentinel %s names the master %v, want %v", sn.Addr(), got, want)
		}
	}

	// The client's pooled connections died with the old master; it asks
	// the sentinels again and may retry, but no command fails.
	start = time.Now()
	getAll(t, fc, key, n, func(int) string { return "before" })
	t.Logf("the first reads after the promotion took %v", time.Since(start))
	setAll(t, fc, key, n, "after")
	for i := range n {
		if got := promoted.Do("GET", key(i)); got != "after" {
			t.Fatalf("GET %s on the new master = %#v, want after", key(i), got)
		}
	}
}
