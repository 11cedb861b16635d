package fidelity

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// guardProc is the guard, started exactly as the README says (`node dist/main.js` after
// `npm run build`, configured by environment), on loopback ports.
type guardProc struct {
	cmd       *exec.Cmd
	url       string
	adminURL  string
	proxyPort int
	adminPort int
	exited    chan struct{}
	// logPath: the guard's log (stdout and stderr), appended to by every guard that
	// shares it; logFrom is its size when this guard started.
	logPath string
	logFrom int64
}

// guardConfig is the guard's environment: the README's variables.
type guardConfig struct {
	upstream string
	pgURL    string
	// listen and admin: host:port; port 0 picks a free one.
	listen, admin string
	extra         map[string]string
	logPath       string
}

// startGuard runs the guard and waits for its "started" log line, which carries the
// ports it listens on.
func startGuard(t *testing.T, cfg guardConfig) *guardProc {
	main := os.Getenv("FIDELITY_GUARD_MAIN")
	require.NotEmpty(t, main, "FIDELITY_GUARD_MAIN (the built dist/main.js) is not set")
	node := os.Getenv("FIDELITY_NODE")
	if node == "" {
		node = "node"
	}
	// With workers the primary logs no ports ("started" carries the worker count): the
	// guard gets free ports of the harness's choosing.
	workers := cfg.extra["REINIT_GUARD_WORKERS"] != ""
	if cfg.listen == "" {
		cfg.listen = "127.0.0.1:0"
		if workers {
			cfg.listen = freeAddr(t)
		}
	}
	if cfg.admin == "" {
		cfg.admin = "127.0.0.1:0"
		if workers {
			cfg.admin = freeAddr(t)
		}
	}
	cmd := exec.Command(node, main)
	// Exactly the environment the scenario sets: nothing inherited from the harness (no
	// CODER_PG_CONNECTION_URL fallback, no REINIT_GUARD_* of the caller's shell).
	cmd.Env = guardEnv(cfg)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	logFile, err := os.OpenFile(cfg.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	var logFrom int64
	if st, err := logFile.Stat(); err == nil {
		logFrom = st.Size()
	}
	cmd.Stderr = logFile
	require.NoError(t, cmd.Start())
	g := &guardProc{cmd: cmd, exited: make(chan struct{}), logPath: cfg.logPath, logFrom: logFrom}
	started := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			_, _ = io.WriteString(logFile, line+"\n")
			if strings.Contains(line, `"coder-reinit-guard started"`) {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil {
					select {
					case started <- m:
					default:
					}
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(g.exited)
	}()
	select {
	case m := <-started:
		g.proxyPort, g.adminPort = portOf(m["proxy_port"], cfg.listen), portOf(m["admin_port"], cfg.admin)
	case <-g.exited:
		t.Fatalf("the guard exited at start; see %s", cfg.logPath)
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the guard did not start; see %s", cfg.logPath)
	}
	g.url = fmt.Sprintf("http://127.0.0.1:%d", g.proxyPort)
	g.adminURL = fmt.Sprintf("http://127.0.0.1:%d", g.adminPort)
	t.Cleanup(func() { g.stop() })
	return g
}

// freeAddr: a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// portOf: the port the "started" line reports, or the configured one.
func portOf(logged any, addr string) int {
	if f, ok := logged.(float64); ok {
		return int(f)
	}
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// guardEnv is the guard's whole environment: the four variables every guard gets and
// the scenario's own, nothing else.
func guardEnv(cfg guardConfig) []string {
	env := []string{
		"REINIT_GUARD_UPSTREAM=" + cfg.upstream,
		"REINIT_GUARD_LISTEN=" + cfg.listen,
		"REINIT_GUARD_ADMIN_LISTEN=" + cfg.admin,
	}
	if cfg.pgURL != "" {
		env = append(env, "REINIT_GUARD_PG_URL="+cfg.pgURL)
	}
	keys := make([]string, 0, len(cfg.extra))
	for k := range cfg.extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+cfg.extra[k])
	}
	return env
}

// logLines returns this guard's log lines (JSON) that contain every one of `want`.
func (g *guardProc) logLines(want ...string) []string {
	b, err := os.ReadFile(g.logPath)
	if err != nil || int64(len(b)) < g.logFrom {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b[g.logFrom:]), "\n") {
		ok := line != ""
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// factMetrics: the metrics a row's facts are read from.
var factMetrics = map[string]bool{
	"coder_reinit_guard_reinit_requests_total":       true,
	"coder_reinit_guard_db_errors_total":             true,
	"coder_reinit_guard_dependency_up":               true,
	"coder_reinit_guard_retired":                     true,
	"coder_reinit_guard_holds_released_total":        true,
	"coder_reinit_guard_hold_recheck_failures_total": true,
	"coder_reinit_guard_verdict_cache_total":         true,
	"coder_reinit_guard_db_statements_total":         true,
	"coder_reinit_guard_upstream_errors_total":       true,
}

// facts: what this guard says now: its metrics of factMetrics (by "name{labels}") and its
// log (the guard must have a log file of its own).
func (g *guardProc) facts(ctx context.Context) *guardFacts {
	time.Sleep(300 * time.Millisecond) // counts made just after the answer (observe decides beside the stream)
	f := &guardFacts{Metrics: map[string]float64{}, Log: []string{}}
	status, _, body, err := httpGet(ctx, g.adminURL+"/metrics", "")
	switch {
	case err != nil:
		f.Errors = append(f.Errors, "metrics: "+err.Error())
	case status != http.StatusOK:
		f.Errors = append(f.Errors, fmt.Sprintf("metrics: status %d", status))
	default:
		for _, line := range strings.Split(string(body), "\n") {
			m := sampleLine.FindStringSubmatch(line)
			if m == nil || !factMetrics[m[1]] {
				continue
			}
			if v, err := strconv.ParseFloat(m[3], 64); err == nil {
				f.Metrics[m[1]+m[2]] = v
			}
		}
	}
	for _, line := range g.logLines() {
		if !strings.Contains(line, `"coder-reinit-guard started"`) {
			f.Log = append(f.Log, line)
		}
	}
	if len(f.Log) > 60 {
		f.Log = append(f.Log[:30:30], f.Log[len(f.Log)-30:]...)
	}
	return f
}

// awaitGauge waits until a metric (summed over labels matching `labels`) equals want.
func (g *guardProc) awaitMetric(ctx context.Context, name string, labels map[string]string, want float64, within time.Duration) error {
	deadline := time.Now().Add(within)
	var v float64
	var err error
	for time.Now().Before(deadline) {
		if v, err = g.metric(ctx, name, labels); err == nil && v == want {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s%v is %v, not %v, after %s (%v)", name, labels, v, want, within, err)
}

// stop sends SIGINT (the guard's shutdown without SIGTERM's delay for load balancers) and
// waits for the exit (killing it after 20 s).
func (g *guardProc) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-g.exited:
	case <-time.After(20 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
}

// metric sums the samples of a Prometheus metric whose labels include all of `labels`.
func (g *guardProc) metric(ctx context.Context, name string, labels map[string]string) (float64, error) {
	status, _, body, err := httpGet(ctx, g.adminURL+"/metrics", "")
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("metrics: %d", status)
	}
	return sumMetric(string(body), name, labels), nil
}

// gauge reads a metric that must be exported (a gauge without labels): an error when the
// admin port does not answer or the metric is absent.
func (g *guardProc) gauge(ctx context.Context, name string) (float64, error) {
	status, _, body, err := httpGet(ctx, g.adminURL+"/metrics", "")
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("metrics: %d", status)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if m := sampleLine.FindStringSubmatch(line); m != nil && m[1] == name {
			return strconv.ParseFloat(m[3], 64)
		}
	}
	return 0, fmt.Errorf("metric %s is not exported", name)
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)`)

func sumMetric(text, name string, labels map[string]string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		m := sampleLine.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(m[2], fmt.Sprintf(`%s="%s"`, k, v)) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(m[3], 64)
		if err == nil {
			sum += f
		}
	}
	return sum
}

// readyz returns the guard's /readyz body.
func (g *guardProc) readyz(ctx context.Context) (map[string]any, error) {
	_, _, body, err := httpGet(ctx, g.adminURL+"/readyz", "")
	if err != nil {
		return nil, err
	}
	var m map[string]any
	err = json.Unmarshal(body, &m)
	return m, err
}

// guardRoleURL gives the guard the least-privilege role of the README
// (sql/least-privilege-role.sql, then its password set) on coderd's database and returns
// the role's URL: the guard reads real coderd's schema with exactly the README's grants.
func guardRoleURL(t *testing.T, env *coderdEnv) string {
	return roleURLFor(t, env, "coder_reinit_guard")
}

// roleURLFor is guardRoleURL for a role of another name with the same grants (a guard
// whose grant a scenario revokes gets a role of its own).
func roleURLFor(t *testing.T, env *coderdEnv, role string) string {
	repo := os.Getenv("FIDELITY_REPO")
	require.NotEmpty(t, repo, "FIDELITY_REPO is not set")
	script, err := os.ReadFile(filepath.Join(repo, "sql", "least-privilege-role.sql"))
	require.NoError(t, err)
	password := "fidelity-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// The script is idempotent and sets no password: run it as is (the role may exist
	// already, from the other coder version's run on this server), then set the password
	// apart from it, as the docs tell operators to.
	text := regexp.MustCompile(`\bcoder_reinit_guard\b`).ReplaceAllString(string(script), role)
	_, err = env.sqlDB.Exec(text)
	require.NoError(t, err, "sql/least-privilege-role.sql")
	_, err = env.sqlDB.Exec("ALTER ROLE " + role + " PASSWORD '" + password + "'")
	require.NoError(t, err, "ALTER ROLE ... PASSWORD")
	u := mustURL(env.dbURL)
	u.User = url.UserPassword(role, password)
	return u.String()
}
