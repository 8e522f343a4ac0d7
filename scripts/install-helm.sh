#!/usr/bin/env bash
# Build Helm from its Go module into a cache outside the repo, once per machine, and fetch the
# Prometheus Operator module whose example/prometheus-operator-crd/ holds the CRDs the chart's
# ServiceMonitor and PrometheusRule are validated against.
# Prints two lines on stdout: the helm binary's path, then the CRD directory.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

HELM_VERSION="${HELM_VERSION:-3.22.0}"
OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-0.85.0}"
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"
BIN_DIR="$CACHE_DIR/helm-$HELM_VERSION/bin"
BIN="$BIN_DIR/helm"

require_go install-helm "Go on PATH to build Helm $HELM_VERSION"

if [[ -x "$BIN" ]] && "$BIN" version --short 2>/dev/null | grep -q "v$HELM_VERSION"; then
    echo "helm $HELM_VERSION: cached at $BIN" >&2
else
    echo "helm $HELM_VERSION: building with $(go version) into $BIN_DIR" >&2
    for old in "$CACHE_DIR"/helm-*/; do
        [[ -d "$old" && "$old" != "$CACHE_DIR/helm-$HELM_VERSION/" ]] && rm -rf "$old"
    done
    mkdir -p "$BIN_DIR"
    tmp_gobin=$(mktemp -d "$CACHE_DIR/gobin.XXXXXX")
    trap 'rm -rf "$tmp_gobin"' EXIT
    # The version is stamped the way Helm's Makefile does it, so `helm version` tells the truth.
    if ! GOBIN="$tmp_gobin" GOFLAGS="-buildvcs=false" CGO_ENABLED=0 go install \
            -ldflags "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
            "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"; then
        echo "install-helm: 'go install helm.sh/helm/v3/cmd/helm@v$HELM_VERSION' failed (see above)" >&2
        exit 1
    fi
    mv -f "$tmp_gobin/helm" "$BIN"
fi

# The module cache keeps the download; -json names its directory.
crd_module=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@v$OPERATOR_VERSION" \
    | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
CRD_DIR="$crd_module/example/prometheus-operator-crd"
if [[ ! -f "$CRD_DIR/monitoring.coreos.com_servicemonitors.yaml" ]]; then
    echo "install-helm: no ServiceMonitor CRD under $CRD_DIR" >&2
    exit 1
fi
echo "$BIN"
echo "$CRD_DIR"
