// Command flashpods-spire-attestor is a SPIRE agent workload attestor plugin (external,
// loaded with plugin_cmd). Given the pid of a Workload API caller it answers the
// selectors flashpods:job:<id>, flashpods:kind:<worker|sub_agent> and
// flashpods:instance:<name> when that process runs in a live, claimed Flashpods job
// container of the configured instance, and no selectors for any other process.
package main

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	workloadattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/workloadattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var _ pluginsdk.NeedsLogger = (*Plugin)(nil)

// Config is plugin_data.
type Config struct {
	// PodmanSocket: the job user's Podman API socket, unix:///path or /path.
	PodmanSocket string `hcl:"podman_socket"`
	// Instance: only containers labelled flashpods.instance=<this> are jobs.
	Instance string `hcl:"instance"`
	// PodmanTimeout: seconds per Podman request (default 5).
	PodmanTimeout int `hcl:"podman_timeout"`
}

type Plugin struct {
	workloadattestorv1.UnimplementedWorkloadAttestorServer
	configv1.UnimplementedConfigServer

	mu       sync.RWMutex
	attestor *attestor
	logger   hclog.Logger
	kernel   kernel // tests replace it
}

func newPlugin() *Plugin { return &Plugin{kernel: realKernel(), logger: hclog.NewNullLogger()} }

func (p *Plugin) SetLogger(logger hclog.Logger) { p.logger = logger }

func (p *Plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	var c Config
	if err := hcl.Decode(&c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "flashpods: plugin_data is not valid HCL: %v", err)
	}
	sock := strings.TrimPrefix(c.PodmanSocket, "unix://")
	if !strings.HasPrefix(sock, "/") {
		return nil, status.Error(codes.InvalidArgument,
			`flashpods: set plugin_data podman_socket to the job user's Podman socket, e.g. "unix:///run/user/1000/podman/podman.sock"`)
	}
	if !jobIDRe.MatchString(c.Instance) {
		return nil, status.Error(codes.InvalidArgument,
			`flashpods: set plugin_data instance to the flashpods.instance label of this host's jobs, e.g. "prod"`)
	}
	if err := checkCanReadJobNamespaces(p.kernel.procRoot, sock); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	timeout := 5 * time.Second
	if c.PodmanTimeout > 0 {
		timeout = time.Duration(c.PodmanTimeout) * time.Second
	}
	a := newAttestor(p.kernel, newPodmanClient(sock, timeout), c.Instance)
	p.mu.Lock()
	old := p.attestor
	if old != nil && old.instance == a.instance {
		a.seen = old.seen // keep what was learnt about jobs across a reconfigure
	}
	p.attestor = a
	p.mu.Unlock()
	return &configv1.ConfigureResponse{}, nil
}

func (p *Plugin) Attest(ctx context.Context, req *workloadattestorv1.AttestRequest) (*workloadattestorv1.AttestResponse, error) {
	p.mu.RLock()
	a := p.attestor
	p.mu.RUnlock()
	if a == nil {
		return nil, status.Error(codes.FailedPrecondition, "flashpods: not configured")
	}
	m, err := a.attest(ctx, int(req.Pid))
	if err == errAmbiguous {
		p.logger.Warn("no selectors: PID namespace shared by several jobs", "pid", req.Pid)
		return &workloadattestorv1.AttestResponse{}, nil
	}
	if err != nil {
		// Fail closed: the agent logs the error and has no flashpods selectors for this
		// caller, so no job entry (which needs all three) matches.
		return nil, status.Errorf(codes.Unavailable, "flashpods: cannot ask Podman which jobs run: %v", err)
	}
	if m == nil {
		return &workloadattestorv1.AttestResponse{}, nil
	}
	return &workloadattestorv1.AttestResponse{SelectorValues: m.selectors(a.instance)}, nil
}

func main() {
	p := newPlugin()
	pluginmain.Serve(
		workloadattestorv1.WorkloadAttestorPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
