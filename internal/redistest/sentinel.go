package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// defaultMasterName is the name the sentinels monitor the master under
	// unless SentinelOptions says otherwise.
	defaultMasterName = "mymaster"
	// defaultDownAfter is sentinel down-after-milliseconds unless
	// SentinelOptions says otherwise: short, so that a failover after
	// KillMaster takes seconds, and no shorter than the sentinels' 1s ping
	// period, so that a loaded machine does not make a healthy master look
	// down.
	defaultDownAfter = time.Second
	// sentinelFailoverTimeout is sentinel failover-timeout: how long one
	// failover may take, and half the pause before a failed one is retried.
	sentinelFailoverTimeout = 5 * time.Second
	// numSentinels is how many sentinels watch the master; sentinelQuorum
	// of them must agree it is down.
	numSentinels   = 3
	sentinelQuorum = 2
)

// SentinelOptions configures [StartSentinel]. The zero value is ready to
// use.
type SentinelOptions struct {
	// MasterName is the name the sentinels monitor the master under. Empty
	// means "mymaster".
	MasterName string
	// DownAfter is the sentinels' down-after-milliseconds: how long the
	// master may not answer before they fail it over. It is sent in whole
	// milliseconds. Zero means 1s.
	DownAfter time.Duration
	// Args are appended to the command line of the master and the replica
	// (not of the sentinels); they win over the arguments StartSentinel
	// passes.
	Args []string
}

// Sentinel is a private Redis Sentinel deployment owned by one test: a
// master, its replica and three sentinels watching them with a quorum of
// two, every one a redis-server [Server] of its own on a free 127.0.0.1
// port.
//
// Roles are not cached: [Sentinel.Master] and [Sentinel.Replica] ask the
// sentinels each time, because failovers change them. The methods report
// failures on the testing.TB given to [StartSentinel], or on the one they
// take; all are safe for concurrent use.
type Sentinel struct {
	t         testing.TB
	name      string
	data      []*member // the first master and its replica; fixed
	sentinels []*member // fixed once StartSentinel returns
	byAddr    map[string]*member

	mu     sync.Mutex
	killed *member // the master KillMaster killed, until AwaitPromotion
}

// StartSentinel starts a master, a replica of it (--replicaof) and three
// sentinels, and returns once every sentinel knows the master, the replica
// with its link up, and the two other sentinels. The master and the replica
// run with the arguments [Start] passes and opts.Args. Each sentinel runs
//
//	redis-server DIR/sentinel.conf --sentinel ...
//
// with a config file of its own that says
//
//	sentinel monitor NAME 127.0.0.1 PORT 2
//	sentinel down-after-milliseconds NAME 1000
//	sentinel failover-timeout NAME 5000
//	sentinel parallel-syncs NAME 1
//
// and that the sentinel rewrites as it learns (it must be writable).
// Sentinels find each other through the master's hello channel, every 2s,
// so StartSentinel takes a few seconds. t.Cleanup kills every process.
//
// If the deployment does not come up within a minute, StartSentinel fails
// the test with what each sentinel knows and each process's log tail. It
// never calls t.Skip.
func StartSentinel(t testing.TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	name := opts.MasterName
	if name == "" {
		name = defaultMasterName
	}
	downAfter := opts.DownAfter
	switch {
	case downAfter == 0:
		downAfter = defaultDownAfter
	case downAfter < time.Millisecond:
		t.Fatalf("redistest: StartSentinel with DownAfter %v: it must be at least 1ms", downAfter)
	}
	s := &Sentinel{t: t, name: name, byAddr: make(map[string]*member)}
	t.Cleanup(s.closeAdmins)
	add := func(srv *Server) *member {
		m := &member{srv: srv, admin: newAdmin(srv.Addr())}
		s.byAddr[srv.Addr()] = m
		return m
	}
	// A replica's first sync starts at once, not after the default 5s wait
	// for more replicas.
	noSyncDelay := []string{"--repl-diskless-sync-delay", "0"}
	master := add(start(t, kind{args: opts.Args, setup: func(string) (string, []string, error) {
		return "", noSyncDelay, nil
	}}))
	replica := add(start(t, kind{args: opts.Args, setup: func(string) (string, []string, error) {
		return "", append(slices.Clone(noSyncDelay), "--replicaof", "127.0.0.1", strconv.Itoa(master.srv.Port())), nil
	}}))
	s.data = []*member{master, replica}
	await(t, "the replica's link to the master", func() error {
		raw, err := queryString(replica.admin, "INFO", "replication")
		if err != nil {
			return err
		}
		if link := infoFields(raw)["master_link_status"]; link != "up" {
			return fmt.Errorf("replica %s has master_link_status:%s", replica.srv.Addr(), link)
		}
		return nil
	}, s.report)

	conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d %[3]d\n"+
		"sentinel down-after-milliseconds %[1]s %[4]d\n"+
		"sentinel failover-timeout %[1]s %[5]d\n"+
		"sentinel parallel-syncs %[1]s 1\n",
		name, master.srv.Port(), sentinelQuorum, downAfter.Milliseconds(), sentinelFailoverTimeout.Milliseconds())
	k := kind{setup: func(dir string) (string, []string, error) {
		path := filepath.Join(dir, "sentinel.conf")
		return path, []string{"--sentinel"}, os.WriteFile(path, []byte(conf), 0o644)
	}}
	for range numSentinels {
		srv := start(t, k)
		s.sentinels = append(s.sentinels, &member{srv: srv, admin: newAdmin(srv.Addr())})
	}
	await(t, "sentinels that know the master, the replica and each other", s.known, s.report)
	return s
}

