package redistest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Without redis-server on PATH, Start fails the test with the install
// command; it never skips. The test runs itself as a child with an empty
// PATH and reads the child's verdict.
func TestStartFailsLoudlyWithoutRedisServer(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") == "1" {
		redistest.Start(t)
		t.Log("Start returned without redis-server")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartFailsLoudlyWithoutRedisServer$", "-test.v")
	cmd.Env = append(os.Environ(), "REDISTEST_CHILD=1", "PATH=")
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil:
		t.Fatalf("the child passed without redis-server:\n%s", out)
	case strings.Contains(string(out), "--- SKIP"):
		t.Fatalf("the child skipped instead of failing:\n%s", out)
	case !strings.Contains(string(out), "apt-get install -y redis-server"):
		t.Fatalf("the failure does not name the install command:\n%s", out)
	}
}

// Without redis-cli on PATH (but with redis-server), StartCluster fails the
// test with the install command of redis-cli; it never skips.
func TestStartClusterFailsLoudlyWithoutRedisCli(t *testing.T) {
	if os.Getenv("REDISTEST_CHILD") == "1" {
		redistest.StartCluster(t, redistest.ClusterOptions{})
		t.Log("StartCluster returned without redis-cli")
		return
	}
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH: %v", err)
	}
	bin := t.TempDir()
	if err := os.Symlink(server, filepath.Join(bin, "redis-server")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStartClusterFailsLoudlyWithoutRedisCli$", "-test.v")
	cmd.Env = append(os.Environ(), "REDISTEST_CHILD=1", "PATH="+bin)
	out, err := cmd.CombinedOutput()
	switch {
	case err == nil:
		t.Fatalf("the child passed without redis-cli:\n%s", out)
	case strings.Contains(string(out), "--- SKIP"):
		t.Fatalf("the child skipped instead of failing:\n%s", out)
	case !strings.Contains(string(out), "apt-get install -y redis-tools"):
		t.Fatalf("the failure does not name the install command:\n%s", out)
	}
}
