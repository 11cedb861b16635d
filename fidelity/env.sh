# Sourced by the driver and by hand: where the Go toolchain keeps this harness's caches, and
# the module proxy settings it needs (see README-section.md).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GOMODCACHE="$root/.cache/go/mod"
export GOCACHE="$root/.cache/go/build"
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false
export GONOSUMDB=github.com/coder,github.com/kylecarbs,github.com/dannykopping,github.com/aslilac,github.com/elimity-com/scim
