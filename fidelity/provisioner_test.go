package fidelity

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/afero"
	"github.com/stretchr/testify/require"

	"cdr.dev/slog/v3"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/drpcsdk"
	"github.com/coder/coder/v2/provisionerd"
	provisionerdproto "github.com/coder/coder/v2/provisionerd/proto"
	"github.com/coder/coder/v2/provisionersdk"
	sdkproto "github.com/coder/coder/v2/provisionersdk/proto"
)

// The provisioner is the one part of a deployment that cannot run here (Terraform and a
// cloud). In its place, coderd's real provisioner daemon (provisionerd, in memory, as
// coderdtest runs it) drives this provisioner, which answers the way a Kubernetes
// template's `terraform apply` would:
//   - every build of a workspace reports one resource carrying the workspace's agents,
//     in start and stop builds alike (a Deployment scaled to zero keeps its coder_agent);
//   - each agent's token is stable for the life of the workspace, as the coder_agent
//     resource's token is in Terraform state, and a claim build reuses the running
//     prebuild's tokens (coderd hands them over as RunningAgentAuthTokens);
//   - the template's presets and their prebuild instance counts come from the template
//     archive's fidelity.json;
//   - a claim build of a workspace named "fail-*" fails in apply (terraform apply
//     errors: the job fails and, as with any failed job, no resources are recorded);
//   - a claim build of a workspace named "slow-*", a stop build of one named
//     "slowstop-*" and a delete build of one named "slowdel-*" stay in apply until the
//     harness releases them (a running job, as a slow `terraform apply` is);
//   - the next build of a given transition of a named workspace fails in apply when the
//     harness asked for it (gates.failNext).

// templateSpec is the template archive's fidelity.json.
type templateSpec struct {
	Presets []presetSpec `json:"presets"`
	// Agents per workspace (default 1).
	Agents int `json:"agents"`
}

type presetSpec struct {
	Name      string `json:"name"`
	Instances int32  `json:"instances"`
}

const (
	failClaimPrefix = "fail-"
	slowClaimPrefix = "slow-"
	slowStopPrefix  = "slowstop-"
	slowDelPrefix   = "slowdel-"
	specFile        = "fidelity.json"
)

// tokenNamespace derives agent tokens: uuid5(namespace, workspace id + agent name).
var tokenNamespace = uuid.MustParse("6f0c2b8e-4d0a-4d7e-9a55-2f2a8f1b7c31")

func agentToken(workspaceID, agentName string) string {
	return uuid.NewSHA1(tokenNamespace, []byte(workspaceID+"/"+agentName)).String()
}

func agentName(i int) string {
	if i == 0 {
		return "main"
	}
	return "agent" + string(rune('a'+i))
}

// gates holds the slow builds until released, keyed by workspace name.
type gates struct {
	mu    sync.Mutex
	gates map[string]*gate
	// fail: workspace name and transition whose next build fails.
	fail map[string]bool
}

// failNext makes the next build of the transition of the named workspace fail in apply.
func (g *gates) failNext(name string, tr sdkproto.WorkspaceTransition) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fail[name+"/"+tr.String()] = true
}

func (g *gates) takeFail(name string, tr sdkproto.WorkspaceTransition) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := name + "/" + tr.String()
	f := g.fail[k]
	delete(g.fail, k)
	return f
}

type gate struct {
	entered, released chan struct{}
	enterOnce         sync.Once
}

func newGates() *gates { return &gates{gates: map[string]*gate{}, fail: map[string]bool{}} }

func (g *gates) get(name string) *gate {
	g.mu.Lock()
	defer g.mu.Unlock()
	gt, ok := g.gates[name]
	if !ok {
		gt = &gate{entered: make(chan struct{}), released: make(chan struct{})}
		g.gates[name] = gt
	}
	return gt
}

// entered is closed once the named workspace's slow apply is running.
func (g *gates) entered(name string) <-chan struct{} { return g.get(name).entered }

// release lets the slow apply of the named workspace finish.
func (g *gates) release(name string) { close(g.get(name).released) }

type kubeLikeProvisioner struct {
	gates *gates
	log   slog.Logger
}

var _ provisionersdk.Server = (*kubeLikeProvisioner)(nil)

func (*kubeLikeProvisioner) Parse(*provisionersdk.Session, *sdkproto.ParseRequest, <-chan struct{}) *sdkproto.ParseComplete {
	return &sdkproto.ParseComplete{}
}

func (*kubeLikeProvisioner) Init(s *provisionersdk.Session, r *provisionersdk.InitRequest, _ <-chan struct{}) *sdkproto.InitComplete {
	if err := s.Files.ExtractArchive(s.Context(), s.Logger, afero.NewOsFs(), r.TemplateSourceArchive, nil); err != nil {
		return &sdkproto.InitComplete{Error: "extract archive: " + err.Error()}
	}
	return &sdkproto.InitComplete{ModuleFiles: []byte{}}
}

func (*kubeLikeProvisioner) Plan(*provisionersdk.Session, *sdkproto.PlanRequest, <-chan struct{}) *sdkproto.PlanComplete {
	return &sdkproto.PlanComplete{Plan: []byte("{}")}
}

