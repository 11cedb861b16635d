package fidelity

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lib/pq"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentproto "github.com/coder/coder/v2/agent/proto"
	"github.com/coder/coder/v2/buildinfo"
	"github.com/coder/coder/v2/coderd/coderdtest"
	"github.com/coder/coder/v2/coderd/database"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/enterprise/coderd/coderdenttest"
	"github.com/coder/coder/v2/enterprise/coderd/license"
)

// observation is one thing an agent saw in one scenario, in one column.
type observation struct {
	Scenario string `json:"scenario"`
	Column   string `json:"column"`
	Step     string `json:"step"`
	// Workspace and Owner let the driver write ids as <workspace> and <owner>.
	Workspace uuid.UUID   `json:"workspace"`
	Owner     uuid.UUID   `json:"owner"`
	Latest    string      `json:"latest_build"`
	SDK       *sdkResult  `json:"sdk,omitempty"`
	Raw       *rawResult  `json:"raw,omitempty"`
	Loop      *loopResult `json:"loop,omitempty"`
	// GuardSaw: /reinit requests the guard counted (a guard of the observation's own).
	GuardSaw *float64 `json:"guard_saw,omitempty"`
	// Marks: when things happened, in ms from the start of the observation's requests
	// (claim_build_created_ms, claim_build_completed_ms, ...).
	Marks map[string]int64 `json:"marks,omitempty"`
	// Guard: what a guard of the observation's own said about it (metrics, log lines).
	Guard *guardFacts `json:"guard,omitempty"`
}

// guardFacts: a guard's metrics (by "name{label=value,...}") and log lines, for the rows
// that must show what the guard said (its log and metrics), not only what the agent saw.
type guardFacts struct {
	Metrics map[string]float64 `json:"metrics"`
	Log     []string           `json:"log"`
	// Errors: reads of the admin port that failed.
	Errors []string `json:"errors,omitempty"`
}

// ms is t as milliseconds from start.
func ms(start, t time.Time) int64 { return t.Sub(start).Milliseconds() }

// check is a named fact beyond /reinit (pass-through, retirement, storm).
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type results struct {
	Side         string             `json:"side"`
	CoderVersion string             `json:"coder_version"`
	BuildInfo    string             `json:"buildinfo_version"`
	Observations []observation      `json:"observations"`
	Checks       []check            `json:"checks"`
	Seconds      map[string]float64 `json:"seconds"`

	mu sync.Mutex
}

func (r *results) add(o ...observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Observations = append(r.Observations, o...)
}

