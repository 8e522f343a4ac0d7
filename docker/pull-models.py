"""Pull the models that a scenario file probes onto the local Ollama server.

Used by the one-shot `model-pull` service in docker-compose.yml (it runs in the
exporter's image, so it reads the scenario file exactly as the exporter does,
${VAR} expansion and targets included):

    python pull-models.py /etc/ollama-perf-exporter/scenarios/default.yaml --local-url http://ollama:11434

Only targets at the local URL (default $OLLAMA_HOST) are pulled onto: a server listed
elsewhere is someone else's, and is only named in the log. Models already there are
skipped; the others are pulled with progress on stdout. Best effort: a server that does
not answer or a pull that fails is logged and the others go on. Exit status: 0 when
every model is on every local target, 1 when a pull failed, 2 for a bad scenario file,
3 when a local server never answered.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional
from urllib.parse import urlsplit

from exporter.config import ConfigError, Target, load_file
from exporter.ollama import OllamaClient, OllamaError, normalize_model_name


def log(msg: str) -> None:
    print(msg, flush=True)


def wait_until_up(client: OllamaClient, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            version = client.version()
            log(f"{name}: Ollama {version} is up")
            return True
        except OllamaError as exc:
            if time.monotonic() >= deadline:
                log(f"{name}: no answer after {timeout:.0f}s: {exc.message}")
                return False
        time.sleep(1.0)


def pull(client: OllamaClient, target: Target, model: str, timeout: float) -> Optional[str]:
    """Stream /api/pull; return None on success, else the error message."""
    last_status, last_pct = None, -10
    try:
        for msg in client.control.pull(model, timeout):
            status = msg.status or ""
            total, done = msg.total, msg.completed
            pct = int(100 * done / total) if total and done is not None else None
            if status != last_status or (pct is not None and pct >= last_pct + 10):
                log(f"{target.name}: {model}: {status}" + (f" {pct}%" if pct is not None else ""))
                last_status, last_pct = status, (pct if pct is not None else -10)
            if status == "success":
                return None
    except OllamaError as exc:
        return exc.message
    return "the pull stream ended without success"


def _address(url: str) -> tuple[str, str, int]:
    """scheme, host, port; a URL without a port means Ollama's 11434, as in the exporter's config."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.scheme or "http", (parts.hostname or "").lower(), parts.port or 11434


def is_local(target: Target, local_url: str) -> bool:
    """The same server as local_url: scheme, host and port equal (Ollama's default port 11434)."""
    return _address(target.url) == _address(local_url)


def pull_target(client: OllamaClient, target: Target, models: set[str], args: argparse.Namespace) -> int:
    """Pull what is missing on one target; 0 ok, 1 a pull failed, 3 no answer."""
    name = target.name
    if not wait_until_up(client, name, args.wait):
        return 3
    try:
        present = client.control.local_models()
    except OllamaError as exc:
        log(f"{name}: cannot list models: {exc.message}")
        return 3
    status = 0
    for model in sorted(models):
        if normalize_model_name(model) in present:
            log(f"{name}: {model}: already present")
            continue
        log(f"{name}: {model}: pulling")
        error = pull(client, target, model, args.timeout)
        if error:
            log(f"{name}: {model}: pull failed: {error}")
            status = 1
        else:
            log(f"{name}: {model}: ready")
    return status


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="scenario YAML (default: the scenarios shipped with the exporter)")
    p.add_argument("--wait", type=float, default=float(os.environ.get("PULL_WAIT_SECONDS", 120)),
                   help="how long to wait for each server to answer (default 120s)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("PULL_TIMEOUT_SECONDS", 600)),
                   help="socket timeout of one pull (default 600s)")
    p.add_argument("--local-url", default=os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434",
                   help="pull only onto targets at this URL (default $OLLAMA_HOST)")
    args = p.parse_args(argv)
    try:
        config = load_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    wanted: dict[str, tuple[Target, set[str]]] = {}
    for scenario in config.scenarios:
        for target in scenario.targets:
            wanted.setdefault(target.name, (target, set()))[1].add(scenario.model)
    worst = 0
    for name, (target, models) in wanted.items():
        if not is_local(target, args.local_url):
            log(f"{name}: not the local server ({args.local_url}): not pulled onto; needs {', '.join(sorted(models))}")
            continue
        # The target's own credentials (auth:) go with every call, like the exporter's.
        worst = max(worst, pull_target(OllamaClient(target), target, models, args))
    return worst


if __name__ == "__main__":
    sys.exit(main())
