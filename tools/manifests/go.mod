// What the chart tests install beside our chart, from the modules that publish it; no Go code
// imports these modules, so `go mod tidy` would drop the requirements: do not tidy this module.
// tools/build.sh copies the files out of the module cache (go mod download verifies them
// against go.sum) into .cache/manifests/.
module coder-reinit-guard/tools/manifests

go 1.26.4

require (
	// coder's own Helm chart (helm/coder, helm/libcoder), the release our chart installs beside;
	// 2.34.3 is the release the fidelity harness runs.
	github.com/coder/coder/v2 v2.34.3
	// ServiceMonitor and PrometheusRule CRDs: example/prometheus-operator-crd/.
	github.com/prometheus-operator/prometheus-operator v0.90.1
	// Gateway API CRDs (Gateway, GatewayClass, HTTPRoute, ReferenceGrant): config/crd/standard/.
	// v1.6.3 is the newest that builds with Go 1.26 (v1.7.0 needs Go 1.27).
	sigs.k8s.io/gateway-api v1.6.3
)