func (r *results) check(name string, ok bool, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Checks = append(r.Checks, check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (r *results) time(name string, start time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Seconds[name] = time.Since(start).Seconds()
}

const (
	// waitWindow: how long an agent is watched before "it waits" is written down. A
	// patched coderd decides before it writes anything; nothing arrives later than this
	// but pings (every 15 s) and pubsub events.
	waitWindow = 3 * time.Second
	// eventWindow: how long a claim's pubsub event may take once the claim build ended.
	eventWindow = 20 * time.Second
	// wireWindow: one idle stream is watched past coderd's first ping (15 s).
	wireWindow = 17 * time.Second
)

// scenario is one row group of the table; run gets the agent's base URL (coderd or the
// guard) and returns what the agent saw.
type scenario struct {
	name string
	// preset: the scenario needs a prebuild of its own per column.
	preset bool
	// template: the kind of template its prebuilds come from (templateKinds; "" is
	// "prebuilt"); perColumn: one template of that kind per column (the scenario changes
	// the template itself, e.g. promotes a new version).
	template  string
	perColumn bool
	// behindPatched: the guard column is a guard in front of the PATCHED coderd (it runs on
	// the patched side, beside the oracle); the unpatched side runs the unpatched column.
	behindPatched bool
	run           func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation
}

// columns: the columns a scenario runs in on one side (the patched coderd's binary or the
// unpatched one's).
func (sc scenario) columns(side string) []string {
	switch {
	case side == "patched" && sc.behindPatched:
		return []string{"patched", "guard"}
	case side == "patched":
		return []string{"patched"}
	case sc.behindPatched:
		return []string{"unpatched"}
	}
	return []string{"unpatched", "guard"}
}

// templateKey: the template the scenario's prebuilds come from in one column.
func (sc scenario) templateKey(column string) string {
	k := sc.template
	if k == "" {
		k = "prebuilt"
	}
	if sc.perColumn {
		k += "@" + column
	}
	return k
}

type scenarioCtx struct {
	d      *deployment
	base   string
	column string
	side   string
	tpl    template
	plain  template
	pool   *prebuildPool
	loop   time.Duration
	// loopGuard starts a guard of its own for the loop count (guard column only).
	loopGuard func(t *testing.T) *guardProc
	// roleURL: the guard's least-privilege database role; guardLog names a guard's log.
	roleURL  string
	guardLog func(name string) string
}

// ownGuard starts a guard of the scenario's own, configured by cfg (upstream: this side's
// coderd; database: the least-privilege role; unless cfg says otherwise), in the guard
// column; elsewhere it returns nil (the column talks to coderd straight).
func (s *scenarioCtx) ownGuard(t *testing.T, name string, cfg guardConfig) *guardProc {
	if s.column != "guard" {
		return nil
	}
	if cfg.upstream == "" {
		cfg.upstream = s.d.env.url.String()
	}
	if cfg.pgURL == "" {
		cfg.pgURL = s.roleURL
	}
	cfg.logPath = s.guardLog(strings.NewReplacer(" ", "-", ":", "", "/", "-", ",", "").Replace(name))
	return startGuard(t, cfg)
}

// at: the same context with the agent's requests sent to g (when not nil).
func (s *scenarioCtx) at(g *guardProc) *scenarioCtx {
	if g == nil {
		return s
	}
	c := *s
	c.base = g.url
	return &c
}

func (s *scenarioCtx) obs(scenario, step string, ws uuid.UUID) observation {
	return observation{Scenario: scenario, Column: s.column, Step: step, Workspace: ws, Owner: s.d.memberID}
}

func (s *scenarioCtx) latest(ctx context.Context, ws uuid.UUID) string {
	return latestBuildSummary(ctx, s.d.env.sqlDB, ws)
}

// probe: the agent's own call and the same request on a raw socket, side by side.
func (s *scenarioCtx) probe(ctx context.Context, scenario, step string, ws uuid.UUID, token, query string) observation {
	o := s.obs(scenario, step, ws)
	o.Latest = s.latest(ctx, ws)
	var wg sync.WaitGroup
	if query == "wait=true" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := sdkWait(ctx, s.base, token, waitWindow)
			o.SDK = &r
		}()
	}
	r := rawReinit(ctx, s.base, token, query, waitWindow)
	o.Raw = &r
	wg.Wait()
	return o
}

func presetName(scenario, column string) string { return scenario + "@" + column }

// claimed: a prebuild of the scenario's preset, claimed by the member, claim build done.
func (s *scenarioCtx) claimed(ctx context.Context, t *testing.T, key, name string) (uuid.UUID, string) {
	preset, ws := s.pool.take(ctx, t, presetName(key, s.column))
	b := s.d.claim(ctx, t, s.tpl, preset, ws, name)
	awaitBuild(ctx, t, s.d.member, b.ID)
	return ws, agentToken(ws.String(), agentName(0))
}

func wsName(prefix, column string) string {
	return prefix + strings.NewReplacer(".", "", "@", "-").Replace(column) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 36)
}

