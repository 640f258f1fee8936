//go:build !linux

package sim

import (
	"errors"
	"os"
	"syscall"
)

// procsSupported: runs of node processes need Linux.
const procsSupported = false

var sigStop, sigCont os.Signal

func nodeSysProcAttr() *syscall.SysProcAttr { return nil }

func waitStopped(int) error { return errors.ErrUnsupported }