func (p *kubeLikeProvisioner) Apply(s *provisionersdk.Session, r *sdkproto.ApplyRequest, canceledOrComplete <-chan struct{}) *sdkproto.ApplyComplete {
	md := r.GetMetadata()
	claim := md.GetPrebuiltWorkspaceBuildStage() == sdkproto.PrebuiltWorkspaceBuildStage_CLAIM
	name := md.GetWorkspaceName()
	tr := md.GetWorkspaceTransition()
	switch {
	case claim && strings.HasPrefix(name, failClaimPrefix):
		return &sdkproto.ApplyComplete{Error: "terraform apply: the claim build failed (fidelity harness)"}
	case p.gates.takeFail(name, tr):
		return &sdkproto.ApplyComplete{Error: "terraform apply: the " + strings.ToLower(tr.String()) + " build failed (fidelity harness)"}
	case claim && strings.HasPrefix(name, slowClaimPrefix),
		tr == sdkproto.WorkspaceTransition_STOP && strings.HasPrefix(name, slowStopPrefix),
		tr == sdkproto.WorkspaceTransition_DESTROY && strings.HasPrefix(name, slowDelPrefix):
		gt := p.gates.get(name)
		gt.enterOnce.Do(func() { close(gt.entered) })
		select {
		case <-gt.released:
		case <-canceledOrComplete:
			return &sdkproto.ApplyComplete{Error: "canceled"}
		case <-s.Context().Done():
			return &sdkproto.ApplyComplete{Error: "canceled"}
		}
	}
	return &sdkproto.ApplyComplete{State: []byte("{}")}
}

func (p *kubeLikeProvisioner) Graph(s *provisionersdk.Session, r *sdkproto.GraphRequest, _ <-chan struct{}) *sdkproto.GraphComplete {
	spec, err := readSpec(s.Files.WorkDirectory())
	if err != nil {
		return &sdkproto.GraphComplete{Error: err.Error()}
	}
	md := r.GetMetadata()
	running := map[string]string{}
	for _, t := range md.GetRunningAgentAuthTokens() {
		running[t.GetAgentId()] = t.GetToken()
	}
	agents := make([]*sdkproto.Agent, 0, spec.Agents)
	for i := 0; i < spec.Agents; i++ {
		a := &sdkproto.Agent{Name: agentName(i), OperatingSystem: "linux", Architecture: "amd64"}
		// Template imports (no workspace yet) get coderd-generated tokens.
		if ws := md.GetWorkspaceId(); ws != "" {
			a.Auth = &sdkproto.Agent_Token{Token: agentToken(ws, a.Name)}
		}
		agents = append(agents, a)
	}
	if len(running) > 0 && len(running) != len(agents) {
		p.log.Warn(s.Context(), "claim build: running agent tokens do not match the agents", slog.F("running", len(running)))
	}
	presets := make([]*sdkproto.Preset, 0, len(spec.Presets))
	for _, ps := range spec.Presets {
		presets = append(presets, &sdkproto.Preset{Name: ps.Name, Prebuild: &sdkproto.Prebuild{Instances: ps.Instances}})
	}
	return &sdkproto.GraphComplete{
		Resources: []*sdkproto.Resource{{Name: "dev", Type: "kubernetes_deployment", Agents: agents}},
		Presets:   presets,
	}
}

func readSpec(dir string) (templateSpec, error) {
	spec := templateSpec{Agents: 1}
	b, err := os.ReadFile(filepath.Join(dir, specFile))
	if err != nil {
		return spec, err
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return spec, err
	}
	if spec.Agents < 1 {
		spec.Agents = 1
	}
	return spec, nil
}

// startProvisionerDaemons starts n in-memory provisioner daemons on coderd, as
// coderdtest.NewTaggedProvisionerDaemon does, each serving the kube-like provisioner
// under the "echo" provisioner type (the type coder's own tests register). They dial
// whichever coderd runs (dialProvisioner), so they outlive a coderd restart as external
// daemons do.
func startProvisionerDaemons(t *testing.T, env *coderdEnv, g *gates, n int) {
	startProvisionerDaemonsWith(t, env, g, n, "fidelity-", env.dialProvisioner)
}

// startProvisionerDaemonsWith is startProvisionerDaemons with a dialer of the caller's (an
// organization's external daemons: coderd's provisioner daemon endpoint, a provisioner key).
func startProvisionerDaemonsWith(t *testing.T, env *coderdEnv, g *gates, n int, prefix string, dial func(ctx context.Context, name string) (provisionerdproto.DRPCProvisionerDaemonClient, error)) {
	for i := 0; i < n; i++ {
		workDir := t.TempDir()
		client, server := drpcsdk.MemTransportPipe()
		ctx, cancel := context.WithCancel(context.Background())
		p := &kubeLikeProvisioner{gates: g, log: env.log.Named("provisioner")}
		go func() {
			_ = provisionersdk.Serve(ctx, p, &provisionersdk.ServeOptions{
				Listener:      server,
				WorkDirectory: workDir,
				Logger:        env.log.Named("provisioner"),
			})
		}()
		connected := make(chan struct{})
		name := prefix + string(rune('a'+i))
		daemon := provisionerd.New(func(dialCtx context.Context) (provisionerdproto.DRPCProvisionerDaemonClient, error) {
			return dial(dialCtx, name)
		}, &provisionerd.Options{
			Logger:              env.log.Named("provisionerd"),
			UpdateInterval:      250 * time.Millisecond,
			ForceCancelInterval: 5 * time.Second,
			Connector: provisionerd.LocalProvisioners{
				string(codersdk.ProvisionerTypeEcho): sdkproto.NewDRPCProvisionerClient(client),
			},
			InitConnectionCh: connected,
		})
		select {
		case <-connected:
		case <-time.After(60 * time.Second):
			t.Fatal("provisioner daemon did not connect")
		}
		t.Cleanup(func() {
			shutdownCtx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_ = daemon.Shutdown(shutdownCtx, true)
			_ = daemon.Close()
			_ = client.Close()
			_ = server.Close()
			cancel()
		})
	}
	require.True(t, n > 0)
}