var scenarios = []scenario{
	{name: "never a prebuild", run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, err := s.d.member.CreateUserWorkspace(ctx, codersdk.Me, codersdk.CreateWorkspaceRequest{TemplateID: s.plain.id, Name: wsName("plain-", s.column)})
		require.NoError(t, err)
		awaitBuild(ctx, t, s.d.member, ws.LatestBuild.ID)
		return []observation{s.probe(ctx, "never a prebuild", "agent connects", ws.ID, agentToken(ws.ID.String(), agentName(0)), "wait=true")}
	}},
	{name: "claim arrives by pubsub", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "claim arrives by pubsub"
		preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
		token := agentToken(ws.String(), agentName(0))
		// The unclaimed prebuild, asked as the agent asks: its own request, watched.
		before := s.probe(ctx, sc, "unclaimed prebuild: agent waits", ws, token, "wait=true")
		// Then a stream opened before the claim, and the claim while it waits.
		after := s.obs(sc, "claimed meanwhile: the waiting stream", ws)
		var raw rawResult
		var wg sync.WaitGroup
		wg.Add(1)
		start := time.Now()
		go func() {
			defer wg.Done()
			raw = rawReinit(ctx, s.base, token, "wait=true", waitWindow+eventWindow)
		}()
		r := sdkWaitUntil(ctx, s.base, token, eventWindow, func() {
			time.Sleep(waitWindow)
			b := s.d.claim(ctx, t, s.tpl, preset, ws, wsName("claimed-", s.column))
			after.Marks = map[string]int64{"claim_build_created_ms": ms(start, time.Now())}
			done := awaitBuild(ctx, t, s.d.member, b.ID)
			after.Marks["claim_build_completed_ms"] = ms(start, *done.Job.CompletedAt)
		})
		wg.Wait()
		after.Latest = s.latest(ctx, ws)
		after.SDK, after.Raw = &r, &raw
		return []observation{before, after}
	}},
	{name: "claim build is the latest, succeeded", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, token := s.claimed(ctx, t, "claim build is the latest, succeeded", wsName("claimed-", s.column))
		return []observation{s.probe(ctx, "claim build is the latest, succeeded", "agent (re)connects", ws, token, "wait=true")}
	}},
	{name: "claim build in progress, then completing", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "claim build in progress, then completing"
		preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
		token := agentToken(ws.String(), agentName(0))
		name := wsName(slowClaimPrefix, s.column)
		var raw rawResult
		var reconnect observation
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw = rawReinit(ctx, s.base, token, "wait=true", 4*waitWindow+eventWindow)
		}()
		r := sdkWaitUntil(ctx, s.base, token, eventWindow, func() {
			time.Sleep(waitWindow)
			s.d.claim(ctx, t, s.tpl, preset, ws, name)
			select {
			case <-s.d.gates.entered(name):
			case <-time.After(2 * time.Minute):
				t.Error("the slow claim build never started")
			}
			reconnect = s.probe(ctx, sc, "agent reconnects while the claim build runs", ws, token, "wait=true")
			s.d.gates.release(name)
		})
		wg.Wait()
		after := s.obs(sc, "stream opened before the claim, after the build completed", ws)
		after.Latest = s.latest(ctx, ws)
		after.SDK, after.Raw = &r, &raw
		return []observation{reconnect, after}
	}},
	{name: "claim build failed", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, token := s.claimed(ctx, t, "claim build failed", wsName(failClaimPrefix, s.column))
		return []observation{s.probe(ctx, "claim build failed", "agent (re)connects", ws, token, "wait=true")}
	}},
	{name: "claim failed, owner retried with a start", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, token := s.claimed(ctx, t, "claim failed, owner retried with a start", wsName(failClaimPrefix, s.column))
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStart)
		return []observation{s.probe(ctx, "claim failed, owner retried with a start", "agent (re)connects", ws, token, "wait=true")}
	}},
	{name: "long claimed: user start after the claim", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "long claimed: user start after the claim"
		ws, token := s.claimed(ctx, t, sc, wsName("claimed-", s.column))
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStart)
		out := []observation{}
		for _, q := range []struct{ step, query string }{
			{"wait absent", ""}, {"wait=false", "wait=false"}, {"wait=1", "wait=1"}, {"wait=true (the agent)", "wait=true"},
		} {
			out = append(out, s.probe(ctx, sc, q.step, ws, token, q.query))
		}
		return out
	}},
	{name: "long claimed: latest build is a stop", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		ws, token := s.claimed(ctx, t, "long claimed: latest build is a stop", wsName("claimed-", s.column))
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
		return []observation{s.probe(ctx, "long claimed: latest build is a stop", "agent (re)connects", ws, token, "wait=true")}
	}},
	{name: "long claimed: user stop in progress", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		// While a stop build runs, coderd still authenticates the agent of the start build
		// before it (the shutdown case of GetAuthenticatedWorkspaceAgentAndBuildByAuthToken):
		// an agent that reconnects then reaches the handler with an unfinished latest build.
		const sc = "long claimed: user stop in progress"
		name := wsName(slowStopPrefix, s.column)
		ws, token := s.claimed(ctx, t, sc, name)
		b, err := s.d.member.CreateWorkspaceBuild(ctx, ws, codersdk.CreateWorkspaceBuildRequest{Transition: codersdk.WorkspaceTransitionStop})
		require.NoError(t, err)
		select {
		case <-s.d.gates.entered(name):
		case <-time.After(2 * time.Minute):
			t.Fatal("the slow stop build never started")
		}
		o := s.probe(ctx, sc, "agent reconnects while the stop build runs", ws, token, "wait=true")
		s.d.gates.release(name)
		awaitBuild(ctx, t, s.d.member, b.ID)
		return []observation{o}
	}},
	{name: "hold: owner changed, claim build not created yet", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "hold: owner changed, claim build not created yet"
		preset, ws := s.pool.take(ctx, t, presetName(sc, s.column))
		token := agentToken(ws.String(), agentName(0))
		s.d.holdClaim(ctx, t, preset, ws, wsName("held-", s.column))
		first := s.probe(ctx, sc, "agent connects before the claim build exists", ws, token, "wait=true")
		// The agent as it runs: its reinit loop, while the claim build is created and runs.
		var stream sdkResult
		var raw rawResult
		var loop loopResult
		var wg sync.WaitGroup
		wg.Add(2)
		start := time.Now()
		go func() {
			defer wg.Done()
			raw = rawReinit(ctx, s.base, token, "wait=true", waitWindow+eventWindow)
		}()
		go func() {
			defer wg.Done()
			loop = agentLoop(ctx, s.base, token, waitWindow+eventWindow, true, nil)
		}()
		marks := map[string]int64{}
		stream = sdkWaitUntil(ctx, s.base, token, eventWindow, func() {
			time.Sleep(waitWindow)
			id := s.d.finishHoldClaim(ctx, t, s.tpl, preset, ws)
			marks["claim_build_created_ms"] = ms(start, time.Now())
			b := awaitBuild(ctx, t, s.d.member, id)
			marks["claim_build_completed_ms"] = ms(start, *b.Job.CompletedAt)
		})
		wg.Wait()
		after := s.obs(sc, "stream opened before the claim build; claim build created and completed", ws)
		after.Latest = s.latest(ctx, ws)
		after.SDK, after.Raw, after.Marks = &stream, &raw, marks
		loopObs := s.obs(sc, "the agent's reinit loop over the same time", ws)
		loopObs.Latest = after.Latest
		loopObs.Loop, loopObs.Marks = &loop, marks
		return []observation{first, after, loopObs}
	}},
	{name: "agent loop against a long-claimed workspace", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "agent loop against a long-claimed workspace"
		ws, token := s.claimed(ctx, t, sc, wsName("claimed-", s.column))
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStop)
		s.d.build(ctx, t, ws, codersdk.WorkspaceTransitionStart)
		base := s.base
		var g *guardProc
		if s.loopGuard != nil {
			g = s.loopGuard(t)
			base = g.url
		}
		o := s.obs(sc, "the agent loop over the window", ws)
		o.Latest = s.latest(ctx, ws)
		l := agentLoop(ctx, base, token, s.loop, true, nil)
		o.Loop = &l
		if g != nil {
			seen, err := g.metric(ctx, "coder_reinit_guard_reinit_requests_total", nil)
			require.NoError(t, err)
			o.GuardSaw = &seen
		}
		return []observation{o}
	}},
	{name: "idle stream on the wire", preset: true, run: func(ctx context.Context, t *testing.T, s *scenarioCtx) []observation {
		const sc = "idle stream on the wire"
		_, ws := s.pool.take(ctx, t, presetName(sc, s.column))
		o := s.obs(sc, "unclaimed prebuild, watched past the first ping", ws)
		o.Latest = s.latest(ctx, ws)
		r := rawReinit(ctx, s.base, agentToken(ws.String(), agentName(0)), "wait=true", wireWindow)
		o.Raw = &r
		return []observation{o}
	}},
}

