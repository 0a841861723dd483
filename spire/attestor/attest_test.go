package main

// The attestor against fixture /proc trees (one inode per PID namespace, as nsfs
// gives) and a fake Podman API served over a unix socket. The real-kernel, real-SPIRE,
// real-Podman version is tests/integration/spire/.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const instance = "test"

// procTree is a fixture /proc: <pid>/ns/pid is a hard link to one file per namespace.
type procTree struct {
	t    *testing.T
	root string
	mu   sync.Mutex
	live map[int]*fakeProcess
}

type fakeProcess struct {
	mu sync.Mutex
	// exitAfter: Exited() answers true from its (exitAfter+1)th call on; -1: never.
	exitAfter int
	calls     int
}

func (p *fakeProcess) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	return p.exitAfter >= 0 && p.calls > p.exitAfter
}
func (p *fakeProcess) Close() {}

func newProcTree(t *testing.T) *procTree {
	pt := &procTree{t: t, root: t.TempDir(), live: map[int]*fakeProcess{}}
	pt.namespace("host")
	pt.link("self", "host")
	return pt
}

func (pt *procTree) namespace(name string) {
	if err := os.MkdirAll(filepath.Join(pt.root, "ns"), 0o755); err != nil {
		pt.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pt.root, "ns", name), nil, 0o644); err != nil {
		pt.t.Fatal(err)
	}
}

func (pt *procTree) link(dir, ns string) {
	d := filepath.Join(pt.root, dir, "ns")
	if err := os.MkdirAll(d, 0o755); err != nil {
		pt.t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(d, "pid"))
	if err := os.Link(filepath.Join(pt.root, "ns", ns), filepath.Join(d, "pid")); err != nil {
		pt.t.Fatal(err)
	}
}

// process puts pid in namespace ns (created if new); it runs until exit().
func (pt *procTree) process(pid int, ns string) *fakeProcess {
	if _, err := os.Stat(filepath.Join(pt.root, "ns", ns)); err != nil {
		pt.namespace(ns)
	}
	pt.link(strconv.Itoa(pid), ns)
	p := &fakeProcess{exitAfter: -1}
	pt.mu.Lock()
	pt.live[pid] = p
	pt.mu.Unlock()
	return p
}

func (pt *procTree) exit(pid int) {
	pt.mu.Lock()
	delete(pt.live, pid)
	pt.mu.Unlock()
	_ = os.RemoveAll(filepath.Join(pt.root, strconv.Itoa(pid)))
}

func (pt *procTree) kernel() kernel {
	return kernel{procRoot: pt.root, open: func(pid int) (process, error) {
		pt.mu.Lock()
		defer pt.mu.Unlock()
		p, ok := pt.live[pid]
		if !ok {
			return nil, fmt.Errorf("no such process")
		}
		return p, nil
	}}
}

// fakePodman answers the two libpod calls the attestor makes, over a unix socket.
type fakePodman struct {
	mu         sync.Mutex
	containers map[string]*inspected // by id
	order      []string
	down       bool
	// onInspect, if set, runs before an inspect is answered (to change the world
	// between the list and the re-check).
	onInspect func(id string)
	socket    string
}

func newFakePodman(t *testing.T) *fakePodman {
	fp := &fakePodman{containers: map[string]*inspected{}}
	dir, err := os.MkdirTemp("", "fp-podman")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	fp.socket = filepath.Join(dir, "podman.sock")
	ln, err := net.Listen("unix", fp.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(fp.serve))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return fp
}

