package fidelity

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/coder/coder/v2/coderd/database"
	"github.com/coder/coder/v2/codersdk"
	provisionerdproto "github.com/coder/coder/v2/provisionerd/proto"
	sdkproto "github.com/coder/coder/v2/provisionersdk/proto"
)

// The scenarios production meets (issue 19, section 3), beside the /reinit states of
// fidelity_test.go: the guard's database failing and coming back, claims that fail or are
// cancelled, two agents in a workspace, deletion, template updates, coder's own autobuilds,
// job input written by older releases, the guard in front of a fixed coderd, its modes and
// topologies. Each row has the three columns; compare.ts says what the guard must do in it.

// templateKind: a kind of template the scenarios take prebuilds from.
type templateKind struct {
	agents int
	// secondOrg: the template lives in the second organization (deployment.org2).
	secondOrg bool
	// request adjusts the template's creation request (schedule settings).
	request func(*codersdk.CreateTemplateRequest)
}

var templateKinds = map[string]templateKind{
	"prebuilt":   {agents: 1},
	"two agents": {agents: 2},
	// The template update scenario promotes a new version of its own template.
	"updatable": {agents: 1},
	"autostop":  {agents: 1},
	"autostart": {agents: 1},
	// Workspaces unused for an hour go dormant (the enterprise template schedule).
	"dormancy": {agents: 1, request: func(r *codersdk.CreateTemplateRequest) {
		ttd := time.Hour.Milliseconds()
		r.TimeTilDormantMillis = &ttd
	}},
	"second org": {agents: 1, secondOrg: true},
}

// setupSecondOrg creates a second organization with the member in it, and two
// provisioner daemons of that organization's own: external daemons, authenticated by an
// organization provisioner key, dialing coderd's provisioner daemon endpoint (the default
// organization's in-memory daemons never take its jobs).
func (d *deployment) setupSecondOrg(ctx context.Context, t *testing.T) {
	org, err := d.admin.CreateOrganization(ctx, codersdk.CreateOrganizationRequest{Name: "second-org"})
	require.NoError(t, err)
	_, err = d.admin.PostOrganizationMember(ctx, org.ID, d.memberID.String())
	require.NoError(t, err)
	key, err := d.admin.CreateProvisionerKey(ctx, org.ID, codersdk.CreateProvisionerKeyRequest{Name: "fidelity"})
	require.NoError(t, err)
	startProvisionerDaemonsWith(t, d.env, d.gates, 2, "second-org-", func(ctx context.Context, name string) (provisionerdproto.DRPCProvisionerDaemonClient, error) {
		return codersdk.New(d.env.url).ServeProvisionerDaemon(ctx, codersdk.ServeProvisionerDaemonRequest{
			Name: name, Organization: org.ID, Provisioners: []codersdk.ProvisionerType{codersdk.ProvisionerTypeEcho}, ProvisionerKey: key.Key,
		})
	})
	d.org2 = org.ID
}

func allScenarios() []scenario {
	out := append([]scenario{}, scenarios...)
	for _, kind := range []string{"down", "slow", "revoked"} {
		out = append(out, dbFaultScenario(kind))
	}
	return append(out, productionScenarios...)
}

// longClaimed: a prebuild of the scenario's preset claimed by the member, then a user stop
// (the latest build is not the claim build: the claim was handled).
func (s *scenarioCtx) longClaimed(ctx context.Context, t *testing.T, key, name string) (uuid.UUID, string) {
	ws, token := s.claimed(ctx, t, key, name)
	s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
	return ws, token
}

// claimLatest: a claimed prebuild whose claim build is the latest build.
func (s *scenarioCtx) claimLatest(ctx context.Context, t *testing.T, key string) (uuid.UUID, string) {
	return s.claimed(ctx, t, key, wsName("claimed-", s.column))
}

// execSQL runs a statement on coderd's database as its owner (fixtures only).
func (s *scenarioCtx) execSQL(ctx context.Context, t *testing.T, query string, args ...any) {
	_, err := s.d.env.sqlDB.ExecContext(ctx, query, args...)
	require.NoError(t, err, query)
}

