package main

// The kernel facts the attestor trusts: a pidfd names one process for its whole life
// (a pid does not: it is reused), and the inode of /proc/<pid>/ns/pid names that
// process's PID namespace. Nothing here reads cgroups, so it works the same on
// cgroup v1 hosts (rootless containers get no cgroup of their own there) and v2.

import (
	"fmt"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// process is a handle on one process that stays tied to it even if its pid is reused.
type process interface {
	// Exited reports whether the process has exited (it may be a zombie whose pid is
	// still taken, or gone and its pid free for reuse).
	Exited() bool
	Close()
}

// nsKey identifies a namespace: (device, inode) of its nsfs file.
type nsKey struct{ dev, ino uint64 }

type pidfdProcess struct{ fd int }

func openPidfd(pid int) (process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, err
	}
	return &pidfdProcess{fd: fd}, nil
}

// Exited: a pidfd polls readable once its process has exited.
func (p *pidfdProcess) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0
	}
}

func (p *pidfdProcess) Close() { _ = unix.Close(p.fd) }

// kernel is where processes and their namespaces are looked up. Tests replace open
// and point procRoot at a fixture tree whose ns/pid files are hard links (one inode
// per namespace), like nsfs gives one inode per namespace.
type kernel struct {
	procRoot string
	open     func(pid int) (process, error)
}

func realKernel() kernel { return kernel{procRoot: "/proc", open: openPidfd} }

func (k kernel) pidNamespace(pid int) (nsKey, error) {
	return k.statNs(filepath.Join(k.procRoot, strconv.Itoa(pid), "ns", "pid"))
}

func (k kernel) ownPidNamespace() (nsKey, error) {
	return k.statNs(filepath.Join(k.procRoot, "self", "ns", "pid"))
}

func (k kernel) statNs(path string) (nsKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsKey{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return nsKey{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// namespaceOf opens the process behind pid and reads its PID namespace. The answer
// is that process's only if it is still alive after the read: a pid whose process
// exited may name a new process by the time /proc is read. The caller closes the
// returned process.
func (k kernel) namespaceOf(pid int) (process, nsKey, error) {
	if pid <= 0 {
		return nil, nsKey{}, fmt.Errorf("pid %d is not a process", pid)
	}
	p, err := k.open(pid)
	if err != nil {
		return nil, nsKey{}, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	key, err := k.pidNamespace(pid)
	if err == nil && p.Exited() {
		err = fmt.Errorf("process %d exited", pid)
	}
	if err != nil {
		p.Close()
		return nil, nsKey{}, err
	}
	return p, key, nil
}
