#!/usr/bin/env bash
# Build Ollama from its Go module into a cache outside the repo, once per machine.
#
# v0.11.4 is the last release whose CPU backend compiles with Go alone (cgo, no cmake);
# see docs/architecture.md. The version is stamped so /api/version answers it.
# Prints the binary's path on the last line of stdout.
#
# cgo compiles llama.cpp's CPU backend with no optimisation flags by default: prefill of
# SmolLM2-135M ran at ~31 tok/s that way and ~300 tok/s with -O3 -march=native (decode
# 22.7 -> 96 tok/s). -march=native binds the binary to this CPU, so the cache directory
# is keyed by version, flags and CPU model: a build made elsewhere or with other flags is
# never reused, and an old one is replaced.
set -euo pipefail

OLLAMA_VERSION="${OLLAMA_VERSION:-0.11.4}"
OLLAMA_CFLAGS="${OLLAMA_CFLAGS:--O3 -march=native}"
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"
cpu_model=$(grep -m1 -E '^(model name|cpu model|Processor)' /proc/cpuinfo 2>/dev/null || uname -m)
BUILD_KEY=$(printf '%s|%s|%s|%s' "$OLLAMA_VERSION" "$OLLAMA_CFLAGS" "$cpu_model" "$(uname -m)" | sha256sum | cut -c1-12)
BIN_DIR="$CACHE_DIR/ollama-$OLLAMA_VERSION-$BUILD_KEY/bin"
BIN="$BIN_DIR/ollama"

check_binary() {
    # `ollama --version` without a server prints a warning plus "client version is X".
    local out
    out=$("$1" --version 2>&1 || true)
    grep -q "$OLLAMA_VERSION" <<<"$out"
}

if [[ -x "$BIN" ]] && check_binary "$BIN"; then
    echo "ollama $OLLAMA_VERSION: cached at $BIN" >&2
    echo "$BIN"
    exit 0
fi

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install-ollama: Go is not installed (need Go >= 1.24 on PATH to build Ollama $OLLAMA_VERSION)" >&2
    exit 1
fi
if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    echo "install-ollama: gcc and g++ are needed (cgo compiles llama.cpp); apt-get install build-essential" >&2
    exit 1
fi

echo "ollama $OLLAMA_VERSION: building with $(go version), CFLAGS '$OLLAMA_CFLAGS', into $BIN_DIR (several minutes on 2 cores)" >&2
# Builds of other versions, flags or CPUs are stale here: remove them.
for old in "$CACHE_DIR"/ollama-*/; do
    [[ -d "$old" && "$old" != "$CACHE_DIR/ollama-$OLLAMA_VERSION-$BUILD_KEY/" ]] && rm -rf "$old"
done
mkdir -p "$BIN_DIR"
start=$(date +%s)
tmp_gobin=$(mktemp -d "$CACHE_DIR/gobin.XXXXXX")
trap 'rm -rf "$tmp_gobin"' EXIT
if ! CGO_ENABLED=1 CGO_CFLAGS="$OLLAMA_CFLAGS" CGO_CXXFLAGS="$OLLAMA_CFLAGS" GOBIN="$tmp_gobin" GOFLAGS="-buildvcs=false" go install \
        -ldflags "-X github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" \
        "github.com/ollama/ollama@v$OLLAMA_VERSION"; then
    echo "install-ollama: 'go install github.com/ollama/ollama@v$OLLAMA_VERSION' failed (see above)" >&2
    exit 1
fi
# Move into place only when complete, so an interrupted build never looks cached.
mv -f "$tmp_gobin/ollama" "$BIN"
if ! check_binary "$BIN"; then
    echo "install-ollama: built binary does not report version $OLLAMA_VERSION:" >&2
    "$BIN" --version >&2 || true
    exit 1
fi
echo "ollama $OLLAMA_VERSION: built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