// dbFault: how the guard's database fails in one scenario.
var dbFault = map[string]struct{ scenario, during, after string }{
	"down":    {"database down", "agent reconnects while the guard's database is down", "agent reconnects after the database is back"},
	"slow":    {"database slow past the deadline", "agent reconnects while the guard's database answers after its deadline", "agent reconnects after the database is fast again"},
	"revoked": {"the guard's grant revoked", "agent reconnects while the guard's SELECT on provisioner_jobs is revoked", "agent reconnects after the grant is restored"},
}

// dbFaultScenario: a long-claimed workspace; in the guard column a guard of its own reaches
// PostgreSQL through a fault proxy (its own role for the revoked grant), with no cache
// warm-up (so nothing is decided before the fault), a 1 s decision deadline and probes
// every 500 ms. The fault is made, the agent reconnects, the fault is undone, the agent
// reconnects again. The other columns ask coderd straight both times (their database is
// coderd's, never faulted).
func dbFaultScenario(kind string) scenario {
	f := dbFault[kind]
	return scenario{name: f.scenario, preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, token := s.longClaimed(ctx, t, f.scenario, wsName("claimed-", s.column))
		var g *guardProc
		var fp *faultProxy
		role := "coder_reinit_guard"
		if s.column == "guard" {
			pgURL := s.roleURL
			if kind == "revoked" {
				role = "coder_reinit_guard_revoked"
				pgURL = roleURLFor(t, s.d.env, role)
			}
			u := mustURL(pgURL)
			fp = startFaultProxy(t, u.Host)
			u.Host = fp.addr
			g = s.ownGuard(t, f.scenario, guardConfig{pgURL: u.String(), extra: map[string]string{
				"REINIT_GUARD_CACHE_WARM_INTERVAL": "0",
				"REINIT_GUARD_DB_TIMEOUT":          "1s",
				"REINIT_GUARD_DB_CONNECT_TIMEOUT":  "1s",
				"REINIT_GUARD_PROBE_INTERVAL":      "500ms",
			}})
			require.NoError(t, g.awaitMetric(ctx, "coder_reinit_guard_dependency_up", map[string]string{"dependency": "database"}, 1, 15*time.Second))
			switch kind {
			case "down":
				fp.down()
			case "slow":
				fp.slow(3 * time.Second)
			case "revoked":
				s.execSQL(ctx, t, "REVOKE SELECT (id, input) ON provisioner_jobs FROM "+role)
			}
			if kind != "revoked" {
				// The guard noticed (its probe; a revoked grant leaves SELECT 1 working).
				require.NoError(t, g.awaitMetric(ctx, "coder_reinit_guard_dependency_up", map[string]string{"dependency": "database"}, 0, 15*time.Second))
			}
		}
		at := s.at(g)
		during := at.probe(ctx, f.scenario, f.during, ws, token, "wait=true")
		if g != nil {
			during.Guard = g.facts(ctx)
			switch kind {
			case "down":
				fp.up(t)
			case "slow":
				fp.slow(0)
			case "revoked":
				s.execSQL(ctx, t, "GRANT SELECT (id, input) ON provisioner_jobs TO "+role)
			}
			require.NoError(t, g.awaitMetric(ctx, "coder_reinit_guard_dependency_up", map[string]string{"dependency": "database"}, 1, 20*time.Second))
		}
		after := at.probe(ctx, f.scenario, f.after, ws, token, "wait=true")
		if g != nil {
			after.Guard = g.facts(ctx)
		}
		return []observation{during, after}
	}}
}

