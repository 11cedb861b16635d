#!/usr/bin/env bash
# Builds the operator's real tools from their Go modules into .cache/bin/, for the chart tests:
#   helm3, helm4        Helm 3 and Helm 4           (tools/helm3, tools/helm4)
#   kube-apiserver      Kubernetes API server        (tools/kube)
#   kube-controller-manager  its controllers (Deployments, EndpointSlices) (tools/kube)
#   etcd                its store                    (tools/etcd)
# and copies what the tests install beside our chart into .cache/manifests/ (tools/manifests):
# the CRDs our optional objects need and coder's own Helm chart.
#
# Everything comes from the Go module proxy, verified against each module's go.sum. Go's own
# caches are Go's user-level defaults (GOMODCACHE, GOCACHE: `go env` tells where; an explicit
# setting is honoured), so a fresh clone on a machine that built once before is warm and only
# links. Idempotent: a binary whose module files, flags and Go
# version have not changed is not rebuilt. Prints how long each step took.
#
# Usage: tools/build.sh [manifests|helm3|helm4|etcd|kube-apiserver|kube-controller-manager]...
#   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# TOOLS_CACHE moves the outputs (binaries, manifests); default .cache/. To time a cold build,
# point GOCACHE and GOMODCACHE at empty directories as well.
CACHE="${TOOLS_CACHE:-$ROOT/.cache}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

# Never rewrite go.mod/go.sum while building, never fetch another Go toolchain; -modcacherw
# keeps the module cache deletable with rm -rf. Every module hash is pinned in go.sum, so
# builds need no checksum database at all (it is only consulted when go.sum changes).
export GOFLAGS="-mod=readonly -modcacherw -trimpath -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# build NAME MODULE_DIR PACKAGE LDFLAGS: go build PACKAGE (a `tool` of MODULE_DIR) to .cache/bin/NAME,
# unless the stamp of what went into it is unchanged.
build() {
  local name=$1 dir=$2 pkg=$3 ldflags=$4 start stamp
  start=$(now)
  stamp=$(cat "tools/$dir/go.mod" "tools/$dir/go.sum" | sha256sum | cut -c1-16)-$(go env GOVERSION)-$(printf '%s' "$pkg $ldflags $GOFLAGS" | sha256sum | cut -c1-16)
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "tools/build.sh: $name up to date ($(elapsed "$start"))"
    return
  fi
  (cd "tools/$dir" && go build -ldflags "$ldflags" -o "$BIN/$name.new" "$pkg")
  mv "$BIN/$name.new" "$BIN/$name"
  echo "$stamp" >"$BIN/$name.stamp"
  echo "tools/build.sh: built $name ($(elapsed "$start"))"
}

# The version of a module in a tools module's build list.
modver() { (cd "tools/$1" && go list -m -f '{{.Version}}' "$2"); }

helm3() {
  local v k8s
  v=$(modver helm3 helm.sh/helm/v3)
  k8s=$(modver helm3 k8s.io/client-go) # v0.37.0 -> Kubernetes 1.37
  k8s=${k8s#v0.}
  k8s=${k8s%%.*}
  # The ldflags of Helm's own release build (its Makefile): without them the binary calls
  # itself "v3.22" and assumes Kubernetes 1.20 for .Capabilities and lint's deprecation checks.
  build helm3 helm3 helm.sh/helm/v3/cmd/helm "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$v \
    -X helm.sh/helm/v3/internal/version.metadata= \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s"
}

helm4() {
  local v
  v=$(modver helm4 helm.sh/helm/v4)
  # Helm 4 reads the Kubernetes version from client-go's build info; only its own is set.
  build helm4 helm4 helm.sh/helm/v4/cmd/helm "-s -w \
    -X helm.sh/helm/v4/internal/version.version=$v \
    -X helm.sh/helm/v4/internal/version.metadata= \
    -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
}

# The ldflags Kubernetes' hack/lib/version.sh sets, so the servers report v1.37.2 (Helm reads it
# for .Capabilities.KubeVersion), not v0.0.0-master.
kube_flags() {
  local v minor flags='-s -w' key val
  v=$(modver kube k8s.io/kubernetes)
  minor=${v#v1.}
  minor=${minor%%.*}
  for kv in "gitVersion=$v" gitMajor=1 "gitMinor=$minor" gitTreeState=clean buildDate=1970-01-01T00:00:00Z; do
    key=${kv%%=*}
    val=${kv#*=}
    flags+=" -X k8s.io/client-go/pkg/version.$key=$val -X k8s.io/component-base/version.$key=$val"
  done
  printf '%s' "$flags"
}

kube_apiserver() {
  build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$(kube_flags)"
}

kube_controller_manager() {
  build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$(kube_flags)"
}

etcd() {
  build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
}

# The directory of a module pinned by tools/manifests, downloaded and verified against its go.sum.
moddir() { (cd tools/manifests && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'); }

# What the chart tests install beside our chart, copied out of the pinned modules into
# .cache/manifests/: the CRDs (crds/) and coder's own chart (coder/, libcoder/).
manifests() {
  local start po gw coder out="$CACHE/manifests"
  start=$(now)
  po=$(moddir github.com/prometheus-operator/prometheus-operator)
  gw=$(moddir sigs.k8s.io/gateway-api)
  coder=$(moddir github.com/coder/coder/v2)
  [ -d "$po" ] && [ -d "$gw" ] && [ -d "$coder" ] || { echo "tools/build.sh: manifest modules not found" >&2; exit 1; }
  rm -rf "$out.new"
  mkdir -p "$out.new/crds"
  cp "$po"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "$out.new/crds/"
  cp "$gw"/config/crd/standard/gateway.networking.k8s.io_{gatewayclasses,gateways,httproutes,referencegrants}.yaml "$out.new/crds/"
  cp -R "$coder/helm/coder" "$coder/helm/libcoder" "$out.new/"
  chmod -R u+w "$out.new"
  rm -rf "$out"
  mv "$out.new" "$out"
  echo "tools/build.sh: manifests in ${out#"$ROOT"/} ($(elapsed "$start"))"
}

main() {
  local total t targets=("$@")
  total=$(now)
  [ ${#targets[@]} -gt 0 ] || targets=(manifests helm3 helm4 etcd kube-apiserver kube-controller-manager)
  for t in "${targets[@]}"; do
    case $t in
      manifests) manifests ;;
      helm3) helm3 ;;
      helm4) helm4 ;;
      etcd) etcd ;;
      kube-apiserver) kube_apiserver ;;
      kube-controller-manager) kube_controller_manager ;;
      *) echo "tools/build.sh: unknown target $t" >&2; exit 2 ;;
    esac
  done
  echo "tools/build.sh: done ($(elapsed "$total"))"
}

# Everything above is definitions: bash has read the whole file before it builds anything, so
# editing this script during a (long) build cannot derail it.
main "$@"