func (fp *fakePodman) serve(w http.ResponseWriter, r *http.Request) {
	fp.mu.Lock()
	down := fp.down
	hook := fp.onInspect
	fp.mu.Unlock()
	if down {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v4.0.0/libpod")
	if path == "/containers/json" {
		var filters map[string][]string
		if err := json.Unmarshal([]byte(r.URL.Query().Get("filters")), &filters); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		fp.mu.Lock()
		defer fp.mu.Unlock()
		rows := []listedContainer{}
		for _, id := range fp.order {
			c, ok := fp.containers[id]
			if !ok || !c.State.Running || !matchesLabels(c.Config.Labels, filters["label"]) {
				continue
			}
			rows = append(rows, listedContainer{ID: c.ID, Names: []string{c.Name}, Pid: c.State.Pid,
				State: "running", Labels: c.Config.Labels})
		}
		_ = json.NewEncoder(w).Encode(rows)
		return
	}
	id := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")
	if hook != nil {
		hook(id)
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	c, ok := fp.containers[id]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	_ = json.NewEncoder(w).Encode(c)
}

func matchesLabels(labels map[string]string, want []string) bool {
	for _, f := range want {
		k, v, hasValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || (hasValue && got != v) {
			return false
		}
	}
	return true
}

// addJob starts a container for job (named after it) whose init is pid.
func (fp *fakePodman) addJob(job, kind string, pid int, edit ...func(*inspected)) *inspected {
	c := &inspected{ID: fmt.Sprintf("%064x", len(fp.order)+1), Name: job}
	c.State.Status, c.State.Running, c.State.Pid, c.State.FinishedAt = "running", true, pid, zeroTime
	c.Config.Labels = map[string]string{"flashpods.instance": instance, "flashpods.job": job, "flashpods.kind": kind}
	for _, e := range edit {
		e(c)
	}
	fp.mu.Lock()
	defer fp.mu.Unlock()
	fp.containers[c.ID] = c
	fp.order = append(fp.order, c.ID)
	return c
}

func (fp *fakePodman) change(f func()) {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	f()
}

type fixture struct {
	procs  *procTree
	podman *fakePodman
	a      *attestor
}

func newFixture(t *testing.T) *fixture {
	procs, podman := newProcTree(t), newFakePodman(t)
	return &fixture{procs, podman, newAttestor(procs.kernel(), newPodmanClient(podman.socket, 5*time.Second), instance)}
}

func (f *fixture) selectors(t *testing.T, pid int) []string {
	t.Helper()
	m, err := f.a.attest(context.Background(), pid)
	if err != nil {
		t.Fatalf("attest %d: %v", pid, err)
	}
	if m == nil {
		return nil
	}
	return m.selectors(instance)
}

func wantSelectors(t *testing.T, got []string, job, kind string) {
	t.Helper()
	want := []string{"job:" + job, "kind:" + kind, "instance:" + instance}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("selectors %v, want %v", got, want)
	}
}

func wantNone(t *testing.T, got []string) {
	t.Helper()
	if len(got) != 0 {
		t.Fatalf("selectors %v, want none", got)
	}
}

// --- the cases carried over from the token service's peer mode -----------------------

func TestProcessInAJobNamespaceGetsItsSelectors(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.procs.process(101, "job1") // a process the job started (or `podman exec`)
	f.podman.addJob("job_worker01", "worker", 100)
	wantSelectors(t, f.selectors(t, 101), "job_worker01", "worker")
	wantSelectors(t, f.selectors(t, 100), "job_worker01", "worker")
}

func TestSubAgentNamespaceGetsSubAgentKind(t *testing.T) {
	f := newFixture(t)
	f.procs.process(200, "agentns")
	f.procs.process(201, "agentns")
	f.podman.addJob("job_agent001", "sub_agent", 200)
	wantSelectors(t, f.selectors(t, 201), "job_agent001", "sub_agent")
}

func TestHostProcessGetsNothing(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_worker02", "worker", 100)
	f.procs.process(300, "host")
	wantNone(t, f.selectors(t, 300))
}

func TestEndedJobNamespaceGetsNothing(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.procs.process(101, "job1")
	c := f.podman.addJob("job_worker03", "worker", 100)
	wantSelectors(t, f.selectors(t, 101), "job_worker03", "worker")
	f.procs.exit(100)
	f.podman.change(func() { c.State.Running, c.State.Status = false, "exited" })
	wantNone(t, f.selectors(t, 101)) // a straggler left in the dead job's namespace
}

func TestRestartedContainerOfAFinishedJobIsNotAttested(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_worker04", "worker", 100, func(c *inspected) { c.State.FinishedAt = "2026-11-23T10:00:00Z" })
	wantNone(t, f.selectors(t, 100))
}

func TestAJobContainerInTheHostPIDNamespaceIsNeverUsed(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "host") // as if run with --pid=host
	f.procs.process(300, "host")
	f.podman.addJob("job_hostpid1", "worker", 100)
	wantNone(t, f.selectors(t, 300))
	wantNone(t, f.selectors(t, 100))
}

func TestNamespaceSharedByTwoJobsIsAmbiguous(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "shared")
	f.procs.process(101, "shared")
	f.procs.process(102, "shared")
	f.podman.addJob("job_shared01", "worker", 100)
	f.podman.addJob("job_shared02", "sub_agent", 101)
	m, err := f.a.attest(context.Background(), 102)
	if err != errAmbiguous || m != nil {
		t.Fatalf("got %v, %v; want errAmbiguous", m, err)
	}
}

func TestJobOfAnotherInstanceIsNotAttested(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_foreign1", "sub_agent", 100, func(c *inspected) { c.Config.Labels["flashpods.instance"] = "other" })
	wantNone(t, f.selectors(t, 100))
}

func TestPodmanDownFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_worker05", "worker", 100)
	f.podman.change(func() { f.podman.down = true })
	if m, err := f.a.attest(context.Background(), 100); err == nil || m != nil {
		t.Fatalf("got %v, %v; want an error", m, err)
	}
}

func TestNewContainerIsFound(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "first")
	f.podman.addJob("job_first001", "worker", 100)
	wantSelectors(t, f.selectors(t, 100), "job_first001", "worker")
	f.procs.process(110, "second")
	f.podman.addJob("job_second01", "sub_agent", 110)
	wantSelectors(t, f.selectors(t, 110), "job_second01", "sub_agent")
}

func TestJobRecreatedAfterItsContainerEndedStaysDead(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "first")
	first := f.podman.addJob("job_recreat1", "worker", 100)
	wantSelectors(t, f.selectors(t, 100), "job_recreat1", "worker")
	f.procs.exit(100)
	f.podman.change(func() { delete(f.podman.containers, first.ID) })
	// Someone re-creates a container with the same name and labels.
	f.procs.process(120, "again")
	f.podman.addJob("job_recreat1", "worker", 120)
	wantNone(t, f.selectors(t, 120))
}

