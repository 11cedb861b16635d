package fidelity

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/coder/coder/v2/codersdk/agentsdk"
)

// restartClaims: workspaces whose claim build is the latest build (claimed prebuilds with
// no build after the claim), two agents each, beside the storm's long-claimed ones.
const restartClaims = 4

// restartDown: how long coderd's port refuses connections at least, from the kill.
const restartDown = 2 * time.Second

// restartFleet: the workspaces the coderd restart runs its agents on.
type restartFleet struct {
	// longClaimed: claimed from a prebuild, then a user start: the claim was handled long ago.
	longClaimed []uuid.UUID
	// claimLatest: claimed from a prebuild, the claim build is the latest build.
	claimLatest []uuid.UUID
}

type restartAgent struct {
	ws    uuid.UUID
	token string
	long  bool
}

// coderdRestart is the bug's own trigger: coderd restarts (a deploy, a replica restart)
// while every agent runs its real reinit loop (agentsdk.WaitForReinitLoop, consumed as
// the agent does: agentLoop). Two columns, each with a restart of its own: "guard", the
// agents through a fresh guard in front of coderd, and "unpatched", the agents straight
// to coderd. In each, coderd is killed (its port refuses, every connection drops), the
// agents' loops start while it is down, and a new coderd comes back on the same
// database and address; the loops reconnect in one burst (they retry with the SDK's
// backoff, started together).
//
// Through the guard every long-claimed loop must end on the guard's 409 with no reinit,
// and every genuine claim must be delivered exactly once: the agent reinitializes once;
// its next request gets the same seeded event again (the claim build is still the latest
// build, so a patched coderd seeds it again too) and the agent drops it as a duplicate of
// the last owner's (cli/agent.go's lastOwnerID), ending its loop. Straight to the
// unpatched coderd every long-claimed agent reinitializes on a seeded prebuild_claimed:
// the bug.
func coderdRestart(ctx context.Context, t *testing.T, res *results, d *deployment, roleURL, logPath string, fleet restartFleet) {
	var agents []restartAgent
	for _, ws := range fleet.longClaimed {
		for i := 0; i < 2; i++ {
			agents = append(agents, restartAgent{ws: ws, token: agentToken(ws.String(), agentName(i)), long: true})
		}
	}
	for _, ws := range fleet.claimLatest {
		for i := 0; i < 2; i++ {
			agents = append(agents, restartAgent{ws: ws, token: agentToken(ws.String(), agentName(i))})
		}
	}
	latestLong := latestBuilds(ctx, d, fleet.longClaimed)
	latestClaim := latestBuilds(ctx, d, fleet.claimLatest)
	nLong, nClaim := 2*len(fleet.longClaimed), 2*len(fleet.claimLatest)

	for _, column := range []string{"guard", "unpatched"} {
		base := d.env.url.String()
		var g *guardProc
		if column == "guard" {
			g = startGuard(t, guardConfig{upstream: d.env.url.String(), pgURL: roleURL, logPath: logPath})
			base = g.url
		}
		replicaBefore := liveReplicas(ctx, t, d)
		loops := make([]loopResult, len(agents))
		var wg sync.WaitGroup
		rt, probes, refused := d.env.restart(t, restartDown, func() {
			for i, a := range agents {
				wg.Add(1)
				go func() {
					defer wg.Done()
					loops[i] = agentLoop(ctx, base, a.token, 90*time.Second, false, nil)
				}()
			}
		})
		wg.Wait()
		res.time(fmt.Sprintf("coderd restart (%s): every loop ended after coderd returned", column), rt.upAt)
		replicaAfter := liveReplicas(ctx, t, d)
		status, headers, _, err := httpGet(ctx, d.env.url.String()+"/api/v2/buildinfo", "")
		version := ""
		if err == nil {
			version = headers.Get("X-Coder-Build-Version")
		}

		// The restart itself: the port refused while coderd was down, a new coderd (a new
		// replica) answers on the same address, and every loop met the coderd that was gone.
		metDown := 0
		for _, l := range loops {
			if failedBefore(l, rt.upAt) > 0 {
				metDown++
			}
		}
		sameReplica := len(replicaBefore) == 1 && len(replicaAfter) == 1 && replicaBefore[0] == replicaAfter[0]
		res.check(fmt.Sprintf("coderd restart (%s column): a new coderd on the same database and address while %d agents run their loops", column, len(agents)),
			probes > 0 && refused == probes && len(replicaAfter) == 1 && !sameReplica && status == 200 && strings.HasPrefix(version, d.env.version+"+") && metDown == len(agents),
			"port refused %d of %d connection attempts until it listened again %.1f s after the kill; old coderd closed %d ms after the kill; new pool, pubsub, options and coderd.New took %.1f s: serving %.1f s after the kill; live replica %s -> %s; buildinfo after: %d %s; loops that met coderd gone (a failed request before it served again): %d of %d",
			refused, probes, rt.listenAt.Sub(rt.killedAt).Seconds(), rt.stopped.Milliseconds(), rt.booted.Seconds(), rt.upAt.Sub(rt.killedAt).Seconds(),
			shortIDs(replicaBefore), shortIDs(replicaAfter), status, version, metDown, len(agents))

		var long, claim []loopResult
		var longAgents, claimAgents []restartAgent
		for i, a := range agents {
			if a.long {
				long, longAgents = append(long, loops[i]), append(longAgents, a)
			} else {
				claim, claimAgents = append(claim, loops[i]), append(claimAgents, a)
			}
		}

		if column == "guard" {
			var bad []string
			for i, l := range long {
				if why := guardEnded(l, rt.upAt); why != "" {
					bad = append(bad, fmt.Sprintf("%s: %s", longAgents[i].ws, why))
				}
			}
			suppressed, _ := g.metric(ctx, "coder_reinit_guard_reinit_requests_total", map[string]string{"outcome": "suppressed"})
			passed, _ := g.metric(ctx, "coder_reinit_guard_reinit_requests_total", map[string]string{"outcome": "passed", "reason": "claim_build_is_latest"})
			failedOpen, _ := g.metric(ctx, "coder_reinit_guard_reinit_requests_total", map[string]string{"outcome": "failed_open"})
			miss, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "miss"})
			shared, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "shared"})
			hit, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_total", map[string]string{"result": "hit"})
			upRefused, _ := g.metric(ctx, "coder_reinit_guard_upstream_errors_total", map[string]string{"kind": "refused"})
			upErrors, _ := g.metric(ctx, "coder_reinit_guard_upstream_errors_total", nil)
			warmed, _ := g.metric(ctx, "coder_reinit_guard_verdict_cache_warmed_workspaces", nil)
			res.check(fmt.Sprintf("coderd restart through the guard: %d long-claimed agents on %d workspaces, every loop ended by a 409, 0 reinits", nLong, len(fleet.longClaimed)),
				len(bad) == 0 && int(suppressed) == nLong && failedOpen == 0,
				"latest builds %s; %s; guard: suppressed %v, passed (claim_build_is_latest) %v, failed open %v; verdict cache (warmed at start with %v workspaces) misses %v, shared %v, hits %v; upstream errors %v (refused %v)%s",
				latestLong, loopSummary(long, rt.upAt), suppressed, passed, failedOpen, warmed, miss, shared, hit, upErrors, upRefused, problems(bad))
			g.stop()
		} else {
			var bad []string
			reinits := 0
			for i, l := range long {
				reinits += l.Reinits
				if why := seededBug(l, longAgents[i].ws, d.memberID, rt.upAt); why != "" {
					bad = append(bad, fmt.Sprintf("%s: %s", longAgents[i].ws, why))
				}
			}
			res.check(fmt.Sprintf("coderd restart straight to the unpatched coderd: %d long-claimed agents on %d workspaces, spurious reinits (the bug)", nLong, len(fleet.longClaimed)),
				len(bad) == 0,
				"latest builds %s; %s; spurious reinits: %d (each on a seeded prebuild_claimed of its own workspace, owner = the claimer)%s",
				latestLong, loopSummary(long, rt.upAt), reinits, problems(bad))
		}

		var bad []string
		for i, l := range claim {
			if why := deliveredOnce(l, claimAgents[i].ws, d.memberID, rt.upAt); why != "" {
				bad = append(bad, fmt.Sprintf("%s: %s", claimAgents[i].ws, why))
			}
		}
		via := "through the guard"
		if column == "unpatched" {
			via = "straight to the unpatched coderd"
		}
		res.check(fmt.Sprintf("coderd restart %s: %d agents on %d workspaces whose claim build is the latest, each claim delivered once", via, nClaim, len(fleet.claimLatest)),
			len(bad) == 0,
			"latest builds %s; %s (the second event: the SDK's next request got the same seeded event, which the agent drops as a duplicate of the last owner's, as against a patched coderd)%s",
			latestClaim, loopSummary(claim, rt.upAt), problems(bad))
	}
}

