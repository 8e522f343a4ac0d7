#!/usr/bin/env python3
"""Record a noise trace from a real Ollama for `make alert-eval` (tests/data/traces/).

Starts the current Ollama build with smollm2-135m on a free loopback port, runs the exporter
against it with the default scenario's three cases on a short schedule, optionally with another
client decoding nonstop (`--busy`: the probes queue behind it, as on a shared server), and writes
one CSV row per successful warm request: seconds since the start, case, time to first token,
request duration and decode tokens/s. Nothing of the prompt or answer is kept.

    taskset -c 0 python scripts/record_trace.py --threads 1 --minutes 120 \
        --out tests/data/traces/ollama-0.33.1-quiet.csv
    taskset -c 1 python scripts/record_trace.py --threads 1 --minutes 75 --busy \
        --out tests/data/traces/ollama-0.33.1-busy.csv
    taskset -c 1 python scripts/record_trace.py --threads 1 --minutes 120 --busy --append \
        --out tests/data/traces/ollama-0.33.1-busy.csv

(the checked-in traces; the other core ran alert evaluations meanwhile. The busy trace is two
sessions under an hour apart, 3 h 15 min in all: `--append` continues a trace one interval after
its last request. The second session's server ran about 5 % faster, as a real one does from hour
to hour.)

`--threads` sets the model's num_thread: pinned to fewer cores than the machine has, llama.cpp's
default (one thread per physical core) spins threads on a core they share and a 13-token prompt
takes minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # noqa: E402

from exporter.config_types import parse_duration  # noqa: E402
from tests.kit.exporters import free_port, stop_process  # noqa: E402
from tests.kit.real_ollama import MODEL, OllamaServer, keep_decoding, ollama_binary  # noqa: E402

CASES = {
    "short": "What is AI?",
    "medium": "Explain the concept of machine learning in simple terms, including how a model learns from "
              "examples, what training and inference mean, and one everyday example.",
    "long": "Describe the architecture of a transformer neural network in detail. Cover token embeddings and "
            "positional encodings, multi-head self-attention, the feed-forward blocks, and why a key-value "
            "cache makes generation faster.",
}


def write_csv(results: Path, out: Path, append: bool = False, interval_s: float = 15.0) -> int:
    """The warm requests of a results file as trace rows; with append, after the rows `out` holds
    (one interval after its last request). Returns the rows written in this session."""
    rows = []
    kept: list = []
    if append and out.exists():
        with open(out) as f:
            kept = [tuple(r.values()) for r in csv.DictReader(f)]
    shift = float(kept[-1][0]) + interval_s if kept else 0.0
    t0 = None
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") or not r.get("ok") or r.get("start") != "warm":
                continue
            t0 = r["started_at"] if t0 is None else t0
            tps = r["eval_count"] / r["eval_duration_s"] if r.get("eval_count") and r.get("eval_duration_s") else ""
            rows.append((round(r["started_at"] - t0 + shift, 3), r["case"], round(r["ttft_s"], 6),
                         round(r["request_duration_s"], 6), round(tps, 3) if tps else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "case", "ttft_s", "request_duration_s", "tokens_per_s"))
        w.writerows(kept)
        w.writerows(rows)
    return len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--interval", default="15s")
    ap.add_argument("--busy", action="store_true", help="another client decodes nonstop meanwhile")
    ap.add_argument("--threads", type=int, help="num_thread of the model (default: the server's choice)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--append", action="store_true", help="continue the trace in --out (another session)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trace-"))
    server = OllamaServer(ollama_binary(), str(work / "models"), free_port(), str(work / "ollama.log"))
    os.makedirs(server.models_dir)
    stop = threading.Event()
    exporter = None
    try:
        server.start()
        server.create_model()
        extra = {"num_thread": args.threads} if args.threads else {}
        threads = "".join(f", {k}: {v}" for k, v in extra.items())
        cases = "".join(f"      {name}:\n        prompt: {json.dumps(p)}\n" for name, p in CASES.items())
        (work / "scenarios.yaml").write_text(
            f"targets:\n  - name: real\n    url: {server.url}\n"
            f"scenarios:\n  - name: trace\n    model: {MODEL}\n    schedule: {{interval: {args.interval}}}\n"
            f"    timeout: 120s\n    keep_alive: 1h\n"
            f"    options: {{temperature: 0, seed: 42, num_predict: 32{threads}}}\n    cases:\n{cases}")
        if args.busy:
            # Another user of the server: one streamed 128-token story after another.
            threading.Thread(target=keep_decoding, args=(server.url, MODEL, stop), kwargs={"options": extra},
                             daemon=True).start()
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(work / "scenarios.yaml"),
             "--web.listen-address", f"127.0.0.1:{free_port()}", "--results.file", str(work / "results.jsonl"),
             "--log.level", "warning"], cwd=ROOT)
        time.sleep(args.minutes * 60)
    finally:
        stop.set()
        if exporter is not None:
            stop_process(exporter)
        server.stop()
    n = write_csv(work / "results.jsonl", Path(args.out), args.append, parse_duration(args.interval))
    print(f"{n} requests -> {args.out}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