func TestFidelity(t *testing.T) {
	pgServer := os.Getenv("FIDELITY_PG_URL")
	out := os.Getenv("FIDELITY_OUT")
	if pgServer == "" || out == "" {
		t.Skip("run through the driver: npm run test:coderd (FIDELITY_PG_URL, FIDELITY_OUT)")
	}
	loopFor := 60 * time.Second
	if v := os.Getenv("FIDELITY_LOOP_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		loopFor = time.Duration(n) * time.Second
	}
	stormWorkspaces := 100
	if v := os.Getenv("FIDELITY_STORM_WORKSPACES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		stormWorkspaces = n
	}
	logDir := filepath.Dir(out)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	total := time.Now()

	res := &results{Seconds: map[string]float64{}}
	start := time.Now()
	env := startCoderd(t, pgServer, logDir)
	res.CoderVersion, res.BuildInfo = env.version, buildinfo.Version()
	res.Side = "unpatched"
	if env.version != "v2.34.3" {
		res.Side = "patched"
	}
	res.time("coderd start (migrations included)", start)

	roleURL := guardRoleURL(t, env)
	guardLog := func(name string) string { return filepath.Join(logDir, "guard-"+env.version+"-"+name+".log") }
	mainGuard := startGuard(t, guardConfig{upstream: env.url.String(), pgURL: roleURL, logPath: guardLog("main")})

	// A user session through the guard: the first user, a login, list calls.
	start = time.Now()
	d := &deployment{env: env, gates: newGates()}
	viaGuard := codersdk.New(mustURL(mainGuard.url))
	first, err := viaGuard.CreateFirstUser(ctx, coderdtest.FirstUserParams)
	res.check("user session through the guard: first user", err == nil, "POST /api/v2/users/first: %v", err)
	require.NoError(t, err)
	login, err := viaGuard.LoginWithPassword(ctx, codersdk.LoginWithPasswordRequest{Email: coderdtest.FirstUserParams.Email, Password: coderdtest.FirstUserParams.Password})
	res.check("user session through the guard: login", err == nil, "POST /api/v2/users/login: %v", err)
	require.NoError(t, err)
	viaGuard.SetSessionToken(login.SessionToken)
	users, err := viaGuard.Users(ctx, codersdk.UsersRequest{})
	res.check("user session through the guard: list users", err == nil && len(users.Users) == 1, "GET /api/v2/users: %d users, %v", len(users.Users), err)
	d.orgID = first.OrganizationID
	d.admin = codersdk.New(env.url)
	d.admin.SetSessionToken(login.SessionToken)
	// Prebuilds are a Premium feature; dormancy (time 'til dormant) needs advanced template
	// scheduling; the claim in a second organization needs organizations and a provisioner
	// daemon of that organization's own.
	coderdenttest.AddLicense(t, d.admin, coderdenttest.LicenseOptions{Features: license.Features{
		codersdk.FeatureWorkspacePrebuilds:         1,
		codersdk.FeatureAdvancedTemplateScheduling: 1,
		codersdk.FeatureMultipleOrganizations:      1,
		codersdk.FeatureExternalProvisionerDaemons: 1,
	}})
	member, memberUser := coderdtest.CreateAnotherUser(t, d.admin, d.orgID)
	d.member, d.memberID = member, memberUser.ID
	compareDirect(ctx, t, res, env, mainGuard, login.SessionToken)
	startProvisionerDaemons(t, env, d.gates, 4)

	// Templates: one without presets, and per template key one with a preset per scenario
	// and column that takes its prebuilds from it.
	all := allScenarios()
	specs := map[string]*templateSpec{}
	var keys []string
	addPreset := func(key, name string) {
		if specs[key] == nil {
			kind := templateKinds[strings.Split(key, "@")[0]]
			specs[key] = &templateSpec{Agents: kind.agents}
			keys = append(keys, key)
		}
		specs[key].Presets = append(specs[key].Presets, presetSpec{Name: name, Instances: 1})
	}
	for _, sc := range all {
		if sc.preset {
			for _, c := range sc.columns(res.Side) {
				addPreset(sc.templateKey(c), presetName(sc.name, c))
			}
		}
	}
	if res.Side == "unpatched" {
		addPreset("prebuilt", presetName("agent RPC", "guard"))
	}
	plain := d.createTemplate(ctx, t, "plain", templateSpec{})
	templates := map[string]template{}
	for _, key := range keys {
		name := strings.NewReplacer("@", "-", ".", "", " ", "-").Replace(key)
		kind := templateKinds[strings.Split(key, "@")[0]]
		var adjust []func(*codersdk.CreateTemplateRequest)
		if kind.request != nil {
			adjust = append(adjust, kind.request)
		}
		org := d.orgID
		if kind.secondOrg {
			if d.org2 == uuid.Nil {
				d.setupSecondOrg(ctx, t)
			}
			org = d.org2
		}
		templates[key] = d.createTemplateIn(ctx, t, org, name, *specs[key], adjust...)
	}
	res.time("setup (users, license, templates)", start)

	pool := &prebuildPool{d: d, templates: templates, seen: map[string]bool{}}
	start = time.Now()
	var fleet restartFleet
	t.Run("scenarios", func(t *testing.T) {
		for _, sc := range all {
			for _, col := range sc.columns(res.Side) {
				base := env.url.String()
				var loopGuard func(t *testing.T) *guardProc
				if col == "guard" {
					base = mainGuard.url
					loopGuard = func(t *testing.T) *guardProc {
						return startGuard(t, guardConfig{upstream: env.url.String(), pgURL: roleURL, logPath: guardLog("loop")})
					}
				}
				sctx := &scenarioCtx{
					d: d, base: base, column: col, side: res.Side, tpl: templates[sc.templateKey(col)], plain: plain, pool: pool,
					loop: loopFor, loopGuard: loopGuard, roleURL: roleURL, guardLog: guardLog,
				}
				t.Run(col+"/"+sc.name, func(t *testing.T) {
					t.Parallel()
					res.add(sc.run(ctx, t, sctx)...)
				})
			}
		}
		if res.Side == "unpatched" {
			t.Run("agent RPC through the guard", func(t *testing.T) {
				t.Parallel()
				agentRPCThroughGuard(ctx, t, res, d, pool, mainGuard)
			})
			t.Run("reconnect storm", func(t *testing.T) {
				t.Parallel()
				fleet = storm(ctx, t, res, d, roleURL, guardLog("storm"), stormWorkspaces)
			})
		}
		t.Run("retirement", func(t *testing.T) {
			t.Parallel()
			retirement(ctx, t, res, env, roleURL, guardLog("retire"))
		})
	})
	res.time("scenarios", start)
	if res.Side == "unpatched" {
		// Last, alone: it restarts the coderd every scenario above talks to.
		start = time.Now()
		if len(fleet.longClaimed) == 0 {
			t.Error("coderd restart: the storm made no workspaces")
		} else {
			coderdRestart(ctx, t, res, d, roleURL, guardLog("coderd-restart"), fleet)
		}
		res.time("coderd restart (both columns)", start)
	}
	res.time("total", total)

	// Observations arrive in completion order; write them in the scenarios' order.
	order := map[string]int{}
	for i, sc := range all {
		order[sc.name] = i
	}
	sort.SliceStable(res.Observations, func(i, j int) bool {
		return order[res.Observations[i].Scenario] < order[res.Observations[j].Scenario]
	})
	b, err := json.MarshalIndent(res, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(out, b, 0o644))
}