// failedBefore counts a loop's requests answered by neither a 200 nor a 409 (coderd gone:
// refused, or the guard's 502) before t.
func failedBefore(l loopResult, t time.Time) int {
	n := 0
	for _, a := range l.attempts {
		if a.at.Before(t) && a.status != 200 && a.status != 409 {
			n++
		}
	}
	return n
}

// guardEnded: why a long-claimed loop through the guard did not end as it must (empty: it
// did): failed requests while coderd was down, then one 409 from the guard, after coderd
// returned, which closed the loop; no event.
func guardEnded(l loopResult, up time.Time) string {
	switch {
	case l.Closed != "channel closed (terminal 409)":
		return "loop " + l.Closed
	case l.Reinits != 0 || l.Skipped != 0:
		return fmt.Sprintf("%d reinit(s), %d duplicate(s)", l.Reinits, l.Skipped)
	case len(l.attempts) == 0:
		return "no request recorded"
	case failedBefore(l, up) == 0:
		return "no failed request while coderd was down"
	}
	conflicts := 0
	for _, a := range l.attempts {
		if a.status == 409 {
			conflicts++
		}
	}
	last := l.attempts[len(l.attempts)-1]
	switch {
	case conflicts != 1:
		return fmt.Sprintf("%d 409s", conflicts)
	case last.status != 409 || last.guard != "claim-already-handled":
		return fmt.Sprintf("last answer %s (X-Coder-Reinit-Guard %q)", last.answer(), last.guard)
	case last.at.Before(up):
		return "the 409 came before coderd returned"
	}
	return ""
}

