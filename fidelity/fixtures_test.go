package fidelity

import (
	"archive/tar"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentproto "github.com/coder/coder/v2/agent/proto"
	"github.com/coder/coder/v2/coderd/audit"
	"github.com/coder/coder/v2/coderd/database"
	"github.com/coder/coder/v2/coderd/database/provisionerjobs"
	"github.com/coder/coder/v2/coderd/rbac"
	"github.com/coder/coder/v2/coderd/rbac/policy"
	"github.com/coder/coder/v2/coderd/wsbuilder"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/agentsdk"
)

// Every workspace below is made the way coderd makes it: templates through the API, the
// prebuilds through the enterprise reconciler, claims through POST
// /users/{user}/workspaces with a preset (coderd's createWorkspace: ClaimPrebuiltWorkspace
// and the claim build in one transaction), stops and starts through POST
// /workspaces/{id}/builds, each build run by coderd's provisioner daemon. The one
// exception is the "hold" state, which coderd's API cannot produce (see holdClaim).

// deployment is a coderd with its first user, license, an ordinary member who claims
// prebuilds, and the provisioner gates.
type deployment struct {
	env   *coderdEnv
	admin *codersdk.Client
	orgID uuid.UUID
	// org2: a second organization with external provisioner daemons of its own.
	org2   uuid.UUID
	member *codersdk.Client
	// memberID owns the claimed workspaces.
	memberID uuid.UUID
	gates    *gates
}

// template is one template version and its presets by name.
type template struct {
	id      uuid.UUID
	version uuid.UUID
	presets map[string]uuid.UUID
	// agents: agents per workspace.
	agents int
}

func templateArchive(spec templateSpec) []byte {
	body, _ := json.Marshal(spec)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: specFile, Mode: 0o644, Size: int64(len(body))})
	_, _ = tw.Write(body)
	_ = tw.Close()
	return buf.Bytes()
}

// createTemplate uploads a template, waits for its import and creates the template.
func (d *deployment) createTemplate(ctx context.Context, t *testing.T, name string, spec templateSpec, adjust ...func(*codersdk.CreateTemplateRequest)) template {
	return d.createTemplateIn(ctx, t, d.orgID, name, spec, adjust...)
}

// createTemplateIn is createTemplate in a given organization.
func (d *deployment) createTemplateIn(ctx context.Context, t *testing.T, org uuid.UUID, name string, spec templateSpec, adjust ...func(*codersdk.CreateTemplateRequest)) template {
	file, err := d.admin.Upload(ctx, codersdk.ContentTypeTar, bytes.NewReader(templateArchive(spec)))
	require.NoError(t, err)
	tv, err := d.admin.CreateTemplateVersion(ctx, org, codersdk.CreateTemplateVersionRequest{
		Name:          name + "-v1",
		FileID:        file.ID,
		StorageMethod: codersdk.ProvisionerStorageMethodFile,
		Provisioner:   codersdk.ProvisionerTypeEcho,
	})
	require.NoError(t, err)
	tv = d.awaitImport(ctx, t, tv.ID)
	req := codersdk.CreateTemplateRequest{Name: name, VersionID: tv.ID}
	for _, f := range adjust {
		f(&req)
	}
	tpl, err := d.admin.CreateTemplate(ctx, org, req)
	require.NoError(t, err)
	presets, err := d.admin.TemplateVersionPresets(ctx, tv.ID)
	require.NoError(t, err)
	byName := map[string]uuid.UUID{}
	for _, p := range presets {
		byName[p.Name] = p.ID
	}
	return template{id: tpl.ID, version: tv.ID, presets: byName, agents: max(1, spec.Agents)}
}

// awaitBuild waits for a workspace build's job to end and returns the build.
func awaitBuild(ctx context.Context, t *testing.T, client *codersdk.Client, buildID uuid.UUID) codersdk.WorkspaceBuild {
	var b codersdk.WorkspaceBuild
	require.Eventually(t, func() bool {
		var err error
		b, err = client.WorkspaceBuild(ctx, buildID)
		return err == nil && b.Job.CompletedAt != nil
	}, 3*time.Minute, 100*time.Millisecond, "build %s did not finish", buildID)
	return b
}

// awaitBuildErr is awaitBuild for goroutines: it returns an error instead of failing.
func awaitBuildErr(ctx context.Context, client *codersdk.Client, buildID uuid.UUID) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		b, err := client.WorkspaceBuild(ctx, buildID)
		if err == nil && b.Job.CompletedAt != nil {
			if b.Job.Status != codersdk.ProvisionerJobSucceeded {
				return fmt.Errorf("build %s: %s %s", buildID, b.Job.Status, b.Job.Error)
			}
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("build %s did not finish", buildID)
}