// rewriteInputs rewrites the job input of every build of a workspace as older coderd
// releases wrote it, before the prebuilt_workspace_stage enum: prebuild creation builds
// with "is_prebuild": true, claim builds with "prebuild_claimed_by": <claimer>, every other
// build with the zero uuid there (Go's omitempty never omits a uuid.UUID, a [16]byte).
func (s *scenarioCtx) rewriteInputs(ctx context.Context, t *testing.T, ws uuid.UUID) {
	rows, err := s.d.env.sqlDB.QueryContext(ctx, `
		SELECT j.id, j.input, b.build_number FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
		WHERE b.workspace_id = $1`, ws)
	require.NoError(t, err)
	type job struct {
		id    uuid.UUID
		input []byte
	}
	var jobs []job
	for rows.Next() {
		var j job
		var n int
		require.NoError(t, rows.Scan(&j.id, &j.input, &n))
		jobs = append(jobs, j)
	}
	require.NoError(t, rows.Err())
	_ = rows.Close()
	for _, j := range jobs {
		var in map[string]any
		require.NoError(t, json.Unmarshal(j.input, &in))
		stage, _ := in["prebuilt_workspace_stage"].(float64)
		delete(in, "prebuilt_workspace_stage")
		switch stage {
		case 1:
			in["is_prebuild"] = true
		case 2:
			in["prebuild_claimed_by"] = s.d.memberID.String()
		default:
			in["prebuild_claimed_by"] = uuid.Nil.String()
		}
		b, err := json.Marshal(in)
		require.NoError(t, err)
		s.execSQL(ctx, t, `UPDATE provisioner_jobs SET input = $1 WHERE id = $2`, b, j.id)
	}
}

// awaitAutobuild ticks coderd's autobuild executor (now: its provisioner check wants a
// daemon seen within 90 s of the tick) until the workspace's latest build has the reason
// and its job completed (another scenario's tick may do it first).
func (s *scenarioCtx) awaitAutobuild(ctx context.Context, t *testing.T, ws uuid.UUID, reason database.BuildReason) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		require.NoError(t, s.d.env.tick(ctx, time.Now()))
		for i := 0; i < 25; i++ {
			var got string
			var done bool
			err := s.d.env.sqlDB.QueryRowContext(ctx, `
				SELECT b.reason::text, j.completed_at IS NOT NULL FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
				WHERE b.workspace_id = $1 ORDER BY b.build_number DESC LIMIT 1`, ws).Scan(&got, &done)
			if err == nil && got == string(reason) && done {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Fatalf("no completed %s build of %s", reason, ws)
}

// probeAgents probes each agent of a workspace (rows named by the agent).
func (s *scenarioCtx) probeAgents(ctx context.Context, sc, step string, ws uuid.UUID, agents int) []observation {
	out := make([]observation, agents)
	var wg sync.WaitGroup
	for i := 0; i < agents; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.probe(ctx, sc, fmt.Sprintf("agent %s %s", agentName(i), step), ws, agentToken(ws.String(), agentName(i)), "wait=true")
		}()
	}
	wg.Wait()
	return out
}

// guardProbe: a probe through a guard of the scenario's own (guard column), with what
// that guard said.
func (s *scenarioCtx) guardProbe(ctx context.Context, t *testing.T, sc, step string, ws uuid.UUID, token string, cfg guardConfig, ready func(*guardProc)) observation {
	g := s.ownGuard(t, sc, cfg)
	if g != nil && ready != nil {
		ready(g)
	}
	o := s.at(g).probe(ctx, sc, step, ws, token, "wait=true")
	if g != nil {
		o.Guard = g.facts(ctx)
	}
	return o
}

var (
	retireAtFixed = map[string]string{"REINIT_GUARD_RETIRE_AT": ">=2.35.1", "REINIT_GUARD_RETIRE_POLL": "500ms"}
	awaitRetired  = func(ctx context.Context, t *testing.T) func(*guardProc) {
		return func(g *guardProc) {
			require.NoError(t, g.awaitMetric(ctx, "coder_reinit_guard_retired", nil, 1, 15*time.Second), "the guard did not retire")
		}
	}
)