// compareDirect: coderd's answers through the guard equal coderd's own, byte for byte:
// status, body and headers, but for the ones that differ on every request (Date, the
// request id, the CSRF cookie's random value) and the connection's own (Connection,
// Keep-Alive: RFC 9110 section 7.6.1).
func compareDirect(ctx context.Context, t *testing.T, res *results, env *coderdEnv, g *guardProc, token string) {
	for _, path := range []string{"/api/v2/buildinfo", "/api/v2/users/me", "/api/v2/workspaces"} {
		ds, dh, db, derr := httpGet(ctx, env.url.String()+path, token)
		gs, gh, gb, gerr := httpGet(ctx, g.url+path, token)
		require.NoError(t, derr)
		require.NoError(t, gerr)
		dk, gk := comparableHeaders(dh), comparableHeaders(gh)
		same := ds == gs && string(db) == string(gb) && dk == gk
		detail := fmt.Sprintf("direct %d, %d bytes; through the guard %d, %d bytes; bodies equal: %v; headers %s", ds, len(db), gs, len(gb), string(db) == string(gb), dk)
		if dk != gk {
			detail += "; through the guard: " + gk
		}
		res.check("pass-through GET "+path, same, "%s", detail)
	}
}

var csrfValue = regexp.MustCompile(`csrf_token=[^;]*`)