func TestRestartedContainerWithANewInitStaysDead(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "first")
	c := f.podman.addJob("job_restart1", "worker", 100)
	wantSelectors(t, f.selectors(t, 100), "job_restart1", "worker")
	f.procs.exit(100)
	f.procs.process(130, "again")
	f.podman.change(func() { c.State.Pid = 130 }) // as if FinishedAt were not set
	wantNone(t, f.selectors(t, 130))
}

func TestContainerNotNamedAfterItsJobIsNotAttested(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_named001", "worker", 100, func(c *inspected) { c.Name = "something-else" })
	wantNone(t, f.selectors(t, 100))
}

func TestUnclaimedWarmContainerGetsNothingUntilClaimed(t *testing.T) {
	f := newFixture(t)
	control := t.TempDir()
	f.procs.process(100, "warm")
	f.podman.addJob("job_warm0001", "worker", 100, func(c *inspected) {
		c.Config.Labels[warmLabel] = "1"
		c.Mounts = append(c.Mounts, struct {
			Destination string `json:"Destination"`
			Source      string `json:"Source"`
		}{controlInContainer, control})
	})
	wantNone(t, f.selectors(t, 100))
	if err := os.Symlink("/etc/passwd", filepath.Join(control, handedOverFile)); err != nil {
		t.Fatal(err)
	}
	wantNone(t, f.selectors(t, 100)) // only a regular file is a hand-over
	_ = os.Remove(filepath.Join(control, handedOverFile))
	if err := os.WriteFile(filepath.Join(control, handedOverFile), []byte("true"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantSelectors(t, f.selectors(t, 100), "job_warm0001", "worker")
}

// --- what is new with a bare pid: pid reuse and the list/open race --------------------

func TestCallerThatExitsDuringAttestationGetsNothing(t *testing.T) {
	// The pid's process exits after the pidfd was opened; the pid may already name a
	// job's process when /proc is read. Only a caller alive after the read counts.
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_worker06", "worker", 100)
	caller := f.procs.process(140, "job1")
	caller.exitAfter = 0
	wantNone(t, f.selectors(t, 140))
}

func TestCallerThatExitsWhilePodmanIsAskedGetsNothing(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.podman.addJob("job_worker07", "worker", 100)
	caller := f.procs.process(141, "job1")
	caller.exitAfter = 1 // alive at the namespace read, gone at the end
	wantNone(t, f.selectors(t, 141))
}

func TestInitReplacedBetweenListAndOpenIsNotUsed(t *testing.T) {
	// Podman listed init pid 100; before the attestor re-checks, that container's init
	// died and the container runs a new one: the namespace read may be a stranger's.
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.procs.process(101, "job1")
	c := f.podman.addJob("job_worker08", "worker", 100)
	f.podman.onInspect = func(string) {
		f.podman.change(func() { c.State.Pid = 150 })
	}
	wantNone(t, f.selectors(t, 101))
}

func TestContainerGoneBeforeTheRecheckIsNotUsed(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "job1")
	c := f.podman.addJob("job_worker09", "worker", 100)
	f.podman.onInspect = func(string) {
		f.podman.change(func() { delete(f.podman.containers, c.ID) })
	}
	wantNone(t, f.selectors(t, 100))
}

func TestInitThatExitsAfterTheRecheckIsNotUsed(t *testing.T) {
	f := newFixture(t)
	init := f.procs.process(100, "job1")
	f.procs.process(101, "job1")
	f.podman.addJob("job_worker10", "worker", 100)
	init.exitAfter = 1 // alive at the namespace read, exited at the final check
	wantNone(t, f.selectors(t, 101))
}

func TestInitAlreadyGoneWhenOpenedIsNotUsed(t *testing.T) {
	f := newFixture(t)
	f.procs.process(101, "job1")
	f.podman.addJob("job_worker11", "worker", 100) // pid 100 has no process
	wantNone(t, f.selectors(t, 101))
}

func TestProcessInANestedNamespaceGetsNothing(t *testing.T) {
	// A job may unshare a child PID namespace; its processes there are not the job's
	// init's namespace, and are not attested (fail closed).
	f := newFixture(t)
	f.procs.process(100, "job1")
	f.procs.process(160, "job1-child")
	f.podman.addJob("job_worker12", "worker", 100)
	wantNone(t, f.selectors(t, 160))
}

func TestBadLabelsAreNotAttested(t *testing.T) {
	f := newFixture(t)
	f.procs.process(100, "badkind")
	f.podman.addJob("job_badkind1", "admin", 100)
	wantNone(t, f.selectors(t, 100))
	f.procs.process(110, "badid")
	f.podman.addJob("job/../x", "worker", 110)
	wantNone(t, f.selectors(t, 110))
}

func TestUnknownPidGetsNothing(t *testing.T) {
	f := newFixture(t)
	wantNone(t, f.selectors(t, 999))
	wantNone(t, f.selectors(t, 0))
	wantNone(t, f.selectors(t, -1))
}