// frontOfPatched: the guard in front of the patched coderd, retired or not; the three
// /reinit states that matter (a long-claimed workspace, a claim build that is the latest, a
// held claim).
func frontOfPatched(retired bool) []scenario {
	prefix := "in front of the patched coderd, not retired: "
	// Retirement is on by default (>=2.35.1): the operator's explicit empty value switches it
	// off, and the guard then judges /reinit in front of the patched coderd too.
	extra := map[string]string{"REINIT_GUARD_RETIRE_AT": ""}
	if retired {
		prefix = "in front of the patched coderd, retired: "
		extra = retireAtFixed
	}
	ready := func(ctx context.Context, t *testing.T) func(*guardProc) {
		if retired {
			return awaitRetired(ctx, t)
		}
		return nil
	}
	return []scenario{
		{name: prefix + "long claimed", preset: true, behindPatched: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			sc := prefix + "long claimed"
			ws, token := s.longClaimed(ctx, t, sc, wsName("claimed-", s.column))
			return []observation{s.guardProbe(ctx, t, sc, "agent (re)connects", ws, token, guardConfig{extra: extra}, ready(ctx, t))}
		}},
		{name: prefix + "claim build is the latest", preset: true, behindPatched: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			sc := prefix + "claim build is the latest"
			ws, token := s.claimLatest(ctx, t, sc)
			return []observation{s.guardProbe(ctx, t, sc, "agent (re)connects", ws, token, guardConfig{extra: extra}, ready(ctx, t))}
		}},
		{name: prefix + "hold", preset: true, behindPatched: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			sc := prefix + "hold"
			preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
			s.d.holdClaim(ctx, t, preset, ws, wsName("held-", s.column))
			return []observation{s.guardProbe(ctx, t, sc, "agent connects before the claim build exists", ws, agentToken(ws.String(), agentName(0)), guardConfig{extra: extra}, ready(ctx, t))}
		}},
	}
}

// modeScenario: a guard of its own with extra configuration, on a long-claimed workspace
// and on one whose claim build is the latest.
func modeScenarios(title string, cfg func(s *scenarioCtx) guardConfig) []scenario {
	return []scenario{
		{name: title + ": long claimed", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			sc := title + ": long claimed"
			ws, token := s.longClaimed(ctx, t, sc, wsName("claimed-", s.column))
			return []observation{s.guardProbe(ctx, t, sc, "agent (re)connects", ws, token, cfg(s), nil)}
		}},
		{name: title + ": claim build is the latest", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			sc := title + ": claim build is the latest"
			ws, token := s.claimLatest(ctx, t, sc)
			return []observation{s.guardProbe(ctx, t, sc, "agent (re)connects", ws, token, cfg(s), nil)}
		}},
	}
}

