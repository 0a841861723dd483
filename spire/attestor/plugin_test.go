package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	workloadattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/workloadattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
)

func configure(t *testing.T, p *Plugin, hcl string) error {
	t.Helper()
	_, err := p.Configure(context.Background(), &configv1.ConfigureRequest{HclConfiguration: hcl})
	return err
}

func TestConfigureNamesWhatToFix(t *testing.T) {
	p := newPlugin()
	for hcl, want := range map[string]string{
		`instance = "dev"`:                                             "podman_socket",
		`podman_socket = "unix:///run/podman.sock"`:                    "instance",
		`podman_socket = "relative.sock"` + "\n" + `instance = "dev"`:  "podman_socket",
		`podman_socket = "/run/p.sock"` + "\n" + `instance = "../etc"`: "instance",
		`podman_socket = "/run/p.sock"` + "\n" + `instance = "dev`:     "HCL",
	} {
		err := configure(t, p, hcl)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error naming %s", hcl, err, want)
		}
	}
	if _, err := p.Attest(context.Background(), &workloadattestorv1.AttestRequest{Pid: 1}); err == nil {
		t.Error("an unconfigured plugin attested")
	}
}

func TestPluginAnswersSelectorValues(t *testing.T) {
	procs, podman := newProcTree(t), newFakePodman(t)
	procs.process(100, "job1")
	podman.addJob("job_plugin01", "sub_agent", 100)
	p := newPlugin()
	p.kernel = procs.kernel()
	// As under spire-agent's unit: CAP_SYS_PTRACE in the effective set. Without it a
	// non-root run (the Nix build sandbox's nixbld user) is refused at Configure.
	writeStatus(t, procs.root, "0000000000080000")
	if err := configure(t, p, `podman_socket = "unix://`+podman.socket+`"`+"\n"+`instance = "test"`); err != nil {
		t.Fatal(err)
	}
	resp, err := p.Attest(context.Background(), &workloadattestorv1.AttestRequest{Pid: 100})
	if err != nil {
		t.Fatal(err)
	}
	wantSelectors(t, resp.SelectorValues, "job_plugin01", "sub_agent")
	procs.process(300, "host")
	resp, err = p.Attest(context.Background(), &workloadattestorv1.AttestRequest{Pid: 300})
	if err != nil || len(resp.SelectorValues) != 0 {
		t.Fatalf("host process: %v, %v", resp, err)
	}
	podman.change(func() { podman.down = true })
	procs.process(310, "elsewhere")
	if _, err := p.Attest(context.Background(), &workloadattestorv1.AttestRequest{Pid: 310}); err == nil {
		t.Fatal("Podman down: want an error so the agent gives no identity")
	}
}

// The real kernel: pidfds and nsfs inodes of live processes.
func TestRealKernelNamespaceOfLiveAndExitedProcesses(t *testing.T) {
	k := realKernel()
	p, key, err := k.namespaceOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	own, err := k.ownPidNamespace()
	if err != nil || own != key {
		t.Fatalf("own namespace %v (%v), want %v", own, err, key)
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child, err := k.open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer child.Close()
	_ = cmd.Wait()
	if !child.Exited() {
		t.Fatal("pidfd of an exited child does not poll as exited")
	}
	if p.Exited() {
		t.Fatal("our own pidfd polls as exited")
	}
}

func writeStatus(t *testing.T, root, capEff string) {
	t.Helper()
	if err := os.MkdirAll(root+"/self", 0o755); err != nil {
		t.Fatal(err)
	}
	text := "Name:\tspire-agent\nCapInh:\t0000000000000000\nCapEff:\t" + capEff + "\n"
	if err := os.WriteFile(root+"/self/status", []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCapSysPtraceIsReadFromCapEff(t *testing.T) {
	root := t.TempDir()
	writeStatus(t, root, "0000000000080000") // bit 19 only
	if ok, err := hasCapSysPtrace(root); err != nil || !ok {
		t.Fatalf("bit 19 set: %v, %v", ok, err)
	}
	writeStatus(t, root, "000001ffffe7ffff") // everything but bit 19
	if ok, err := hasCapSysPtrace(root); err != nil || ok {
		t.Fatalf("bit 19 clear: %v, %v", ok, err)
	}
	writeStatus(t, root, "zz")
	if _, err := hasCapSysPtrace(root); err == nil {
		t.Fatal("a malformed CapEff was accepted")
	}
}
