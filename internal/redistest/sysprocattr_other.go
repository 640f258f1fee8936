//go:build !linux

package redistest

import "syscall"

// sysProcAttr returns nil: parent-death signals are only available on Linux.
func sysProcAttr() *syscall.SysProcAttr { return nil }