func comparableHeaders(h http.Header) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		switch k {
		case "Date", "X-Coder-Request-Id", "Connection", "Keep-Alive":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v := strings.Join(h.Values(k), ", ")
		if k == "Set-Cookie" {
			v = csrfValue.ReplaceAllString(v, "csrf_token=<random>")
		}
		parts = append(parts, k+": "+v)
	}
	return strings.Join(parts, "; ")
}

func short(b []byte) string {
	if len(b) > 160 {
		return string(b[:160]) + "…"
	}
	return string(b)
}

// agentRPCThroughGuard: the agent's RPC connection (WebSocket, dRPC over yamux) as the real
// SDK opens it, through the guard, and calls on it.
func agentRPCThroughGuard(ctx context.Context, t *testing.T, res *results, d *deployment, pool *prebuildPool, g *guardProc) {
	_, ws := pool.take(ctx, t, presetName("agent RPC", "guard"))
	token := agentToken(ws.String(), agentName(0))
	client := agentsdkClient(g.url, token)
	aAPI, _, err := client.ConnectRPC29WithRole(ctx, "agent")
	res.check("agent RPC through the guard: connect", err == nil, "ConnectRPC29WithRole: %v", err)
	require.NoError(t, err)
	defer aAPI.DRPCConn().Close()
	m, err := aAPI.GetManifest(ctx, &agentproto.GetManifestRequest{})
	var got uuid.UUID
	if err == nil {
		got, err = uuid.FromBytes(m.GetWorkspaceId())
	}
	res.check("agent RPC through the guard: GetManifest", err == nil && got == ws, "manifest of workspace %s (want %s), agent %q: %v", got, ws, m.GetAgentName(), err)
	_, err = aAPI.UpdateLifecycle(ctx, &agentproto.UpdateLifecycleRequest{Lifecycle: &agentproto.Lifecycle{State: agentproto.Lifecycle_READY, ChangedAt: timestamppb.Now()}})
	res.check("agent RPC through the guard: UpdateLifecycle", err == nil, "%v", err)
}

