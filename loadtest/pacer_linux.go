package main

import (
	"os"
	"syscall"
	"time"
	"unsafe"
)

// pacer waits until due times on a timerfd. time.Sleep wakes up to ~1 ms
// late: an idle Go runtime waits in epoll_wait, whose timeout is in whole
// milliseconds. A timerfd in the same epoll set ends that wait when it
// fires (~30 µs late on the 2-core dev VM). Spinning through the whole wait
// instead would take a core from the service under test, and spinning with
// runtime.Gosched also starves the netpoller, so responses sit unread.
type pacer struct {
	f   *os.File // nil when timerfd is unavailable: time.Sleep then
	fd  uintptr  // f's; f.Fd() would put it in blocking mode
	buf [8]byte
}

func newPacer() *pacer {
	const clockMonotonic = 1
	fd, _, e := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		return &pacer{}
	}
	// A non-blocking fd makes the File pollable, so Read parks the
	// goroutine in the netpoller rather than a thread in read(2).
	return &pacer{f: os.NewFile(fd, "timerfd"), fd: fd}
}

func (p *pacer) wait(at time.Time) {
	d := time.Until(at)
	if d <= 0 {
		return
	}
	if p.f != nil {
		spec := struct{ interval, value syscall.Timespec }{value: syscall.NsecToTimespec(int64(d))}
		_, _, e := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, p.fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
		if e == 0 {
			if _, err := p.f.Read(p.buf[:]); err == nil {
				return
			}
		}
	}
	time.Sleep(time.Until(at))
}

func (p *pacer) close() {
	if p.f != nil {
		p.f.Close()
	}
}