// MasterName returns the name the sentinels monitor the master under, for
// redis.FailoverOptions.MasterName.
func (s *Sentinel) MasterName() string { return s.name }

// SentinelAddrs returns the sentinels' addresses, for
// redis.FailoverOptions.SentinelAddrs.
func (s *Sentinel) SentinelAddrs() []string {
	out := make([]string, len(s.sentinels))
	for i, m := range s.sentinels {
		out[i] = m.srv.Addr()
	}
	return out
}

// Sentinels returns the three sentinel processes, in the order of
// [Sentinel.SentinelAddrs].
func (s *Sentinel) Sentinels() []*Server {
	out := make([]*Server, len(s.sentinels))
	for i, m := range s.sentinels {
		out[i] = m.srv
	}
	return out
}

// Master returns the server the sentinels currently name as master (SENTINEL
// GET-MASTER-ADDR-BY-NAME on the first sentinel that answers).
func (s *Sentinel) Master() *Server {
	s.t.Helper()
	var lastErr error = errors.New("no sentinel is running")
	for _, sn := range s.sentinels {
		if !sn.srv.running() {
			continue
		}
		addr, err := s.masterAddr(sn)
		if err != nil {
			lastErr = err
			continue
		}
		m := s.byAddr[addr]
		if m == nil {
			s.t.Fatalf("redistest: sentinel %s names %s as master, which is none of this deployment's servers", sn.srv.Addr(), addr)
		}
		return m.srv
	}
	s.t.Fatalf("redistest: no sentinel names the master: %v\n%s", lastErr, s.report())
	return nil
}

// Replica returns a replica of the master that the sentinels currently see
// as healthy (SENTINEL REPLICAS on the first sentinel that answers: flags
// "slave" alone, link up). It fails the test if there is none, as after
// [Sentinel.KillMaster] and [Sentinel.AwaitPromotion] with the old master
// still down.
func (s *Sentinel) Replica() *Server {
	s.t.Helper()
	var lastErr error = errors.New("no sentinel is running")
	for _, sn := range s.sentinels {
		if !sn.srv.running() {
			continue
		}
		replicas, err := s.listFields(sn, "REPLICAS")
		if err != nil {
			lastErr = err
			continue
		}
		for _, r := range replicas {
			m := s.byAddr[net.JoinHostPort(r["ip"], r["port"])]
			if m != nil && r["flags"] == "slave" && r["master-link-status"] == "ok" {
				return m.srv
			}
		}
		s.t.Fatalf("redistest: sentinel %s sees no healthy replica of %s\n%s", sn.srv.Addr(), s.name, s.report())
	}
	s.t.Fatalf("redistest: no sentinel names a replica: %v\n%s", lastErr, s.report())
	return nil
}

