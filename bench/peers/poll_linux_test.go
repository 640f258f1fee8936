package peers

import (
	"runtime"
	"syscall"
	"time"
)

const (
	// pollPause is the sleep a poller asks for between two reads.
	pollPause = 20 * time.Microsecond
	// prctl options (linux/prctl.h).
	prSetTimerSlack = 29
	prGetTimerSlack = 30
)

// poller paces the reads of a freshness round. Between two reads it
// sleeps for pollPause in nanosleep, on an OS thread locked to the reading
// goroutine whose timer slack is 1ns, so that one pause lasts about 30µs:
// the delay a round measures is late by half that on average.
//
// The other ways to poll distort what they measure on a small machine: a
// read loop that spins (with or without runtime.Gosched) takes a CPU from
// the nodes and redis-server, and keeps Go's scheduler so busy that it
// polls the network only when sysmon forces it (every 10ms), so that the
// message or push awaited waits too (medians of 1.5-2.5ms, against
// 0.1-0.4ms paced); time.Sleep of a few µs lasts about a millisecond here
// (the runtime's timers wait in epoll, to the millisecond); pauses of 1µs
// (about 10µs with the wake-up) cost enough CPU in wake-ups to delay the
// delivery themselves (rueidis's median went from 0.1ms to 1-3ms); a
// nanosleep with the default timer slack (50µs) lasts about 70µs, and
// gives the same medians as this, coarser.
type poller struct {
	ts       syscall.Timespec
	slack    uintptr // the thread's timer slack before, restored by stop
	slackSet bool
}

// newPoller locks the calling goroutine to its thread and sets the
// thread's timer slack; stop undoes both.
func newPoller() *poller {
	runtime.LockOSThread()
	p := &poller{ts: syscall.NsecToTimespec(int64(pollPause))}
	old, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	if errno == 0 {
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, 1, 0); errno == 0 {
			p.slack, p.slackSet = old, true
		}
	}
	return p
}

// pause sleeps for about 30µs without spinning.
func (p *poller) pause() { _ = syscall.Nanosleep(&p.ts, nil) }

// stop restores the thread's timer slack and unlocks it.
func (p *poller) stop() {
	if p.slackSet {
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, p.slack, 0)
	}
	runtime.UnlockOSThread()
}
