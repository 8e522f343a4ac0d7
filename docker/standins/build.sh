#!/usr/bin/env bash
# Build stand-ins for the upstream images that docker-compose.yml and the Dockerfile name, under
# the same names and tags, in the engine at $DOCKER_HOST (the stack test's own dockerd).
#
# No image registry is reachable from the test machine, so each stand-in starts from a Debian
# bookworm root filesystem (debootstrap, then `docker import`) and gets what the compose file
# relies on in the upstream image: binary paths, entrypoint, user, data path, and the programs
# the healthchecks call. Ollama is the build of scripts/install-ollama.sh, laid out as in the
# upstream image: bin/ollama at /usr/bin/ollama and the lib/ollama/ beside it (0.30 and later:
# llama-server, llama-quantize and the GGML libraries the model runner loads) at
# /usr/lib/ollama, where Ollama looks for them (<dir of the executable>/../lib/ollama);
# Prometheus and Alertmanager are the Go-built releases from scripts/install-prometheus.sh, at
# the versions of the image tags. Then our own Dockerfile builds the exporter image on the
# Python stand-in.
#
# Usage: DOCKER_HOST=unix:///... docker/standins/build.sh OLLAMA_BIN
# OLLAMA_BIN is the build's bin/ollama; it must be the release the compose file's tag names.
# Env: OLLAMA_PERF_CACHE (default ~/.cache/ollama-perf-exporter), PYTHON (makes the wheelhouse).
# Inputs are cached under $CACHE/stack, keyed by what they are made of: a changed package list,
# mirror, pyproject.toml, binary or library makes a new one, and stale ones are removed.
set -euo pipefail

OLLAMA_BIN="${1:?usage: build.sh OLLAMA_BIN}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${OLLAMA_PERF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-perf-exporter}/stack"
PYTHON="${PYTHON:-python3}"
SUITE=bookworm
PACKAGES=busybox,python3,python3-pip,python3-venv,libstdc++6,libgomp1,ca-certificates
mkdir -p "$CACHE"

log() { echo "standins: $*" >&2; }
# Debian's client, next to the Debian dockerd the test runs, when there is one.
DOCKER_CLI=$( [[ -x /usr/bin/docker ]] && echo /usr/bin/docker || command -v docker )
docker() { "$DOCKER_CLI" "$@"; }
key() { sha256sum | cut -c1-12; }

# The image references, read from the files users run, so the stand-ins follow their pins.
image_of() { grep -oE "^\s+image: $1:\S+" "$ROOT/docker-compose.yml" | head -1 | awk '{print $2}'; }
OLLAMA_IMAGE=$(image_of 'ollama/ollama')
PROMETHEUS_IMAGE=$(image_of 'prom/prometheus')
ALERTMANAGER_IMAGE=$(image_of 'prom/alertmanager')
PYTHON_IMAGE=$(grep -m1 -oE '^FROM \S+' "$ROOT/Dockerfile" | awk '{print $2}')
for v in OLLAMA_IMAGE PROMETHEUS_IMAGE ALERTMANAGER_IMAGE PYTHON_IMAGE; do
    [[ -n "${!v}" ]] || { log "cannot find $v in docker-compose.yml / Dockerfile"; exit 1; }
done

