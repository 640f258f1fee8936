package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// parentEnv makes the test binary a parent of node processes that runs
// until it is killed (see TestNodesDieWithTheirParent).
const parentEnv = "SIM_TEST_PARENT_OF_NODES"

// parentOfNodes starts a run of node processes meant to last an hour,
// says "up" once it runs, and waits to be killed.
func parentOfNodes() int {
	b, stop, err := LaunchRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer stop()
	var once sync.Once
	cfg := Config{Procs: true, Keys: 8, Duration: time.Hour, Progress: func(Progress) {
		once.Do(func() { fmt.Println("up") })
	}}
	if _, err := Run(context.Background(), cfg, b); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return 2
}

// Node processes die with their parent, however it dies: killed, it runs
// no cleanup, and its nodes (and its redis-server) are killed by the
// kernel (a parent-death signal) and would also see their pipes end.
func TestNodesDieWithTheirParent(t *testing.T) {
	if !procsSupported {
		t.Skip("node processes need Linux")
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(bin)
	parent.Env = append(os.Environ(), parentEnv+"=1")
	parent.Stderr = os.Stderr
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		up <- line == "up\n"
	}()
	select {
	case ok := <-up:
		if !ok {
			_ = parent.Process.Kill()
			_ = parent.Wait()
			t.Fatal("the parent of nodes did not start its run")
		}
	case <-time.After(procWait):
		_ = parent.Process.Kill()
		_ = parent.Wait()
		t.Fatalf("the parent of nodes not up within %s", procWait)
	}
	kids := childrenOf(t, parent.Process.Pid)
	t.Logf("the parent %d has children %v", parent.Process.Pid, kids)
	if len(kids) < DefaultNodes+1 {
		t.Errorf("the parent has %d children, want %d nodes and a redis-server", len(kids), DefaultNodes)
	}
	_ = parent.Process.Signal(syscall.SIGKILL)
	_ = parent.Wait()
	deadline := time.Now().Add(procWait)
	for _, pid := range kids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d outlived its parent by %s", pid, procWait)
			}
			time.Sleep(time.Millisecond) // a bounded wait for the kernel to kill it
		}
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, f := range stats {
		ppid, _, ok := procStat(f)
		if ok && ppid == pid {
			k, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			kids = append(kids, k)
		}
	}
	return kids
}

// alive reports whether process pid runs: it exists and is no zombie.
func alive(pid int) bool {
	_, state, ok := procStat("/proc/" + strconv.Itoa(pid) + "/stat")
	return ok && state != 'Z' && state != 'X'
}

// procStat reads a process's parent and state from its stat file.
func procStat(path string) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+2:])
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return ppid, f[0][0], err == nil
}
