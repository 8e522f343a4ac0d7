#!/usr/bin/env bash
# Build the Prometheus Operator's config reloader (the Helm chart's config-watcher sidecar image
# runs this program) from its Go module into a cache outside the repo, once per machine, so the
# tests can run the very program that watches the scenario ConfigMap and POSTs /-/reload.
# Prints the binary's path on stdout.
#
# `go install ...@version` refuses the module (its go.mod replaces two of its nested modules
# with local directories, which module zips leave out): build a copy of the module with those
# two replaced by their published versions instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-0.85.0}"
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"
BIN_DIR="$CACHE_DIR/prometheus-config-reloader-$OPERATOR_VERSION/bin"
BIN="$BIN_DIR/prometheus-config-reloader"

if [[ -x "$BIN" ]]; then
    echo "prometheus-config-reloader $OPERATOR_VERSION: cached at $BIN" >&2
    echo "$BIN"
    exit 0
fi
require_go install-config-reloader "Go on PATH to build prometheus-config-reloader $OPERATOR_VERSION"
module="github.com/prometheus-operator/prometheus-operator"
src=$(go mod download -json "$module@v$OPERATOR_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
work=$(mktemp -d "${TMPDIR:-/tmp}/config-reloader.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
(
    cd "$work"
    go mod edit -dropreplace="$module/pkg/apis/monitoring" -dropreplace="$module/pkg/client"
    mkdir -p "$BIN_DIR"
    echo "prometheus-config-reloader $OPERATOR_VERSION: building with $(go version) into $BIN_DIR" >&2
    GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0 go build -o "$BIN.tmp" ./cmd/prometheus-config-reloader
    mv -f "$BIN.tmp" "$BIN"
)
echo "$BIN"
