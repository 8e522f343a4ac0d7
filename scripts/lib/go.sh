# Sourced by the install scripts that build from Go modules (Ollama, Prometheus, Helm, the config
# reloader): one place for where Go is looked for and what a missing Go says.

# Go on PATH, or the upstream tarball's /usr/local/go/bin (not on PATH in a non-login shell).
find_go() {
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        export PATH="$PATH:/usr/local/go/bin"
    fi
}

# require_go SCRIPT NEED: find Go, or stop with "SCRIPT: Go is not installed (need NEED)".
require_go() {
    find_go
    if ! command -v go >/dev/null 2>&1; then
        echo "$1: Go is not installed (need $2)" >&2
        exit 1
    fi
}