// awaitPrebuild waits until the reconciler has built a prebuild for the preset whose
// agents reported ready (the claimable state) and returns its workspace id. It reports
// the agents ready as the agents would (UpdateLifecycle over the agent RPC).
func (d *deployment) awaitPrebuild(ctx context.Context, t *testing.T, preset uuid.UUID, agents int) uuid.UUID {
	var id uuid.UUID
	require.Eventually(t, func() bool {
		err := d.env.sqlDB.QueryRowContext(ctx, `
			SELECT b.workspace_id FROM workspace_latest_builds b
			JOIN workspaces w ON w.id = b.workspace_id
			WHERE w.owner_id = $1 AND NOT w.deleted AND b.template_version_preset_id = $2
			  AND b.transition = 'start' AND b.job_status = 'succeeded'
			ORDER BY w.created_at LIMIT 1`, database.PrebuildsSystemUserID, preset).Scan(&id)
		return err == nil
	}, 3*time.Minute, 200*time.Millisecond, "no prebuild for preset %s", preset)
	for i := 0; i < agents; i++ {
		reportReady(ctx, t, d.env.url.String(), agentToken(id.String(), agentName(i)))
	}
	return id
}

// awaitPrebuilds is awaitPrebuild for a preset with many instances: it returns n
// prebuilds, their agents ready.
func (d *deployment) awaitPrebuilds(ctx context.Context, t *testing.T, preset uuid.UUID, n, agents int) []uuid.UUID {
	var ids []uuid.UUID
	require.Eventually(t, func() bool {
		rows, err := d.env.sqlDB.QueryContext(ctx, `
			SELECT b.workspace_id FROM workspace_latest_builds b
			JOIN workspaces w ON w.id = b.workspace_id
			WHERE w.owner_id = $1 AND NOT w.deleted AND b.template_version_preset_id = $2
			  AND b.transition = 'start' AND b.job_status = 'succeeded'`, database.PrebuildsSystemUserID, preset)
		if err != nil {
			return false
		}
		defer rows.Close()
		ids = ids[:0]
		for rows.Next() {
			var id uuid.UUID
			if rows.Scan(&id) == nil {
				ids = append(ids, id)
			}
		}
		return len(ids) >= n
	}, 10*time.Minute, time.Second, "fewer than %d prebuilds for preset %s", n, preset)
	ids = ids[:n]
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range ids {
		for i := 0; i < agents; i++ {
			token := agentToken(id.String(), agentName(i))
			g.Go(func() error {
				reportReady(gctx, t, d.env.url.String(), token)
				return nil
			})
		}
	}
	require.NoError(t, g.Wait())
	return ids
}

// reportReady connects as the agent does (agent RPC over WebSocket, role "agent"), reads
// its manifest and reports the lifecycle the agent reports on start: starting, ready.
func reportReady(ctx context.Context, t *testing.T, baseURL, token string) {
	client := agentsdk.New(mustURL(baseURL), agentsdk.WithFixedToken(token))
	aAPI, _, err := client.ConnectRPC29WithRole(ctx, "agent")
	require.NoError(t, err, "agent RPC")
	defer aAPI.DRPCConn().Close()
	_, err = aAPI.GetManifest(ctx, &agentproto.GetManifestRequest{})
	require.NoError(t, err)
	for _, st := range []agentproto.Lifecycle_State{agentproto.Lifecycle_STARTING, agentproto.Lifecycle_READY} {
		_, err = aAPI.UpdateLifecycle(ctx, &agentproto.UpdateLifecycleRequest{
			Lifecycle: &agentproto.Lifecycle{State: st, ChangedAt: timestamppb.Now()},
		})
		require.NoError(t, err)
	}
}

// claim claims the preset's prebuild for the member through the API and returns the
// claim build (not awaited).
func (d *deployment) claim(ctx context.Context, t *testing.T, tpl template, preset uuid.UUID, prebuild uuid.UUID, name string) codersdk.WorkspaceBuild {
	ws, err := d.member.CreateUserWorkspace(ctx, codersdk.Me, codersdk.CreateWorkspaceRequest{
		TemplateVersionID:       tpl.version,
		TemplateVersionPresetID: preset,
		Name:                    name,
	})
	require.NoError(t, err)
	require.Equal(t, prebuild, ws.ID, "the API created a new workspace instead of claiming the prebuild")
	return ws.LatestBuild
}

// build starts a build of the member's workspace through the API; awaited.
func (d *deployment) build(ctx context.Context, t *testing.T, ws uuid.UUID, tr codersdk.WorkspaceTransition) codersdk.WorkspaceBuild {
	b, err := d.member.CreateWorkspaceBuild(ctx, ws, codersdk.CreateWorkspaceBuildRequest{Transition: tr})
	require.NoError(t, err)
	return awaitBuild(ctx, t, d.member, b.ID)
}