// seededBug: why a long-claimed loop straight to the unpatched coderd did not show the bug.
func seededBug(l loopResult, ws, owner uuid.UUID, up time.Time) string {
	switch {
	case l.Reinits < 1 || l.FirstEvent == nil:
		return fmt.Sprintf("no reinit (loop %s)", l.Closed)
	case l.FirstEvent.Reason != agentsdk.ReinitializeReasonPrebuildClaimed || l.FirstEvent.WorkspaceID != ws || l.FirstEvent.OwnerID != owner:
		return fmt.Sprintf("first event %+v", *l.FirstEvent)
	case l.firstEventAt.Before(up):
		return "the event came before coderd returned"
	case failedBefore(l, up) == 0:
		return "no failed request while coderd was down"
	case l.Answers["409"] != 0:
		return "a 409"
	}
	return ""
}

// deliveredOnce: why a genuine claim's loop did not get its claim exactly once.
func deliveredOnce(l loopResult, ws, owner uuid.UUID, up time.Time) string {
	switch {
	case l.Reinits != 1 || l.FirstEvent == nil:
		return fmt.Sprintf("%d reinit(s) (loop %s)", l.Reinits, l.Closed)
	case l.FirstEvent.Reason != agentsdk.ReinitializeReasonPrebuildClaimed || l.FirstEvent.WorkspaceID != ws || l.FirstEvent.OwnerID != owner:
		return fmt.Sprintf("first event %+v", *l.FirstEvent)
	case l.Skipped != 1 || l.Closed != "cancelled by the agent (duplicate event)":
		return fmt.Sprintf("%d duplicate(s), loop %s", l.Skipped, l.Closed)
	case l.firstEventAt.Before(up):
		return "the event came before coderd returned"
	case failedBefore(l, up) == 0:
		return "no failed request while coderd was down"
	}
	return ""
}

// loopSummary: what the loops did, in one line.
func loopSummary(loops []loopResult, up time.Time) string {
	closed := map[string]int{}
	answers := map[string]int{}
	reinits, skipped, failed := 0, 0, 0
	minReq, maxReq := int64(-1), int64(0)
	var lastAfter time.Duration
	for _, l := range loops {
		closed[l.Closed]++
		for k, v := range l.Answers {
			answers[k] += v
		}
		reinits += l.Reinits
		skipped += l.Skipped
		failed += failedBefore(l, up)
		if minReq < 0 || l.Requests < minReq {
			minReq = l.Requests
		}
		maxReq = max(maxReq, l.Requests)
		if n := len(l.attempts); n > 0 {
			lastAfter = max(lastAfter, l.attempts[n-1].at.Sub(up))
		}
	}
	return fmt.Sprintf("loops: %s; reinits %d, duplicates skipped %d; requests per loop %d-%d, answers %s (%d failed while coderd was down); last answer %.1f s after coderd returned",
		counts(closed), reinits, skipped, minReq, maxReq, counts(answers), failed, lastAfter.Seconds())
}

func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d× %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func problems(bad []string) string {
	if len(bad) == 0 {
		return ""
	}
	if len(bad) > 5 {
		bad = append(bad[:5:5], fmt.Sprintf("and %d more", len(bad)-5))
	}
	return "; NOT AS REQUIRED: " + strings.Join(bad, "; ")
}

// latestBuilds summarizes the workspaces' latest builds ("100× #3 start by user, ...").
func latestBuilds(ctx context.Context, d *deployment, ids []uuid.UUID) string {
	m := map[string]int{}
	for _, id := range ids {
		m[latestBuildSummary(ctx, d.env.sqlDB, id)]++
	}
	return counts(m)
}

// liveReplicas: the coderd replicas registered and not stopped.
func liveReplicas(ctx context.Context, t *testing.T, d *deployment) []uuid.UUID {
	rows, err := d.env.sqlDB.QueryContext(ctx, `SELECT id FROM replicas WHERE stopped_at IS NULL ORDER BY started_at`)
	require.NoError(t, err)
	defer rows.Close()
	var ids []uuid.UUID
	for rows.Next() {
		var id uuid.UUID
		require.NoError(t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, rows.Err())
	return ids
}

func shortIDs(ids []uuid.UUID) string {
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		parts = append(parts, id.String()[:8])
	}
	return "[" + strings.Join(parts, " ") + "]"
}
