package fidelity

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq" // coderd's driver ("postgres"), coder's fork via replace.
	"github.com/stretchr/testify/require"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/sloghuman"
	"github.com/coder/coder/v2/buildinfo"
	agplcoderd "github.com/coder/coder/v2/coderd"
	"github.com/coder/coder/v2/coderd/coderdtest"
	"github.com/coder/coder/v2/coderd/database"
	"github.com/coder/coder/v2/coderd/database/migrations"
	"github.com/coder/coder/v2/coderd/database/pubsub"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/agentsdk"
	"github.com/coder/coder/v2/enterprise/coderd"
	"github.com/coder/coder/v2/enterprise/coderd/coderdenttest"
	provisionerdproto "github.com/coder/coder/v2/provisionerd/proto"
	"github.com/coder/serpent"
)

// coderdEnv is one running coderd: the enterprise build (prebuilds are a Premium feature,
// so every deployment that has the bug runs it), in this process, on its own database. It
// can be restarted (restart): a new coderd on the same database and the same address.
type coderdEnv struct {
	// version is the coder module version this binary was built with (v2.34.3 or v2.35.1).
	version string
	// url is coderd's address and access URL; it stays the same across restarts.
	url *url.URL
	// proc is the coderd now running (see API).
	proc atomic.Pointer[coderdProcess]
	// db is coderd's store without the authorization layer, for the fixtures that use
	// coder's own queries directly (the "hold" state) and for reading agent tokens.
	db    database.Store
	sqlDB *sql.DB
	// dbURL is the superuser URL of coderd's database.
	dbURL string
	log   slog.Logger
	// t owns every coderd's cleanups (the top-level test).
	t *testing.T
	// ticker drives coderd's autobuild executor (lifecycle_executor.go): each value sent is
	// one tick at that time. Every coderd of this environment reads it.
	ticker chan time.Time
	// tlsURL: coderd served over TLS as well (https://127.0.0.1:port, the certificate of
	// testkit/tls, which caFile trusts), for the guard's https upstream; the first coderd
	// only (a restart does not listen there again).
	tlsURL *url.URL
	caFile string
}

// API is the coderd now running (a restart replaces it).
func (e *coderdEnv) API() *coderd.API { return e.proc.Load().api }

// coderModuleVersion reports which coder release is linked into this binary. Test
// binaries carry no module list in their build info, so it is read from where the linked
// coder source lives: the module cache path of one of its functions
// (.../github.com/coder/coder/v2@v2.34.3/codersdk/agentsdk/agentsdk.go).
func coderModuleVersion(t *testing.T) string {
	file, _ := runtime.FuncForPC(reflect.ValueOf(agentsdk.New).Pointer()).FileLine(0)
	m := regexp.MustCompile(`github\.com/coder/coder/v2@(v[^/]+)/`).FindStringSubmatch(filepath.ToSlash(file))
	require.NotNil(t, m, "coder's source path %q names no version", file)
	return m[1]
}

