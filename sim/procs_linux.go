package sim

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// procsSupported: runs of node processes need a parent-death signal and
// /proc, which Linux has.
const procsSupported = true

var sigStop, sigCont os.Signal = syscall.SIGSTOP, syscall.SIGCONT

// nodeSysProcAttr makes the kernel SIGKILL a node process when the
// parent dies without killing it (a panic, a test binary's timeout).
func nodeSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// waitStopped waits until the kernel reports process pid stopped (state T
// in /proc/pid/stat): SIGSTOP has then reached every thread.
func waitStopped(pid int) error {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	deadline := time.Now().Add(procWait)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d not stopped within %s", pid, procWait)
		}
		t := time.NewTimer(100 * time.Microsecond)
		<-t.C
	}
}
