package fidelity

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq" // coderd's driver ("postgres"), coder's fork via replace.
	"github.com/stretchr/testify/require"

	"cdr.dev/slog/v3"
	"cdr.dev/slog/v3/sloggers/sloghuman"
	"github.com/coder/coder/v2/buildinfo"
	"github.com/coder/coder/v2/coderd/coderdtest"
	"github.com/coder/coder/v2/coderd/database"
	"github.com/coder/coder/v2/coderd/database/migrations"
	"github.com/coder/coder/v2/coderd/database/pubsub"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/agentsdk"
	"github.com/coder/coder/v2/enterprise/coderd"
	"github.com/coder/coder/v2/enterprise/coderd/coderdenttest"
	"github.com/coder/serpent"
)

// coderdEnv is one running coderd: the enterprise build (prebuilds are a Premium feature,
// so every deployment that has the bug runs it), in this process, on its own database.
type coderdEnv struct {
	// version is the coder module version this binary was built with (v2.34.3 or v2.35.1).
	version string
	url     *url.URL
	api     *coderd.API
	// db is coderd's store without the authorization layer, for the fixtures that use
	// coder's own queries directly (the "hold" state) and for reading agent tokens.
	db    database.Store
	sqlDB *sql.DB
	// dbURL is the superuser URL of coderd's database.
	dbURL string
	log   slog.Logger
}

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
// does, with three differences: the database and pubsub are ours (a real PostgreSQL,
// migrated by coderd's own migrations), coderd is constructed after hideTestFlags so it
// behaves as in production (see TestMain), and no first user or license is added yet
// (the caller creates the first user through the guard, as a user would).
func startCoderd(t *testing.T, serverURL, logDir string) *coderdEnv {
	version := coderModuleVersion(t)
	dbURL := createDatabase(t, serverURL, "coderd_"+strings.NewReplacer(".", "_", "-", "_").Replace(version))
	sqlDB := connectLikeCoderServer(t, dbURL)

	logFile, err := os.Create(filepath.Join(logDir, "coderd-"+version+".log"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = logFile.Close() })
	log := slog.Make(sloghuman.Sink(logFile)).Leveled(slog.LevelDebug)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps, err := pubsub.New(ctx, log.Named("pubsub"), sqlDB, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ps.Close() })
	db := database.New(sqlDB)

	opts := &coderdtest.Options{
		Database: db,
		Pubsub:   ps,
		Logger:   &log,
		DeploymentValues: coderdtest.DeploymentValues(t, func(dv *codersdk.DeploymentValues) {
			// The reconciler creates the prebuilds; once a second keeps setup short.
			dv.Prebuilds.ReconciliationInterval = serpent.Duration(time.Second)
		}),
	}
	setHandler, cancelServer, serverURLParsed, oop := coderdtest.NewOptions(t, opts)
	hideTestFlags()
	api, err := coderd.New(context.Background(), &coderd.Options{
		RBAC:                      true,
		DERPServerRelayAddress:    serverURLParsed.String(),
		DERPServerRegionID:        int(oop.DeploymentValues.DERP.Server.RegionID.Value()),
		Options:                   oop,
		LicenseKeys:               coderdenttest.Keys,
		DefaultQuietHoursSchedule: oop.DeploymentValues.UserQuietHoursSchedule.DefaultSchedule.Value(),
	})
	require.NoError(t, err)
	setHandler(api.AGPL.RootHandler)
	t.Cleanup(func() {
		cancelServer()
		_ = api.Close()
	})
	t.Logf("coderd %s (buildinfo %s) listening on %s", version, buildinfo.Version(), serverURLParsed)
	return &coderdEnv{version: version, url: serverURLParsed, api: api, db: db, sqlDB: sqlDB, dbURL: dbURL, log: log}
}
