"""Pull every model that a scenario file probes, before the exporter starts probing.

Used by the one-shot `model-pull` service in docker-compose.yml (it runs in the
exporter's image, so it reads the scenario file exactly as the exporter does,
${VAR} expansion and targets included):

    python pull-models.py /etc/ollama-perf-exporter/scenarios/default.yaml

For each target, models already on the server are skipped; the others are pulled
with progress on stdout. Exit status: 0 when every model is there, 1 when a pull
failed, 2 for a bad scenario file, 3 when a server never answered.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

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


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="scenario YAML (default: the scenarios shipped with the exporter)")
    p.add_argument("--wait", type=float, default=float(os.environ.get("PULL_WAIT_SECONDS", 120)),
                   help="how long to wait for each server to answer (default 120s)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("PULL_TIMEOUT_SECONDS", 600)),
                   help="socket timeout of one pull (default 600s)")
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
    failed = False
    for name, (target, models) in wanted.items():
        client = OllamaClient(target)
        if not wait_until_up(client, name, args.wait):
            return 3
        try:
            present = client.control.local_models()
        except OllamaError as exc:
            log(f"{name}: cannot list models: {exc.message}")
            return 3
        for model in sorted(models):
            if normalize_model_name(model) in present:
                log(f"{name}: {model}: already present")
                continue
            log(f"{name}: {model}: pulling")
            error = pull(client, target, model, args.timeout)
            if error:
                log(f"{name}: {model}: pull failed: {error}")
                failed = True
            else:
                log(f"{name}: {model}: ready")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
