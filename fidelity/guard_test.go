package fidelity

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	if cfg.listen == "" {
		cfg.listen = "127.0.0.1:0"
	}
	if cfg.admin == "" {
		cfg.admin = "127.0.0.1:0"
	}
	cmd := exec.Command(node, main)
	cmd.Env = append(os.Environ(),
		"REINIT_GUARD_UPSTREAM="+cfg.upstream,
		"REINIT_GUARD_PG_URL="+cfg.pgURL,
		"REINIT_GUARD_LISTEN="+cfg.listen,
		"REINIT_GUARD_ADMIN_LISTEN="+cfg.admin,
	)
	for k, v := range cfg.extra {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	logFile, err := os.OpenFile(cfg.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	cmd.Stderr = logFile
	require.NoError(t, cmd.Start())
	g := &guardProc{cmd: cmd, exited: make(chan struct{})}
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
		g.proxyPort = int(m["proxy_port"].(float64))
		g.adminPort = int(m["admin_port"].(float64))
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

// stop sends SIGTERM and waits for the exit (killing it after 20 s).
func (g *guardProc) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
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
// (sql/least-privilege-role.sql, its password replaced) on coderd's database and returns
// the role's URL: the guard reads real coderd's schema with exactly the README's grants.
func guardRoleURL(t *testing.T, env *coderdEnv) string {
	repo := os.Getenv("FIDELITY_REPO")
	require.NotEmpty(t, repo, "FIDELITY_REPO is not set")
	script, err := os.ReadFile(filepath.Join(repo, "sql", "least-privilege-role.sql"))
	require.NoError(t, err)
	password := "fidelity-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	text := strings.ReplaceAll(string(script), "'change-me'", "'"+password+"'")
	var exists bool
	require.NoError(t, env.sqlDB.QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'coder_reinit_guard')`).Scan(&exists))
	if exists {
		// The other coder version's run on this server created it: keep the rest of the
		// script (the grants on this database) and set the password.
		text = regexp.MustCompile(`(?m)^CREATE ROLE coder_reinit_guard [^;]*;`).ReplaceAllString(text, "ALTER ROLE coder_reinit_guard PASSWORD '"+password+"';")
	}
	_, err = env.sqlDB.Exec(text)
	require.NoError(t, err, "sql/least-privilege-role.sql")
	u := mustURL(env.dbURL)
	u.User = url.UserPassword("coder_reinit_guard", password)
	return u.String()
}
