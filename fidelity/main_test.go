// Package fidelity judges coder-reinit-guard against the real coderd: coderd of one coder
// release runs in this test binary (coder's own test harness, enterprise build, real
// PostgreSQL, real migrations, real pubsub), the real agent SDK of the same release talks
// to it straight and through the guard, and every observation is written as JSON for the
// driver (run.ts) to compare with the other release's.
//
// The binary is built twice from this one tree: with go.mod (coder v2.34.3, unpatched) and
// with -modfile=patched.mod (coder v2.35.1, the fix). See README-section.md.
package fidelity

import (
	"flag"
	"os"
	"testing"
)

// TestMain parses the test flags and then hides them from coderd.
//
// coder's coderdtest package calls testing.Init() in an init function, and several of
// coderd's production paths change behaviour when the flag "test.v" exists: httpapi.Write
// indents every JSON answer with tabs (so a 409 body would differ from the one an
// operator's coderd sends), rbac errors get long, audit panics. coderd must speak as it
// does in production, so once the flags are parsed the command-line flag set is replaced
// by an empty one. startCoderd builds coderd only after coderdtest.NewOptions (which needs
// a test-only option) and the swap; see there.
func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(m.Run())
}

// testFlags is the command-line flag set hideTestFlags replaced.
var testFlags *flag.FlagSet

// hideTestFlags makes flag.Lookup("test.v") nil, as in a production coderd binary.
func hideTestFlags() {
	if testFlags == nil {
		testFlags = flag.CommandLine
	}
	fs := flag.NewFlagSet(os.Args[0], flag.ContinueOnError)
	_ = fs.Parse(nil)
	flag.CommandLine = fs
}

// withTestFlags runs f with the test flags visible again: coderdtest.NewOptions panics
// without them (workspacestats.TrackerWithTickFlush is test-only). A coderd restart calls
// it while no coderd API runs in this process (the old one is closed, the new one is
// constructed after the flags are hidden again).
func withTestFlags(f func()) {
	if testFlags != nil {
		flag.CommandLine = testFlags
	}
	defer hideTestFlags()
	f()
}
