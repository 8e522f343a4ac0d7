#!/usr/bin/env bash
# Build Prometheus 3 (prometheus, promtool) and Alertmanager (alertmanager, amtool) from their Go
# modules into a cache outside the repo, once per machine. The tests run these, at the versions
# docker-compose.yml pins (PROMETHEUS_VERSION / ALERTMANAGER_VERSION override), instead of
# Debian's older packages.
#
# Prometheus module versions v0.3xx.y are Prometheus 3.xx.y. The version is stamped into
# github.com/prometheus/common/version, which is empty in a plain `go install` build, so
# `--version` and prometheus_build_info tell the truth. The web UI assets are not part of this
# build (the tests use the API only).
#
# The cache directory is keyed by both versions and the Go toolchain, so a build made with other
# versions or another Go is never reused, and an old one is replaced.
# Prints the bin directory (holding all four binaries) on the last line of stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The versions docker-compose.yml pins, so the tests run what the stack runs.
pin() { grep -m1 -oE "^\s+image: $1:v[0-9][^[:space:]]*" "$ROOT/docker-compose.yml" | sed -E 's/.*:v//'; }
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-$(pin prom/prometheus)}"
ALERTMANAGER_VERSION="${ALERTMANAGER_VERSION:-$(pin prom/alertmanager)}"
if [[ -z "$PROMETHEUS_VERSION" || -z "$ALERTMANAGER_VERSION" ]]; then
    echo "install-prometheus: cannot read the prom/prometheus and prom/alertmanager pins from docker-compose.yml" >&2
    exit 1
fi
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"

require_go install-prometheus "Go on PATH to build Prometheus $PROMETHEUS_VERSION"

# Prometheus 3.x.y is published as module version v0.3xx.y (3.16.0 -> v0.316.0).
IFS=. read -r prom_major prom_minor prom_patch <<<"$PROMETHEUS_VERSION"
if [[ "$prom_major" != 3 || -z "$prom_minor" || -z "$prom_patch" ]]; then
    echo "install-prometheus: PROMETHEUS_VERSION must be 3.x.y, got '$PROMETHEUS_VERSION'" >&2
    exit 1
fi
PROMETHEUS_MODULE_VERSION=$(printf 'v0.3%02d.%s' "$prom_minor" "$prom_patch")

go_version=$(go env GOVERSION)
BUILD_KEY=$(printf '%s|%s|%s|%s' "$PROMETHEUS_VERSION" "$ALERTMANAGER_VERSION" "$go_version" "$(uname -m)" | sha256sum | cut -c1-12)
BIN_DIR="$CACHE_DIR/prometheus-$PROMETHEUS_VERSION-$BUILD_KEY/bin"

# `prometheus --version` prints "prometheus, version 3.16.0 (branch: ..., revision: ...)".
reports_version() {
    local out
    out=$("$1" --version 2>&1 || true)
    grep -q "version $2 " <<<"$out"
}

cached() {
    reports_version "$BIN_DIR/prometheus" "$PROMETHEUS_VERSION" &&
        reports_version "$BIN_DIR/promtool" "$PROMETHEUS_VERSION" &&
        reports_version "$BIN_DIR/alertmanager" "$ALERTMANAGER_VERSION" &&
        reports_version "$BIN_DIR/amtool" "$ALERTMANAGER_VERSION"
}

if cached; then
    echo "prometheus $PROMETHEUS_VERSION, alertmanager $ALERTMANAGER_VERSION: cached in $BIN_DIR" >&2
    echo "$BIN_DIR"
    exit 0
fi

echo "prometheus $PROMETHEUS_VERSION ($PROMETHEUS_MODULE_VERSION), alertmanager $ALERTMANAGER_VERSION:" \
    "building with $go_version into $BIN_DIR (about 12 minutes on 2 cores)" >&2
# Builds of other versions or another Go are stale here: remove them. Only our own
# prometheus-<version>-<key> folders: prometheus-config-reloader-<version> shares the prefix.
for old in "$CACHE_DIR"/prometheus-[0-9]*-*/; do
    [[ -d "$old" && "$old" != "$CACHE_DIR/prometheus-$PROMETHEUS_VERSION-$BUILD_KEY/" ]] && rm -rf "$old"
done
mkdir -p "$BIN_DIR"
start=$(date +%s)
tmp_gobin=$(mktemp -d "$CACHE_DIR/gobin.XXXXXX")
trap 'rm -rf "$tmp_gobin"' EXIT
stamp="-X github.com/prometheus/common/version.Version"

if ! GOBIN="$tmp_gobin" GOFLAGS="-buildvcs=false" CGO_ENABLED=0 go install \
        -ldflags "$stamp=$PROMETHEUS_VERSION" \
        "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" \
        "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"; then
    echo "install-prometheus: 'go install github.com/prometheus/prometheus/cmd/...@$PROMETHEUS_MODULE_VERSION' failed (see above)" >&2
    exit 1
fi
echo "prometheus $PROMETHEUS_VERSION: built in $(( $(date +%s) - start ))s" >&2
am_start=$(date +%s)
# Alertmanager's module zip lacks its web UI bundle (ui/app/dist, built by npm in a release and
# embedded with go:embed), so `go install ...@version` fails. Build from a copy of the module
# with an empty placeholder page there instead: the API, which is all the tests use, is intact.
am_module=$(go mod download -json "github.com/prometheus/alertmanager@v$ALERTMANAGER_VERSION" \
    | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
if [[ ! -f "$am_module/go.mod" ]]; then
    echo "install-prometheus: 'go mod download github.com/prometheus/alertmanager@v$ALERTMANAGER_VERSION' failed (see above)" >&2
    exit 1
fi
am_src="$tmp_gobin/alertmanager-src"
cp -r "$am_module" "$am_src"
chmod -R u+w "$am_src"
for ui in elm mantine; do
    if [[ ! -e "$am_src/ui/app/dist/$ui" ]]; then
        mkdir -p "$am_src/ui/app/dist/$ui"
        echo "<!doctype html><title>Alertmanager</title><p>The web UI is not part of this build; the API is." \
            >"$am_src/ui/app/dist/$ui/index.html"
    fi
done
if ! (cd "$am_src" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 go build \
        -ldflags "$stamp=$ALERTMANAGER_VERSION" -o "$tmp_gobin/" ./cmd/alertmanager ./cmd/amtool); then
    echo "install-prometheus: building github.com/prometheus/alertmanager/cmd/...@v$ALERTMANAGER_VERSION failed (see above)" >&2
    exit 1
fi
echo "alertmanager $ALERTMANAGER_VERSION: built in $(( $(date +%s) - am_start ))s" >&2

# Move into place only when complete, so an interrupted build never looks cached.
for bin in prometheus promtool alertmanager amtool; do
    mv -f "$tmp_gobin/$bin" "$BIN_DIR/$bin"
done
if ! cached; then
    echo "install-prometheus: built binaries do not report the expected versions:" >&2
    for bin in prometheus promtool alertmanager amtool; do
        "$BIN_DIR/$bin" --version >&2 || true
    done
    exit 1
fi
echo "$BIN_DIR"