// createDatabase makes an empty database on the PostgreSQL server of serverURL.
func createDatabase(t *testing.T, serverURL, name string) string {
	u, err := url.Parse(serverURL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("sslmode", "disable") // loopback; the embedded server has no TLS.
	u.RawQuery = q.Encode()
	admin, err := sql.Open("postgres", u.String())
	require.NoError(t, err)
	defer admin.Close()
	_, err = admin.Exec(fmt.Sprintf("DROP DATABASE IF EXISTS %q WITH (FORCE)", name))
	require.NoError(t, err)
	_, err = admin.Exec(fmt.Sprintf("CREATE DATABASE %q", name))
	require.NoError(t, err)
	u.Path = "/" + name
	return u.String()
}

// connectLikeCoderServer opens coderd's database as `coder server` does
// (cli.ConnectToPostgres): its real migrations, the clean-state check, and its default
// pool limits (10 open, 3 idle).
func connectLikeCoderServer(t *testing.T, dbURL string) *sql.DB {
	sqlDB, err := sql.Open("postgres", dbURL)
	require.NoError(t, err)
	require.NoError(t, sqlDB.Ping())
	start := time.Now()
	require.NoError(t, migrations.Up(sqlDB), "coderd's migrations")
	require.NoError(t, migrations.EnsureClean(sqlDB))
	t.Logf("coderd's migrations applied in %s", time.Since(start).Round(time.Millisecond))
	sqlDB.SetMaxOpenConns(10)
	sqlDB.SetMaxIdleConns(3)
	t.Cleanup(func() { _ = sqlDB.Close() })
	return sqlDB
}

// startCoderd starts the enterprise coderd in this process, as coderdenttest.NewWithAPI
// does, with four differences: the database and pubsub are ours (a real PostgreSQL,
// migrated by coderd's own migrations), coderd is constructed after hideTestFlags so it
// behaves as in production (see TestMain), no first user or license is added yet (the
// caller creates the first user through the guard, as a user would), and coderd serves on
// a listener of ours at a fixed address, so that it can be restarted (see restart).
func startCoderd(t *testing.T, serverURL, logDir string) *coderdEnv {
	version := coderModuleVersion(t)
	dbURL := createDatabase(t, serverURL, "coderd_"+strings.NewReplacer(".", "_", "-", "_").Replace(version))
	sqlDB := connectLikeCoderServer(t, dbURL)

	logFile, err := os.Create(filepath.Join(logDir, "coderd-"+version+".log"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = logFile.Close() })
	log := slog.Make(sloghuman.Sink(logFile)).Leveled(slog.LevelDebug)

	ln := listenFixed(t)
	env := &coderdEnv{
		version: version, url: mustURL("http://" + ln.Addr().String()),
		db: database.New(sqlDB), sqlDB: sqlDB, dbURL: dbURL, log: log, t: t,
		ticker: make(chan time.Time),
	}
	p := env.boot(sqlDB, false)
	p.serve(ln)
	env.serveTLS(t, p)
	env.proc.Store(p)
	t.Cleanup(func() { env.proc.Load().stop() })
	t.Logf("coderd %s (buildinfo %s) listening on %s", version, buildinfo.Version(), env.url)
	return env
}

// coderdProcess is one life of coderd: what one `coder server` process owns (its database
// pool, its pubsub connection, the API with every background worker, its HTTP server and
// every connection accepted on it).
type coderdProcess struct {
	api      *coderd.API
	sqlDB    *sql.DB
	ownsDB   bool
	ps       *pubsub.PGPubsub
	listener *trackingListener
	server   *http.Server
	// setHandler is the handler of coderdtest's own server, which only the DERP map and
	// the replica relay address name (this harness's agents use neither).
	setHandler    func(http.Handler)
	cancel        context.CancelFunc // the process's base context: pubsub, request contexts
	cancelOptions context.CancelFunc // coderdtest.NewOptions': lifecycle executor, job reaper
	// daemons: the provisioner daemons' connections to this process (see dialProvisioner).
	mu       sync.Mutex
	killed   bool
	daemons  []io.Closer
	killOnce sync.Once
	stopOnce sync.Once
}

// dialProvisioner connects a provisioner daemon to the coderd now running (in memory, as
// coderdtest does), as an external daemon connects over its WebSocket: a coderd restart
// severs the connection, and the daemon dials again (provisionerd's own retry) until the
// next coderd answers.
func (e *coderdEnv) dialProvisioner(ctx context.Context, name string) (provisionerdproto.DRPCProvisionerDaemonClient, error) {
	p := e.proc.Load()
	p.mu.Lock()
	killed := p.killed
	p.mu.Unlock()
	if killed {
		return nil, errors.New("coderd is down")
	}
	c, err := p.api.AGPL.CreateInMemoryTaggedProvisionerDaemon(ctx, name, []codersdk.ProvisionerType{codersdk.ProvisionerTypeEcho}, nil)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed {
		_ = c.DRPCConn().Close()
		return nil, errors.New("coderd is down")
	}
	p.daemons = append(p.daemons, c.DRPCConn())
	return c, nil
}

// boot constructs coderd on sqlDB (a pool of its own when ownsDB); serve serves it.
func (e *coderdEnv) boot(sqlDB *sql.DB, ownsDB bool) *coderdProcess {
	t := e.t
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.New(ctx, e.log.Named("pubsub"), sqlDB, e.dbURL)
	require.NoError(t, err)
	log := e.log
	opts := &coderdtest.Options{
		Database:        database.New(sqlDB),
		Pubsub:          ps,
		Logger:          &log,
		AccessURL:       e.url,
		AutobuildTicker: e.ticker,
		DeploymentValues: coderdtest.DeploymentValues(t, func(dv *codersdk.DeploymentValues) {
			// The reconciler creates the prebuilds; once a second keeps setup short.
			dv.Prebuilds.ReconciliationInterval = serpent.Duration(time.Second)
		}),
	}
	var setHandler func(http.Handler)
	var cancelOptions context.CancelFunc
	var derpURL *url.URL
	var oop *agplcoderd.Options
	withTestFlags(func() { setHandler, cancelOptions, derpURL, oop = coderdtest.NewOptions(t, opts) })
	api, err := coderd.New(context.Background(), &coderd.Options{
		RBAC:                      true,
		DERPServerRelayAddress:    derpURL.String(),
		DERPServerRegionID:        int(oop.DeploymentValues.DERP.Server.RegionID.Value()),
		Options:                   oop,
		LicenseKeys:               coderdenttest.Keys,
		DefaultQuietHoursSchedule: oop.DeploymentValues.UserQuietHoursSchedule.DefaultSchedule.Value(),
	})
	require.NoError(t, err)
	setHandler(api.AGPL.RootHandler)
	return &coderdProcess{
		api: api, sqlDB: sqlDB, ownsDB: ownsDB, ps: ps, setHandler: setHandler, cancel: cancel, cancelOptions: cancelOptions,
		server: &http.Server{Handler: api.AGPL.RootHandler, BaseContext: func(net.Listener) context.Context { return ctx }},
	}
}

// serveTLS serves the same coderd over TLS too, on a second fixed loopback port, with
// testkit/tls's server certificate (for 127.0.0.1): the guard's https upstream. HTTP/1.1
// only, as coderd behind a TLS terminator speaks to a proxy.
func (e *coderdEnv) serveTLS(t *testing.T, p *coderdProcess) {
	dir := filepath.Join(os.Getenv("FIDELITY_REPO"), "testkit", "tls")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	require.NoError(t, err, "testkit/tls")
	ln := listenFixed(t)
	tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	e.tlsURL = mustURL("https://" + ln.Addr().String())
	e.caFile = filepath.Join(dir, "ca.pem")
	go func() { _ = p.server.Serve(tl) }()
}

// tick sends one autobuild tick at `at` (blocking until the executor takes it).
func (e *coderdEnv) tick(ctx context.Context, at time.Time) error {
	select {
	case e.ticker <- at:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("the autobuild executor took no tick for 30 s")
	}
}

// serve serves coderd on ln, remembering every connection (see kill).
func (p *coderdProcess) serve(ln net.Listener) {
	p.listener = &trackingListener{Listener: ln, conns: map[net.Conn]struct{}{}}
	go func() { _ = p.server.Serve(p.listener) }()
}

// kill is the network side of a process's end: the port closes (connections to it are
// refused) and every connection on it is closed, upgraded ones (WebSockets) and the
// provisioner daemons' included.
func (p *coderdProcess) kill() {
	p.killOnce.Do(func() {
		p.mu.Lock()
		p.killed = true
		daemons := p.daemons
		p.mu.Unlock()
		p.listener.closeAll()
		for _, c := range daemons {
			_ = c.Close()
		}
	})
}

// stop ends the process: its network side, then the API (replica marked stopped, every
// worker ended), coderdtest's workers, the pubsub connection and the database pool.
func (p *coderdProcess) stop() {
	p.kill()
	p.stopOnce.Do(func() {
		_ = p.server.Close()
		// coderdtest's own server stays up until the test ends: nothing answers on it now.
		p.setHandler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
		_ = p.api.Close()
		p.cancelOptions()
		_ = p.ps.Close()
		p.cancel()
		if p.ownsDB {
			_ = p.sqlDB.Close()
		}
	})
}

// restartTimes: how long each part of a restart took.
type restartTimes struct {
	// killedAt: the port closed; listenAt: it listens again; upAt: the new coderd serves.
	killedAt, listenAt, upAt time.Time
	// stopped: the old coderd closed (from the kill); booted: the new one constructed.
	stopped, booted time.Duration
}

// restart restarts coderd as a deployment does (a new pod, or `coder server` started
// again): the old process's port closes and every connection on it drops (kill), then
// `started` runs (the caller starts its agents: they meet a coderd that is gone), the old
// API is closed, and once at least `down` has passed since the kill a new process is
// started on the same address: it listens, then opens a new database pool (coderd's
// migrations and clean-state check run again, as at every start), a new pubsub
// connection, new coderdtest options and a NEW coderd.New on the same database, and
// serves. refused counts the connection attempts to that address that were refused while
// it was down (probed every 100 ms until it listens again).
func (e *coderdEnv) restart(t *testing.T, down time.Duration, started func()) (restartTimes, int, int) {
	old := e.proc.Load()
	var rt restartTimes
	rt.killedAt = time.Now()
	old.kill()
	probeDone := make(chan struct{})
	var probes, refused int
	var probeWG sync.WaitGroup
	probeWG.Add(1)
	go func() {
		defer probeWG.Done()
		for {
			select {
			case <-probeDone:
				return
			case <-time.After(100 * time.Millisecond):
			}
			c, err := net.DialTimeout("tcp", e.url.Host, 500*time.Millisecond)
			probes++
			if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
				refused++
			}
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	if started != nil {
		started()
	}
	old.stop()
	rt.stopped = time.Since(rt.killedAt)
	if rest := down - time.Since(rt.killedAt); rest > 0 {
		time.Sleep(rest)
	}
	close(probeDone)
	probeWG.Wait()
	// As `coder server` does, the new process listens first (connections then wait in the
	// backlog), then connects to the database, constructs the API and serves. The address
	// was ours a moment ago; a port outside the ephemeral range is not taken by any
	// outgoing connection meanwhile.
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", e.url.Host); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, err, "listen again on %s", e.url.Host)
	rt.listenAt = time.Now()
	p := e.boot(connectLikeCoderServer(t, e.dbURL), true)
	require.NotSame(t, old.api, p.api)
	e.proc.Store(p)
	rt.upAt = time.Now()
	rt.booted = rt.upAt.Sub(rt.listenAt)
	p.serve(ln)
	return rt, probes, refused
}

// listenFixed listens on a loopback port below the ephemeral range (32768-60999 on
// Linux), so that no outgoing connection can hold that port while coderd is down
// between a restart's two processes.
func listenFixed(t *testing.T) net.Listener {
	for i := 0; i < 100; i++ {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			return ln
		}
	}
	t.Fatal("no free loopback port in 20000-31999")
	return nil
}

// trackingListener remembers every connection it accepted until it is closed, so that
// closeAll can end them all, as the end of a process does (net/http forgets the
// connections it hands to WebSocket handlers).
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	_ = l.Listener.Close()
	for c := range conns {
		_ = c.(*trackedConn).Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