# The Debian mirror apt already uses on this machine.
mirror() {
    local m
    m=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# ---- the root filesystem: debootstrap once, cached as a tarball
MIRROR=$(mirror)
ROOTFS_KEY=$(printf '%s|%s|%s|minbase|1' "$SUITE" "$PACKAGES" "$MIRROR" | key)
ROOTFS="$CACHE/rootfs-$SUITE-$ROOTFS_KEY.tar"
if [[ ! -s "$ROOTFS" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (make system-deps)"; exit 1; }
    if ! (command -v curl >/dev/null && curl -fsS -o /dev/null --max-time 20 "$MIRROR/dists/$SUITE/Release") \
        && ! (command -v wget >/dev/null && wget -q -O /dev/null --timeout=20 "$MIRROR/dists/$SUITE/Release"); then
        log "the Debian mirror $MIRROR is not reachable: cannot make the root filesystem"; exit 1
    fi
    log "debootstrap $SUITE from $MIRROR (a minute or two)"
    tmp=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/root" "$MIRROR" >"$tmp/log" 2>&1 \
        || { tail -20 "$tmp/log" >&2; exit 1; }
    rm -rf "$tmp/root"/var/cache/apt/archives/*.deb "$tmp/root"/var/lib/apt/lists/*
    tar -C "$tmp/root" --numeric-owner -cf "$tmp/rootfs.tar" .
    mv "$tmp/rootfs.tar" "$ROOTFS"
    rm -rf "$tmp"; trap - EXIT
    find "$CACHE" -maxdepth 1 -name "rootfs-*.tar" ! -name "$(basename "$ROOTFS")" -delete
fi

have_image() {  # name:tag built from inputs with this key
    [[ "$(docker image inspect -f '{{index .Config.Labels "ope.standin.key"}}' "$1" 2>/dev/null || true)" == "$2" ]]
}

BASE=ope-standin/debian-base
if ! have_image "$BASE" "$ROOTFS_KEY"; then
    log "importing $(basename "$ROOTFS") as $BASE"
    docker import -c "LABEL ope.standin.key=$ROOTFS_KEY" -c 'CMD ["bash"]' "$ROOTFS" "$BASE" >/dev/null
fi

# build NAME:TAG DOCKERFILE CONTEXT KEY
build() {
    if have_image "$1" "$4"; then log "$1: up to date"; return; fi
    log "$1: building"
    docker build -q --network none --label "ope.standin.key=$4" -t "$1" -f "$2" "$3" >/dev/null
}

context() {  # a build folder in the cache named by its key; old ones of the same kind removed
    local dir="$CACHE/context-$1-$2"
    find "$CACHE" -maxdepth 1 -name "context-$1-*" ! -name "context-$1-$2" -exec rm -rf {} +
    mkdir -p "$dir"
    echo "$dir"
}

# ---- Ollama: the binary and its lib/ollama, found as Ollama finds it (beside the executable,
# symlinks resolved). A single-file build (0.11.x) has none; the image then gets an empty one.
OLLAMA_EXE=$(readlink -f "$OLLAMA_BIN")
[[ -x "$OLLAMA_EXE" ]] || { log "$OLLAMA_BIN is not an executable"; exit 1; }
OLLAMA_LIB="$(cd "$(dirname "$OLLAMA_EXE")/.." && pwd)/lib/ollama"
# The tag names a release: the stand-in must run that one. (No server at port 1: the client's
# own version is printed, never a running server's.)
ollama_version=$( (OLLAMA_HOST=127.0.0.1:1 "$OLLAMA_EXE" --version 2>&1 || true) | grep -oE 'version is \S+' | tail -1 | awk '{print $3}' || true)
if [[ "$ollama_version" != "${OLLAMA_IMAGE##*:}" ]]; then
    log "$OLLAMA_BIN is Ollama '${ollama_version}', but docker-compose.yml pins $OLLAMA_IMAGE"; exit 1
fi
if [[ ! -x "$OLLAMA_LIB/llama-server" ]] && [[ "$(printf '%s\n' 0.30.0 "$ollama_version" | sort -V | head -1)" == 0.30.0 ]]; then
    log "Ollama $ollama_version runs models in lib/ollama/llama-server, which $OLLAMA_LIB lacks"; exit 1
fi
ollama_inputs() {  # the binary's content; each entry of lib/ollama by type, mode, path, link target and content
    sha256sum "$OLLAMA_EXE" | cut -d' ' -f1
    [[ -d "$OLLAMA_LIB" ]] || return 0
    (cd "$OLLAMA_LIB" && find . -printf '%y %m %p %l\n' | LC_ALL=C sort \
        && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
}
k=$( (echo "$ROOTFS_KEY"; sha256sum "$HERE/ollama.Dockerfile" | cut -d' ' -f1; ollama_inputs) | key)
if ! have_image "$OLLAMA_IMAGE" "$k"; then
    ctx=$(context ollama "$k")
    if [[ ! -f "$ctx/.complete" ]]; then
        rm -rf "$ctx/ollama" "$ctx/lib"
        mkdir -p "$ctx/lib/ollama"
        cp "$OLLAMA_EXE" "$ctx/ollama"
        # -a: the libraries' version symlinks stay symlinks.
        [[ ! -d "$OLLAMA_LIB" ]] || cp -a "$OLLAMA_LIB/." "$ctx/lib/ollama/"
        touch "$ctx/.complete"
    fi
    build "$OLLAMA_IMAGE" "$HERE/ollama.Dockerfile" "$ctx" "$k"
fi

# ---- Prometheus and Alertmanager: built at the versions of the image tags (cached after the
# first build), so a stand-in never runs another version than its tag names.
PROM_BIN_DIR=$(env -u PROMETHEUS_VERSION -u ALERTMANAGER_VERSION "$ROOT/scripts/install-prometheus.sh" | tail -1)
for app in prometheus alertmanager; do
    if [[ $app == prometheus ]]; then bins=("$PROM_BIN_DIR/prometheus" "$PROM_BIN_DIR/promtool"); image=$PROMETHEUS_IMAGE
    else bins=("$PROM_BIN_DIR/alertmanager" "$PROM_BIN_DIR/amtool"); image=$ALERTMANAGER_IMAGE; fi
    for b in "${bins[@]}"; do [[ -x $b ]] || { log "$b is missing (scripts/install-prometheus.sh)"; exit 1; }; done
    k=$( (echo "$ROOTFS_KEY"; sha256sum "${bins[@]}" "$HERE/$app.Dockerfile" | cut -d' ' -f1) | key)
    if ! have_image "$image" "$k"; then
        ctx=$(context "$app" "$k")
        cp "${bins[@]}" "$ctx/"
        build "$image" "$HERE/$app.Dockerfile" "$ctx" "$k"
    fi
done

# ---- Python, with a wheelhouse for what pyproject.toml needs (no package index in the engine)
k=$( (echo "$ROOTFS_KEY"; sha256sum "$ROOT/pyproject.toml" "$HERE/python.Dockerfile" | cut -d' ' -f1) | key)
if ! have_image "$PYTHON_IMAGE" "$k"; then
    ctx=$(context python "$k")
    if [[ ! -f "$ctx/wheelhouse/.complete" ]]; then
        log "wheelhouse for pyproject.toml"
        rm -rf "$ctx/wheelhouse"
        # The dependencies and the build backend, not the project: the Dockerfile builds that.
        mapfile -t reqs < <("$PYTHON" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(p["project"]["dependencies"] + p["project"]["optional-dependencies"]["report"] + p["build-system"]["requires"]))' "$ROOT/pyproject.toml")
        "$PYTHON" -m pip wheel -q --wheel-dir "$ctx/wheelhouse" "${reqs[@]}" wheel >&2
        touch "$ctx/wheelhouse/.complete"
    fi
    build "$PYTHON_IMAGE" "$HERE/python.Dockerfile" "$ctx" "$k"
fi

# Stand-ins under tags the files no longer pin (an older release) go; then images a rebuild
# replaced are dangling: the engine's store keeps only the current ones.
for image in "$OLLAMA_IMAGE" "$PROMETHEUS_IMAGE" "$ALERTMANAGER_IMAGE" "$PYTHON_IMAGE"; do
    docker image ls --format '{{.Repository}}:{{.Tag}}' "${image%:*}" | while read -r old; do
        if [[ "$old" != "$image" && "$old" != *'<none>'* ]]; then
            log "removing $old (no longer pinned)"
            docker image rm "$old" >/dev/null 2>&1 || log "$old is still in use: kept"
        fi
    done
done
docker image prune -f >/dev/null
log "ready: $OLLAMA_IMAGE $PROMETHEUS_IMAGE $ALERTMANAGER_IMAGE $PYTHON_IMAGE"