// holdClaim produces the state the patched handler calls "the workspace owner has changed
// but the claim build has not been created yet": coderd's own ClaimPrebuiltWorkspace
// query, committed on its own. coderd's API never commits it alone (createWorkspace runs
// the claim and the claim build in one transaction, and the enterprise claimer uses that
// transaction's store), so this state is reachable only by a write outside coderd's API
// (or a rolled-back claim build on a store that does not share the transaction).
// finishHoldClaim then creates the claim build as createWorkspace does.
func (d *deployment) holdClaim(ctx context.Context, t *testing.T, preset, prebuild uuid.UUID, name string) {
	row, err := d.env.db.ClaimPrebuiltWorkspace(ctx, database.ClaimPrebuiltWorkspaceParams{
		NewUserID: d.memberID,
		NewName:   name,
		Now:       time.Now(),
		PresetID:  preset,
	})
	require.NoError(t, err)
	require.Equal(t, prebuild, row.ID)
}

// finishHoldClaim creates the claim build of a held claim with wsbuilder, as
// createWorkspace does after claiming (initiator: the claiming user; stage CLAIM), and
// tells the provisioner daemons about the job.
func (d *deployment) finishHoldClaim(ctx context.Context, t *testing.T, tpl template, preset, ws uuid.UUID) uuid.UUID {
	var job *database.ProvisionerJob
	var build *database.WorkspaceBuild
	err := d.env.db.InTx(func(tx database.Store) error {
		w, err := tx.GetWorkspaceByID(ctx, ws)
		if err != nil {
			return err
		}
		b := wsbuilder.New(w, database.WorkspaceTransitionStart, *d.env.API().AGPL.BuildUsageChecker.Load()).
			Reason(database.BuildReasonInitiator).
			Initiator(d.memberID).
			VersionID(tpl.version).
			TemplateVersionPresetID(preset).
			MarkPrebuiltWorkspaceClaim()
		build, job, _, err = b.Build(ctx, tx, d.env.API().AGPL.FileCache, func(policy.Action, rbac.Objecter) bool { return true }, audit.WorkspaceBuildBaggage{})
		return err
	}, nil)
	require.NoError(t, err)
	require.NoError(t, provisionerjobs.PostJob(d.env.API().AGPL.Pubsub, *job))
	return build.ID
}

// prebuildPool hands out one claimable prebuild per preset name (presets are named
// scenario@column, unique across templates), waiting for the reconciler; safe for
// concurrent use.
type prebuildPool struct {
	mu        sync.Mutex
	d         *deployment
	templates map[string]template
	seen      map[string]bool
}

func (p *prebuildPool) take(ctx context.Context, t *testing.T, preset string) (uuid.UUID, uuid.UUID) {
	p.mu.Lock()
	if p.seen[preset] {
		p.mu.Unlock()
		t.Fatalf("preset %s used twice", preset)
	}
	p.seen[preset] = true
	p.mu.Unlock()
	for _, tpl := range p.templates {
		if id, ok := tpl.presets[preset]; ok {
			return id, p.d.awaitPrebuild(ctx, t, id, tpl.agents)
		}
	}
	t.Fatalf("no preset %s", preset)
	return uuid.Nil, uuid.Nil
}

// latestBuildSummary describes a workspace's latest build for the results.
func latestBuildSummary(ctx context.Context, db *sql.DB, ws uuid.UUID) string {
	var n int
	var tr, status string
	var initiator uuid.UUID
	var input []byte
	err := db.QueryRowContext(ctx, `
		SELECT b.build_number, b.transition::text, b.initiator_id, j.job_status::text, j.input
		FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
		WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`, ws).Scan(&n, &tr, &initiator, &status, &input)
	if err != nil {
		return "error: " + err.Error()
	}
	who := "user"
	if initiator == database.PrebuildsSystemUserID {
		who = "prebuilds"
	}
	var in struct {
		Stage int `json:"prebuilt_workspace_stage"`
	}
	_ = json.Unmarshal(input, &in)
	return fmt.Sprintf("#%d %s by %s, %s, stage %d", n, tr, who, status, in.Stage)
}

// awaitImport waits for a template version's import job and requires that it succeeded.
func (d *deployment) awaitImport(ctx context.Context, t *testing.T, id uuid.UUID) codersdk.TemplateVersion {
	var tv codersdk.TemplateVersion
	require.Eventually(t, func() bool {
		var err error
		tv, err = d.admin.TemplateVersion(ctx, id)
		return err == nil && tv.Job.CompletedAt != nil
	}, 2*time.Minute, 100*time.Millisecond)
	require.Equal(t, codersdk.ProvisionerJobSucceeded, tv.Job.Status, tv.Job.Error)
	return tv
}
