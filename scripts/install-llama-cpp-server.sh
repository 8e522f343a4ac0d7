#!/usr/bin/env bash
# llama-cpp-python's OpenAI-compatible server, a second real engine for the tests, built once per
# machine. Prints the Python that runs it (`python -m llama_cpp.server`) on the last line of stdout.
#
# PyPI has only the sdist for Linux, and building it compiles llama.cpp (several minutes on two
# busy cores), so the wheel is built once into the cache and reused. The build uses
# -march=native (GGML_NATIVE), which binds the wheel to this CPU: the cache key holds the version,
# the Python tag, the CPU's flags and the CMake arguments, so a wheel built for another CPU or
# Python is rebuilt, and an old one is replaced.
#
# The server runs in a venv of its own beside the wheel, not in the project's: it is an engine
# under test, like the Ollama binary, and its dependencies (fastapi, uvicorn, pydantic-settings)
# must not move the exporter's.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF}"
CACHE_DIR="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}"

py_tag=$("$PYTHON" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{sysconfig.get_platform()}")')
cpu_flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
KEY=$(printf '%s|%s|%s|%s' "$VERSION" "$py_tag" "$cpu_flags" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
WHEEL_DIR="$CACHE_DIR/wheels/llama-cpp-python-$VERSION-$py_tag-$KEY"
VENV="$CACHE_DIR/llama-cpp-server-$VERSION-$py_tag-$KEY"
SERVER_PY="$VENV/bin/python"

works() {
    [[ -x "$SERVER_PY" ]] && "$SERVER_PY" -c "import llama_cpp, llama_cpp.server.app as _; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null
}

if works; then
    echo "llama-cpp-python $VERSION: cached at $VENV" >&2
    echo "$SERVER_PY"
    exit 0
fi

mkdir -p "$CACHE_DIR/wheels"
# The server's venv first: its pip also builds the wheel (the system Python may have no pip).
for old in "$CACHE_DIR"/llama-cpp-server-*/; do
    [[ -d "$old" && "$old" != "$VENV/" ]] && rm -rf "$old"
done
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$SERVER_PY" -m pip install -q --upgrade pip >&2

# Wheels of other versions, Pythons or CPUs are stale here.
for old in "$CACHE_DIR"/wheels/llama-cpp-python-*/; do
    [[ -d "$old" && "$old" != "$WHEEL_DIR/" ]] && rm -rf "$old"
done
wheel=$(ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
    for tool in gcc g++ cmake; do
        command -v "$tool" >/dev/null || { echo "install-llama-cpp-server: $tool is needed (make system-deps)" >&2; exit 1; }
    done
    echo "llama-cpp-python $VERSION: building the wheel from its sdist ($LLAMA_CMAKE_ARGS) into $WHEEL_DIR (several minutes)" >&2
    tmp=$(mktemp -d "$CACHE_DIR/wheels/build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    start=$(date +%s)
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$SERVER_PY" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION" >&2
    mkdir -p "$WHEEL_DIR"
    mv "$tmp"/llama_cpp_python-*.whl "$WHEEL_DIR"/
    echo "llama-cpp-python $VERSION: wheel built in $(( $(date +%s) - start )) s" >&2
    wheel=$(ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi

"$SERVER_PY" -m pip install -q "$wheel[server]" >&2
works || { echo "install-llama-cpp-server: the server does not import from $VENV" >&2; exit 1; }
echo "llama-cpp-python $VERSION: installed in $VENV" >&2
echo "$SERVER_PY"
