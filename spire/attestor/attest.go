package main

// Which live, claimed job container is the process behind a pid in? The caller's PID
// namespace is compared with that of each running job container's init process.
// `podman exec` processes share the container's PID namespace and are attributed
// to it, as they should be.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
)

// Job ids are the API's; the same alphabet as services/token/flashpods_token/identity.py,
// so an id can never smuggle separators or control characters into a selector.
var jobIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

var kinds = map[string]bool{"worker": true, "sub_agent": true}

// errAmbiguous: one PID namespace is shared by several jobs; none of them is named.
var errAmbiguous = errors.New("the caller's PID namespace is shared by several jobs")

type jobMatch struct{ job, kind string }

func (m jobMatch) selectors(instance string) []string {
	return []string{"job:" + m.job, "kind:" + m.kind, "instance:" + instance}
}

type attestor struct {
	kernel   kernel
	podman   *podmanClient
	instance string

	// Job ids are never reused: the first container seen for a job is the only one
	// that may ever speak for it, and only while its first init runs. A container
	// re-created with the job's name and labels, or restarted, is not that job.
	mu   sync.Mutex
	seen map[string]seenContainer // job id -> its container
}

type seenContainer struct {
	id  string
	pid int
}

func newAttestor(k kernel, podman *podmanClient, instance string) *attestor {
	return &attestor{kernel: k, podman: podman, instance: instance, seen: map[string]seenContainer{}}
}

// firstContainerOfJob records c as its job's container if none was seen yet, and says
// whether c is that container with its first init.
func (a *attestor) firstContainerOfJob(job, id string, pid int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.seen[job]
	if !ok {
		a.seen[job] = seenContainer{id: id, pid: pid}
		return true
	}
	return s.id == id && s.pid == pid
}

// attest returns the job behind pid, nil for a process that is in no live, claimed
// job container, or an error when Podman cannot be asked (the caller fails closed).
func (a *attestor) attest(ctx context.Context, pid int) (*jobMatch, error) {
	caller, callerNs, err := a.kernel.namespaceOf(pid)
	if err != nil {
		return nil, nil // gone, or not readable: nothing to attest
	}
	defer caller.Close()
	own, err := a.kernel.ownPidNamespace()
	if err != nil {
		return nil, fmt.Errorf("reading the agent's own PID namespace: %w", err)
	}
	if callerNs == own {
		return nil, nil // a host process: no job shares the host's PID namespace
	}
	rows, err := a.podman.runningJobs(ctx, a.instance)
	if err != nil {
		return nil, err
	}
	var found *jobMatch
	for _, row := range rows {
		m, err := a.match(ctx, row, callerNs, own)
		if err != nil {
			return nil, err
		}
		if m == nil {
			continue
		}
		if found != nil && *found != *m {
			return nil, errAmbiguous
		}
		found = m
	}
	// The namespace read is the caller's only if the caller still runs now.
	if found == nil || caller.Exited() {
		return nil, nil
	}
	return found, nil
}

// match says whether row is a live, claimed job container whose init shares the
// caller's PID namespace.
func (a *attestor) match(ctx context.Context, row listedContainer, callerNs, own nsKey) (*jobMatch, error) {
	job, kind := row.Labels["flashpods.job"], row.Labels["flashpods.kind"]
	name := ""
	if len(row.Names) > 0 {
		name = row.Names[0]
	}
	if row.State != "running" || row.Pid <= 0 || row.Labels["flashpods.instance"] != a.instance {
		return nil, nil
	}
	if !jobIDRe.MatchString(job) || !kinds[kind] || name != job {
		return nil, nil // not the API's container: it names each after its job
	}
	if !a.firstContainerOfJob(job, row.ID, row.Pid) {
		return nil, nil
	}
	init, initNs, err := a.kernel.namespaceOf(row.Pid)
	if err != nil {
		return nil, nil // exited between list and open
	}
	defer init.Close()
	if initNs != callerNs || initNs == own {
		// A job container in the host's PID namespace (--pid=host) would make every
		// host process look like that job: never attest through it.
		return nil, nil
	}
	// Close the list -> open race: the process we opened must still be this
	// container's init, and the container still a live, claimed job.
	now, err := a.podman.inspect(ctx, row.ID)
	if err != nil {
		return nil, err
	}
	if now == nil || now.ID != row.ID || !liveJob(now, a.instance, job, row.Pid) || init.Exited() {
		return nil, nil
	}
	return &jobMatch{job: job, kind: now.Config.Labels["flashpods.kind"]}, nil
}