// FailoverClient returns a go-redis client that finds the master through the
// sentinels (redis.NewFailoverClient), closed automatically by t.Cleanup. It
// has 2s dial, read and write timeouts and honours context deadlines.
func (s *Sentinel) FailoverClient(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:            s.name,
		SentinelAddrs:         s.SentinelAddrs(),
		DialTimeout:           clientTimeout,
		ReadTimeout:           clientTimeout,
		WriteTimeout:          clientTimeout,
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// KillMaster SIGKILLs the current master (see [Sentinel.Master] and
// [Server.Kill]). Call [Sentinel.AwaitPromotion] next to wait until the
// sentinels have promoted the replica.
func (s *Sentinel) KillMaster(t testing.TB) {
	t.Helper()
	master := s.Master()
	s.mu.Lock()
	s.killed = s.byAddr[master.Addr()]
	s.mu.Unlock()
	master.Kill()
}

// AwaitPromotion waits until every running sentinel names the same new
// master in place of the one [Sentinel.KillMaster] killed, with its failover
// over (flags "master" alone), and that server reports role:master. It
// returns the new master.
//
// Detecting the failure takes about DownAfter, and the sentinels' vote,
// the promotion and its announcement a few seconds more. If it does not
// happen within a minute, AwaitPromotion fails the test with what each
// sentinel knows and each process's log tail.
func (s *Sentinel) AwaitPromotion(t testing.TB) *Server {
	t.Helper()
	s.mu.Lock()
	old := s.killed
	s.mu.Unlock()
	if old == nil {
		t.Fatalf("redistest: AwaitPromotion without KillMaster")
	}
	var promoted *member
	await(t, fmt.Sprintf("a new master in place of %s", old.srv.Addr()), func() error {
		addr := ""
		for _, sn := range s.sentinels {
			if !sn.srv.running() {
				continue
			}
			a, err := s.masterAddr(sn)
			switch {
			case err != nil:
				return err
			case a == old.srv.Addr():
				return fmt.Errorf("sentinel %s still names %s", sn.srv.Addr(), a)
			case addr != "" && a != addr:
				return fmt.Errorf("sentinels name %s and %s", addr, a)
			}
			addr = a
			f, err := s.masterFields(sn)
			if err != nil {
				return err
			}
			if f["flags"] != "master" {
				return fmt.Errorf("sentinel %s sees the master with flags %s", sn.srv.Addr(), f["flags"])
			}
		}
		m := s.byAddr[addr]
		if m == nil {
			return fmt.Errorf("the sentinels name %q, none of this deployment's servers", addr)
		}
		raw, err := queryString(m.admin, "INFO", "replication")
		if err != nil {
			return fmt.Errorf("INFO replication on %s: %w", addr, err)
		}
		if role := infoFields(raw)["role"]; role != "master" {
			return fmt.Errorf("%s named by the sentinels has role:%s", addr, role)
		}
		promoted = m
		return nil
	}, s.report)
	s.mu.Lock()
	s.killed = nil
	s.mu.Unlock()
	return promoted.srv
}

// known returns nil once every sentinel knows the master, the replica with
// its link up, and the other sentinels.
func (s *Sentinel) known() error {
	master, replica := s.data[0].srv, s.data[1].srv
	for _, sn := range s.sentinels {
		at := sn.srv.Addr()
		f, err := s.masterFields(sn)
		if err != nil {
			return err
		}
		switch {
		case net.JoinHostPort(f["ip"], f["port"]) != master.Addr() || f["flags"] != "master":
			return fmt.Errorf("sentinel %s sees master %s:%s with flags %s", at, f["ip"], f["port"], f["flags"])
		case f["num-slaves"] != "1":
			return fmt.Errorf("sentinel %s knows %s replicas", at, f["num-slaves"])
		case f["num-other-sentinels"] != strconv.Itoa(numSentinels-1):
			return fmt.Errorf("sentinel %s knows %s other sentinels", at, f["num-other-sentinels"])
		}
		replicas, err := s.listFields(sn, "REPLICAS")
		if err != nil {
			return err
		}
		if len(replicas) != 1 || net.JoinHostPort(replicas[0]["ip"], replicas[0]["port"]) != replica.Addr() ||
			replicas[0]["flags"] != "slave" || replicas[0]["master-link-status"] != "ok" {
			return fmt.Errorf("sentinel %s sees replicas %v", at, replicas)
		}
		others, err := s.listFields(sn, "SENTINELS")
		if err != nil {
			return err
		}
		for _, o := range s.sentinels {
			if o == sn {
				continue
			}
			if !slices.ContainsFunc(others, func(f map[string]string) bool {
				return net.JoinHostPort(f["ip"], f["port"]) == o.srv.Addr() && f["flags"] == "sentinel"
			}) {
				return fmt.Errorf("sentinel %s does not know sentinel %s", at, o.srv.Addr())
			}
		}
	}
	return nil
}

// masterAddr asks sentinel sn for the master's address.
func (s *Sentinel) masterAddr(sn *member) (string, error) {
	v, err := query(sn.admin, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name)
	if err != nil {
		return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME on %s: %w", sn.srv.Addr(), err)
	}
	if r, ok := v.([]any); ok && len(r) == 2 {
		return net.JoinHostPort(fmt.Sprint(r[0]), fmt.Sprint(r[1])), nil
	}
	return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME on %s answered %#v", sn.srv.Addr(), v)
}

// masterFields returns SENTINEL MASTER of sentinel sn.
func (s *Sentinel) masterFields(sn *member) (map[string]string, error) {
	v, err := query(sn.admin, "SENTINEL", "MASTER", s.name)
	if err == nil {
		var f map[string]string
		if f, err = replyMap(v); err == nil {
			return f, nil
		}
	}
	return nil, fmt.Errorf("SENTINEL MASTER on %s: %w", sn.srv.Addr(), err)
}

// listFields returns SENTINEL REPLICAS or SENTINEL SENTINELS (what) of
// sentinel sn.
func (s *Sentinel) listFields(sn *member, what string) ([]map[string]string, error) {
	v, err := query(sn.admin, "SENTINEL", what, s.name)
	if err == nil {
		var list []map[string]string
		if list, err = replyMaps(v); err == nil {
			return list, nil
		}
	}
	return nil, fmt.Errorf("SENTINEL %s on %s: %w", what, sn.srv.Addr(), err)
}

// report pictures every process for a failure message: what each sentinel
// thinks of the master, each data server's role, and their logs' last
// lines.
func (s *Sentinel) report() string {
	var b strings.Builder
	for _, sn := range s.sentinels {
		fmt.Fprintf(&b, "--- sentinel %s (%s) ---\n", sn.srv.Addr(), runningWord(sn.srv))
		if sn.srv.running() {
			f, err := s.masterFields(sn)
			if err != nil {
				fmt.Fprintf(&b, "%v\n", err)
			} else {
				fmt.Fprintf(&b, "master %s:%s flags=%s num-slaves=%s num-other-sentinels=%s failover-state=%s\n",
					f["ip"], f["port"], f["flags"], f["num-slaves"], f["num-other-sentinels"], f["failover-state"])
			}
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s", sn.srv.logPath, sn.srv.logTail(reportTailLines))
	}
	for _, m := range s.data {
		fmt.Fprintf(&b, "--- data server %s (%s) ---\n", m.srv.Addr(), runningWord(m.srv))
		if m.srv.running() {
			raw, err := queryString(m.admin, "INFO", "replication")
			if err != nil {
				fmt.Fprintf(&b, "INFO replication: %v\n", err)
			} else {
				f := infoFields(raw)
				fmt.Fprintf(&b, "role:%s master_port:%s master_link_status:%s connected_slaves:%s\n",
					f["role"], f["master_port"], f["master_link_status"], f["connected_slaves"])
			}
		}
		fmt.Fprintf(&b, "--- tail of %s ---\n%s", m.srv.logPath, m.srv.logTail(reportTailLines))
	}
	return b.String()
}

// runningWord says whether s's process is up, for reports.
func runningWord(s *Server) string {
	if s.running() {
		return "running"
	}
	return "not running"
}

// closeAdmins closes the package's own clients; registered with t.Cleanup.
func (s *Sentinel) closeAdmins() {
	for _, m := range slices.Concat(s.data, s.sentinels) {
		_ = m.admin.Close()
	}
}