// retirement: the guard with the README's REINIT_GUARD_RETIRE_AT in front of this coderd,
// which reports its real version string.
func retirement(ctx context.Context, t *testing.T, res *results, env *coderdEnv, roleURL, logPath string) {
	const retireAt = ">=2.35.1" // the README's advice: the first release proven here to carry the fix
	g := startGuard(t, guardConfig{upstream: env.url.String(), pgURL: roleURL, logPath: logPath, extra: map[string]string{
		"REINIT_GUARD_RETIRE_AT": retireAt, "REINIT_GUARD_RETIRE_POLL": "1s",
	}})
	_, _, body, err := httpGet(ctx, g.url+"/api/v2/buildinfo", "")
	require.NoError(t, err)
	var bi codersdk.BuildInfoResponse
	require.NoError(t, json.Unmarshal(body, &bi))
	want := env.version != "v2.34.3"
	// Watched for 3 s at least (a guard that retires late, or un-retires, is caught), at
	// most 15 s; every read of /metrics and /readyz must succeed: an unreachable admin
	// port proves nothing either way.
	var retired float64
	var metricErr error
	begin := time.Now()
	for time.Since(begin) < 15*time.Second {
		retired, metricErr = g.gauge(ctx, "coder_reinit_guard_retired")
		if metricErr == nil && (retired == 1) == want && time.Since(begin) > 3*time.Second {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	rz, rzErr := g.readyz(ctx)
	rzRetired, rzOK := rz["retired"].(bool)
	res.check("retirement with REINIT_GUARD_RETIRE_AT="+retireAt,
		metricErr == nil && rzErr == nil && rzOK && (retired == 1) == want && rzRetired == want,
		"coderd reports %q; coder_reinit_guard_retired %v (want %v; read error: %v); /readyz retired=%v (read error: %v)",
		bi.Version, retired, want, metricErr, rz["retired"], rzErr)
}

// storm: n long-claimed workspaces (100 by default) with two agents each, 200 real SDK
// agents; the guard restarts while every agent's reinit loop runs; counted: database
// lookups per workspace. It returns those workspaces and restartClaims more of the same
// template whose claim build is the latest, for the coderd restart (see coderdRestart).
func storm(ctx context.Context, t *testing.T, res *results, d *deployment, roleURL, logPath string, n int) restartFleet {
	start := time.Now()
	tpl := d.createTemplate(ctx, t, "storm", templateSpec{Agents: 2, Presets: []presetSpec{
		{Name: "storm", Instances: int32(n)}, {Name: "claim-latest", Instances: restartClaims},
	}})
	preset := tpl.presets["storm"]
	d.awaitPrebuilds(ctx, t, preset, n, 2)
	// Claim them all, one at a time (each claim takes one ready prebuild of the preset;
	// eight concurrent claims of one preset once got 409 "A workspace build is already
	// active." from coderd 2.34.3, a claim race outside the reinit path, not pursued), then
	// a user start on each, eight at a time: long-claimed workspaces.
	claimed := make([]uuid.UUID, n)
	claims := make([]uuid.UUID, n)
	for i := 0; i < n; i++ {
		ws, err := d.member.CreateUserWorkspace(ctx, codersdk.Me, codersdk.CreateWorkspaceRequest{
			TemplateVersionID: tpl.version, TemplateVersionPresetID: preset, Name: fmt.Sprintf("storm-%03d", i),
		})
		require.NoError(t, err)
		claimed[i], claims[i] = ws.ID, ws.LatestBuild.ID
	}
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(8)
	for i := 0; i < n; i++ {
		eg.Go(func() error {
			if err := awaitBuildErr(gctx, d.member, claims[i]); err != nil {
				return err
			}
			b, err := d.member.CreateWorkspaceBuild(gctx, claimed[i], codersdk.CreateWorkspaceBuildRequest{Transition: codersdk.WorkspaceTransitionStart})
			if err != nil {
				return err
			}
			return awaitBuildErr(gctx, d.member, b.ID)
		})
	}
	require.NoError(t, eg.Wait())
	var fromPrebuilds int
	require.NoError(t, d.env.sqlDB.QueryRowContext(ctx, `SELECT count(*) FROM workspace_builds WHERE workspace_id = ANY($1) AND build_number = 1 AND initiator_id = $2`,
		pq.Array(claimed), database.PrebuildsSystemUserID).Scan(&fromPrebuilds))
	require.Equal(t, n, fromPrebuilds, "every storm workspace is a claimed prebuild")
	res.time("storm setup", start)

	g := startGuard(t, guardConfig{upstream: d.env.url.String(), pgURL: roleURL, logPath: logPath})
	listen := fmt.Sprintf("127.0.0.1:%d", g.proxyPort)
	admin := fmt.Sprintf("127.0.0.1:%d", g.adminPort)
	g.stop() // The restart: agents find the guard gone and retry with backoff.
	agents := make([]string, 0, 2*n)
	for _, ws := range claimed {
		for i := 0; i < 2; i++ {
			agents = append(agents, agentToken(ws.String(), agentName(i)))
		}
	}
	stormStart := time.Now()
	loops := make([]loopResult, len(agents))
	var wg sync.WaitGroup
	for i, token := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loops[i] = agentLoop(ctx, g.url, token, 90*time.Second, false, nil)
		}()
	}
	time.Sleep(2 * time.Second)
	g = startGuard(t, guardConfig{upstream: d.env.url.String(), pgURL: roleURL, logPath: logPath, listen: listen, admin: admin})
	wg.Wait()
	res.time("storm: every agent answered after the restart", stormStart)
	closed, reinits := 0, 0
	for _, l := range loops {
		if strings.HasPrefix(l.Closed, "channel closed") {
			closed++
		}
		reinits += l.Reinits
	}
	miss, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "miss"})
	shared, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "shared"})
	hit, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "hit"})
	suppressed, _ := g.metric(ctx, "coder_reinit_guard_reinit_requests_total", map[string]string{"outcome": "suppressed"})
	warmed, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_warmed_workspaces", nil)
	warmUps, _ := g.metric(ctx, "coder_reinit_guard_db_statements_total", map[string]string{"statement": "warm_up"})
	batches, _ := g.metric(ctx, "coder_reinit_guard_db_statements_total", map[string]string{"statement": "latest_builds"})
	// At most one lookup per workspace: the guard warms its cache at start with every
	// workspace whose claim was already handled (in the background), so a storm that
	// comes after the warm-up looks nothing up, one that races it at most once per workspace.
	res.check(fmt.Sprintf("reconnect storm: %d agents on %d workspaces after a guard restart", len(agents), n),
		int(miss) <= n && int(suppressed) == len(agents) && closed == len(agents) && reinits == 0,
		"database lookups (cache misses) %v, shared %v, hits %v; cache warm-up: %v workspaces in %v statement(s); decision statements %v; suppressed %v; loops ended by a 409: %d of %d; reinits: %d",
		miss, shared, hit, warmed, warmUps, batches, suppressed, closed, len(agents), reinits)

	// Genuine claims for the coderd restart: claimed prebuilds with no build after the claim.
	start = time.Now()
	latest := tpl.presets["claim-latest"]
	d.awaitPrebuilds(ctx, t, latest, restartClaims, 2)
	fleet := restartFleet{longClaimed: claimed}
	for i := 0; i < restartClaims; i++ {
		ws, err := d.member.CreateUserWorkspace(ctx, codersdk.Me, codersdk.CreateWorkspaceRequest{
			TemplateVersionID: tpl.version, TemplateVersionPresetID: latest, Name: fmt.Sprintf("claim-latest-%d", i),
		})
		require.NoError(t, err)
		b := awaitBuild(ctx, t, d.member, ws.LatestBuild.ID)
		require.Equal(t, codersdk.ProvisionerJobSucceeded, b.Job.Status, b.Job.Error)
		fleet.claimLatest = append(fleet.claimLatest, ws.ID)
	}
	require.NoError(t, d.env.sqlDB.QueryRowContext(ctx, `SELECT count(*) FROM workspace_builds WHERE workspace_id = ANY($1) AND build_number = 1 AND initiator_id = $2`,
		pq.Array(fleet.claimLatest), database.PrebuildsSystemUserID).Scan(&fromPrebuilds))
	require.Equal(t, restartClaims, fromPrebuilds, "every claim-latest workspace is a claimed prebuild")
	res.time("coderd restart: setup of the claims", start)
	return fleet
}
