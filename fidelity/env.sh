# Sourced by hand: the Go settings this harness's build needs (see README-section.md).
# GOCACHE and GOMODCACHE stay Go's user-level defaults (or what the caller set), so every
# clone on this machine shares one warm build.
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false
export GONOSUMDB=github.com/coder,github.com/kylecarbs,github.com/dannykopping,github.com/aslilac,github.com/elimity-com/scim