var productionScenarios = func() []scenario {
	out := []scenario{
		{name: "claim build failed permanently (error set on the completed claim job)", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// As coder's own test of the fix does (TestReinit, "failed claim build returns
			// terminal 409"): the claim build completed with its agents, then its job gets
			// an error (terraform apply partly succeeded, then failed).
			const sc = "claim build failed permanently (error set on the completed claim job)"
			ws, token := s.claimLatest(ctx, t, sc)
			s.execSQL(ctx, t, `UPDATE provisioner_jobs SET error = 'simulated claim failure (fidelity harness)'
				WHERE id = (SELECT job_id FROM workspace_builds WHERE workspace_id = $1 ORDER BY build_number DESC LIMIT 1)`, ws)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
		{name: "two agents: claim build is the latest", preset: true, template: "two agents", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "two agents: claim build is the latest"
			ws, _ := s.claimLatest(ctx, t, sc)
			return s.probeAgents(ctx, sc, "(re)connects", ws, 2)
		}},
		{name: "two agents: long claimed", preset: true, template: "two agents", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "two agents: long claimed"
			ws, _ := s.longClaimed(ctx, t, sc, wsName("claimed-", s.column))
			return s.probeAgents(ctx, sc, "(re)connects", ws, 2)
		}},
		{name: "two agents: hold", preset: true, template: "two agents", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "two agents: hold"
			preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
			s.d.holdClaim(ctx, t, preset, ws, wsName("held-", s.column))
			out := s.probeAgents(ctx, sc, "connects before the claim build exists", ws, 2)
			// Both agents' reinit loops while the claim build is created and runs.
			loops := make([]loopResult, 2)
			var wg sync.WaitGroup
			start := time.Now()
			for i := range loops {
				wg.Add(1)
				go func() {
					defer wg.Done()
					loops[i] = agentLoop(ctx, s.base, agentToken(ws.String(), agentName(i)), waitWindow+eventWindow, true, nil)
				}()
			}
			time.Sleep(waitWindow)
			id := s.d.finishHoldClaim(ctx, t, s.tpl, preset, ws)
			marks := map[string]int64{"claim_build_created_ms": ms(start, time.Now())}
			b := awaitBuild(ctx, t, s.d.member, id)
			marks["claim_build_completed_ms"] = ms(start, *b.Job.CompletedAt)
			wg.Wait()
			latest := s.latest(ctx, ws)
			for i := range loops {
				o := s.obs(sc, fmt.Sprintf("agent %s's reinit loop while the claim build is created and runs", agentName(i)), ws)
				o.Latest, o.Loop, o.Marks = latest, &loops[i], marks
				out = append(out, o)
			}
			return out
		}},
		{name: "workspace deleted", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "workspace deleted"
			ws, token := s.claimLatest(ctx, t, sc)
			s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionDelete)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
		{name: "delete build running", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "delete build running"
			name := wsName(slowDelPrefix, s.column)
			ws, token := s.claimed(ctx, t, sc, name)
			b, err := s.d.member.CreateWorkspaceBuild(ctx, ws, codersdk.CreateWorkspaceBuildRequest{Transition: codersdk.WorkspaceTransitionDelete})
			require.NoError(t, err)
			select {
			case <-s.d.gates.entered(name):
			case <-time.After(2 * time.Minute):
				t.Fatal("the slow delete build never started")
			}
			o := s.probe(ctx, sc, "agent reconnects while the delete build runs", ws, token, "wait=true")
			s.d.gates.release(name)
			awaitBuild(ctx, t, s.d.member, b.ID)
			return []observation{o}
		}},
		{name: "template version update after a claim", preset: true, template: "updatable", perColumn: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// The template admin pushes a new version and promotes it; the owner updates
			// the workspace (a start build on the new version, as `coder update` does).
			const sc = "template version update after a claim"
			ws, token := s.claimLatest(ctx, t, sc)
			v2 := s.d.newVersion(ctx, t, s.tpl, "v2")
			require.NoError(t, s.d.admin.UpdateActiveTemplateVersion(ctx, s.tpl.id, codersdk.UpdateActiveTemplateVersion{ID: v2}))
			b, err := s.d.member.CreateWorkspaceBuild(ctx, ws, codersdk.CreateWorkspaceBuildRequest{Transition: codersdk.WorkspaceTransitionStart, TemplateVersionID: v2})
			require.NoError(t, err)
			done := awaitBuild(ctx, t, s.d.member, b.ID)
			require.Equal(t, codersdk.ProvisionerJobSucceeded, done.Job.Status, done.Job.Error)
			return []observation{s.probe(ctx, sc, "agent (re)connects after the update", ws, token, "wait=true")}
		}},
		{name: "autostop after a claim", preset: true, template: "autostop", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// The owner gives the workspace a TTL, so its next start build gets a deadline;
			// time passes (the deadline is moved an hour back: the harness cannot wait); coderd's
			// autobuild executor, ticked, stops it.
			const sc = "autostop after a claim"
			ws, token := s.claimLatest(ctx, t, sc)
			ttl := time.Hour.Milliseconds()
			require.NoError(t, s.d.member.UpdateWorkspaceTTL(ctx, ws, codersdk.UpdateWorkspaceTTLRequest{TTLMillis: &ttl}))
			s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
			s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStart)
			s.execSQL(ctx, t, `UPDATE workspace_builds SET deadline = now() - interval '1 minute'
				WHERE workspace_id = $1 AND build_number = (SELECT max(build_number) FROM workspace_builds WHERE workspace_id = $1) AND deadline > now()`, ws)
			s.awaitAutobuild(ctx, t, ws, database.BuildReasonAutostop)
			return []observation{s.probe(ctx, sc, "agent (re)connects after the autostop build", ws, token, "wait=true")}
		}},
		{name: "autostart after a claim", preset: true, template: "autostart", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// The owner sets a daily autostart a few minutes ago and stops the workspace; time
			// passes (the stop build is moved a day back, and with it the next start); coderd's
			// autobuild executor, ticked, starts it.
			const sc = "autostart after a claim"
			ws, token := s.claimLatest(ctx, t, sc)
			at := time.Now().UTC().Add(-3 * time.Minute)
			schedule := fmt.Sprintf("CRON_TZ=UTC %d %d * * *", at.Minute(), at.Hour())
			require.NoError(t, s.d.member.UpdateWorkspaceAutostart(ctx, ws, codersdk.UpdateWorkspaceAutostartRequest{Schedule: &schedule}))
			s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
			s.execSQL(ctx, t, `UPDATE workspace_builds SET created_at = created_at - interval '1 day'
				WHERE workspace_id = $1 AND build_number = (SELECT max(build_number) FROM workspace_builds WHERE workspace_id = $1)`, ws)
			s.execSQL(ctx, t, `UPDATE workspaces SET next_start_at = now() - interval '1 minute' WHERE id = $1`, ws)
			s.awaitAutobuild(ctx, t, ws, database.BuildReasonAutostart)
			return []observation{s.probe(ctx, sc, "agent (re)connects after the autostart build", ws, token, "wait=true")}
		}},
		{name: "dormancy after a claim", preset: true, template: "dormancy", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// The template's time 'til dormant is an hour; the workspace was last used two
			// hours ago (moved back); coderd's autobuild executor, ticked, marks it dormant
			// and stops it.
			const sc = "dormancy after a claim"
			ws, token := s.claimLatest(ctx, t, sc)
			s.execSQL(ctx, t, `UPDATE workspaces SET last_used_at = now() - interval '2 hours' WHERE id = $1`, ws)
			s.awaitAutobuild(ctx, t, ws, database.BuildReasonDormancy)
			return []observation{s.probe(ctx, sc, "agent (re)connects after the dormancy build", ws, token, "wait=true")}
		}},
		{name: "claim build cancelled", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "claim build cancelled"
			preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
			name := wsName(slowClaimPrefix, s.column)
			b := s.d.claim(ctx, t, s.tpl, preset, ws, name)
			select {
			case <-s.d.gates.entered(name):
			case <-time.After(2 * time.Minute):
				t.Fatal("the slow claim build never started")
			}
			// The template admin cancels it (members may not, by default).
			require.NoError(t, s.d.admin.CancelWorkspaceBuild(ctx, b.ID, codersdk.CancelWorkspaceBuildParams{}))
			done := awaitBuild(ctx, t, s.d.member, b.ID)
			// A running apply that is cancelled ends with canceled_at set; the provisioner's
			// error makes its status "failed" (coderd's job_status puts an error first).
			require.NotNil(t, done.Job.CanceledAt, "the claim build was not cancelled: %s %s", done.Job.Status, done.Job.Error)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, agentToken(ws.String(), agentName(0)), "wait=true")}
		}},
		{name: "start failed after a claim", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "start failed after a claim"
			name := wsName("claimed-", s.column)
			ws, token := s.longClaimed(ctx, t, sc, name)
			s.d.gates.failNext(name, sdkproto.WorkspaceTransition_START)
			b := s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStart)
			require.Equal(t, codersdk.ProvisionerJobFailed, b.Job.Status)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
		{name: "stop failed after a claim", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "stop failed after a claim"
			name := wsName("claimed-", s.column)
			ws, token := s.claimed(ctx, t, sc, name)
			s.d.gates.failNext(name, sdkproto.WorkspaceTransition_STOP)
			b := s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
			require.Equal(t, codersdk.ProvisionerJobFailed, b.Job.Status)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
		{name: "legacy job input: long claimed", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			const sc = "legacy job input: long claimed"
			ws, token := s.longClaimed(ctx, t, sc, wsName("claimed-", s.column))
			s.rewriteInputs(ctx, t, ws)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
		{name: "legacy job input: claim build by the prebuilds user", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			// 2025 releases initiated the claim build as the prebuilds user, and wrote no stage.
			const sc = "legacy job input: claim build by the prebuilds user"
			ws, token := s.claimLatest(ctx, t, sc)
			s.rewriteInputs(ctx, t, ws)
			s.execSQL(ctx, t, `UPDATE workspace_builds SET initiator_id = $1 WHERE workspace_id = $2 AND build_number = 2`, database.PrebuildsSystemUserID, ws)
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}},
	}
	for _, variant := range []string{"claim build is the latest", "long claimed"} {
		sc := "a claim in a non-default organization: " + variant
		out = append(out, scenario{name: sc, preset: true, template: "second org", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
			var ws uuid.UUID
			var token string
			if variant == "long claimed" {
				ws, token = s.longClaimed(ctx, t, sc, wsName("claimed-", s.column))
			} else {
				ws, token = s.claimLatest(ctx, t, sc)
			}
			var org uuid.UUID
			require.NoError(t, s.d.env.sqlDB.QueryRowContext(ctx, `SELECT organization_id FROM workspaces WHERE id = $1`, ws).Scan(&org))
			require.Equal(t, s.d.org2, org, "the workspace is in the second organization")
			return []observation{s.probe(ctx, sc, "agent (re)connects", ws, token, "wait=true")}
		}})
	}
	out = append(out, frontOfPatched(true)...)
	out = append(out, frontOfPatched(false)...)
	out = append(out, modeScenarios("mode observe", func(*scenarioCtx) guardConfig {
		return guardConfig{extra: map[string]string{"REINIT_GUARD_MODE": "observe"}}
	})...)
	out = append(out, modeScenarios("mode off", func(*scenarioCtx) guardConfig {
		return guardConfig{extra: map[string]string{"REINIT_GUARD_MODE": "off"}}
	})...)
	out = append(out, modeScenarios("REINIT_GUARD_WORKERS=2", func(*scenarioCtx) guardConfig {
		return guardConfig{extra: map[string]string{"REINIT_GUARD_WORKERS": "2"}}
	})...)
	out = append(out, modeScenarios("TLS upstream", func(s *scenarioCtx) guardConfig {
		return guardConfig{upstream: s.d.env.tlsURL.String(), extra: map[string]string{"REINIT_GUARD_UPSTREAM_CA_FILE": s.d.env.caFile}}
	})...)
	return out
}()

// newVersion uploads the template's files again as a new version (no presets: the claimed
// workspace is all that is left of the first version) and waits for its import.
func (d *deployment) newVersion(ctx context.Context, t *testing.T, tpl template, name string) uuid.UUID {
	file, err := d.admin.Upload(ctx, codersdk.ContentTypeTar, strings.NewReader(string(templateArchive(templateSpec{Agents: tpl.agents}))))
	require.NoError(t, err)
	tv, err := d.admin.CreateTemplateVersion(ctx, d.orgID, codersdk.CreateTemplateVersionRequest{
		Name: name + "-" + uuid.NewString()[:8], TemplateID: tpl.id, FileID: file.ID,
		StorageMethod: codersdk.ProvisionerStorageMethodFile, Provisioner: codersdk.ProvisionerTypeEcho,
	})
	require.NoError(t, err)
	return d.awaitImport(ctx, t, tv.ID).ID
}
