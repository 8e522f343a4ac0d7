"""Ollama's native /api/chat against its OpenAI-compatible /v1/chat/completions and a second engine's
(llama-cpp-python's server), same model and options, and the prompt cache of a multi-turn
conversation on each.

    python benchmarks/api_overhead.py --url http://127.0.0.1:11434 --model smollm2-135m [--rounds 10]
        [--llama-url http://127.0.0.1:8000]
    python benchmarks/api_overhead.py --start [--rounds 20]   # starts both servers itself (test kit)

`--start` runs the real Ollama (scripts/install-ollama.sh) and llama-cpp-python's server
(scripts/install-llama-cpp-server.sh) on free ports with the SmolLM2 GGUF, both with 2 threads and
a 4096-token context, and stops them at the end.

Requests rotate between the setups each round (so that a machine's changing load falls on all
alike), and each round's requests are compared directly (paired differences against /api/chat).
Every prompt carries a unique tag, so no server answers from its prompt cache. Prints Markdown
tables: medians of TTFT, end-to-end latency, the gap between tokens and the client's tokens/s per
setup, with the load average before and after; then each turn of a conversation with its prompt
tokens, cached tokens and TTFT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.config import load_text  # noqa: E402
from exporter.conversation import run_conversation  # noqa: E402
from exporter.ollama import OllamaClient  # noqa: E402
from exporter.probe import run_probe  # noqa: E402

PROMPT = "Explain in two sentences why the sky is blue."
TURNS = ["My name is Ada and I like sailing. Describe a good first boat for me in a few sentences. " * 3,
         "What safety equipment should I carry?", "And how do I learn to read the weather?",
         "Summarise your advice in one line."]
CONTEXT = 4096  # Ollama's default num_ctx in 0.11.4; the llama-cpp-python server is started with the same
THREADS = 2
ENGINES_JSON = "benchmarks/engines.json"


def config(url: str, model: str, api: str, predict: int):
    return load_text(textwrap.dedent(f"""\
        targets: [{{name: real, url: {url}, process_match: null}}]
        scenarios:
          - name: {api}
            model: {model}
            api: {api}
            unique_prompt: true
            timeout: 300s
            options: {{temperature: 0, seed: 42, num_predict: {predict}}}
            cases:
              single: {{prompt: {PROMPT!r}}}
              conv: {{turns: {TURNS!r}}}
        """))


@contextlib.contextmanager
def started_servers():
    """(Ollama URL, llama-cpp-python URL, its version) of servers started here, stopped on the way out."""
    from tests.kit.exporters import free_port
    from tests.kit.llama_cpp_server import LlamaCppServer, server_python
    from tests.kit.real_ollama import OllamaServer, ollama_binary

    with tempfile.TemporaryDirectory() as tmp:
        ollama = OllamaServer(ollama_binary(), tmp, free_port(), os.path.join(tmp, "ollama.log")).start()
        try:
            ollama.create_model()
            python = server_python()
            version = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                     capture_output=True, text=True, timeout=120).stdout.strip()
            with LlamaCppServer(python, free_port(), os.path.join(tmp, "llama.log"), n_ctx=CONTEXT,
                                n_threads=THREADS) as llama:
                yield ollama.url, llama.url, version
        finally:
            ollama.stop()


def med(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def loadavg() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure(setups: dict[str, tuple[str, str]], model: str, rounds: int, predict: int) -> dict:
    """`setups`: name -> (URL, api). The first is the reference of the paired differences.
    Prints the tables; returns the figures (for --json)."""
    scenarios = {name: config(url, model, api, predict).scenarios[0] for name, (url, api) in setups.items()}
    clients = {name: OllamaClient(s.targets[0]) for name, s in scenarios.items()}
    names = list(setups)
    for name in names:  # load the model, warm every path
        run_probe(clients[name], scenarios[name], scenarios[name].cases[0])
    before = loadavg()
    print(f"load average (1/5/15 min) before: {before}, {os.cpu_count()} CPUs")
    single: dict[str, list] = {name: [] for name in names}
    rows: list[dict] = []  # one round's results: the machine's load drifts less within a round
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        got = {}
        for name in order:
            r = run_probe(clients[name], scenarios[name], scenarios[name].cases[0])
            if not r.ok:
                print(f"{name}: {r.reason}: {r.error}", file=sys.stderr)
                continue
            single[name].append(r)
            got[name] = r
        rows.append(got)
    after = loadavg()
    print(f"load average after: {after}")
    print()
    out: dict = {"meta": {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "loadavg_before": before,
                          "loadavg_after": after, "rounds": rounds, "num_predict": predict, "model": model,
                          "ollama_version": clients[names[0]].version()},
                 "rows": [], "paired": []}
    print("| setup | requests | TTFT median (ms) | end-to-end median (ms) | token gap median (ms) | "
          "client tokens/s median | server decode tokens/s median | output tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in single.items():
        gaps = [g for r in rs for g in r.inter_token_gaps_s]
        server = [r.output_tokens_per_s for r in rs if r.output_tokens_per_s]
        client = [r.client_tokens_per_s for r in rs if r.client_tokens_per_s]
        out["rows"].append({"setup": name, "requests": len(rs), "ttft_s": median(r.ttft_s for r in rs),
                            "request_duration_s": median(r.request_duration_s for r in rs), "gap_s": median(gaps),
                            "client_tps": median(client), "server_decode_tps": median(server),
                            "output_tokens": median(r.eval_count or r.output_chunks for r in rs)})
        print(f"| {name} | {len(rs)} | {med(r.ttft_s for r in rs)} | {med(r.request_duration_s for r in rs)} | "
              f"{med(gaps)} | {statistics.median(client):.1f} | "
              f"{f'{statistics.median(server):.1f}' if server else 'absent'} | "
              f"{statistics.median(r.eval_count or r.output_chunks for r in rs) if rs else '-'} |")
    print()
    ref = names[0]
    for other in names[1:]:
        for what, field in (("TTFT", "ttft_s"), ("end-to-end", "request_duration_s")):
            diffs = sorted(getattr(got[other], field) - getattr(got[ref], field)
                           for got in rows if ref in got and other in got)
            if diffs:
                q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
                out["paired"].append({"setup": other, "reference": ref, "what": what, "pairs": len(diffs),
                                      "median_s": q[1], "q1_s": q[0], "q3_s": q[2]})
                print(f"{other} minus {ref}, {what}, paired by round ({len(diffs)} pairs): median "
                      f"{q[1] * 1000:+.1f} ms, interquartile range {q[0] * 1000:+.1f} .. {q[2] * 1000:+.1f} ms")
    print()
    print("| setup | turn | prompt tokens | cached tokens (source) | TTFT (ms) |")
    print("|---|---|---|---|---|")
    for name in names:
        for r in run_conversation(clients[name], scenarios[name], scenarios[name].cases[1]):
            cached = f"{r.cached_prompt_tokens} ({r.cache_source})" if r.cache_source else "-"
            ttft = f"{r.ttft_s * 1000:.1f}" if r.ttft_s is not None else r.reason
            print(f"| {name} | {r.turn} | {r.prompt_eval_count} | {cached} | {ttft} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:11434")
    ap.add_argument("--llama-url", help="an llama-cpp-python (or other OpenAI-compatible) server with the same model")
    ap.add_argument("--start", action="store_true", help="start Ollama and llama-cpp-python's server here")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--predict", type=int, default=24)
    ap.add_argument("--json", metavar="PATH", help=f"also write the figures here (RESULTS.md shows {ENGINES_JSON})")
    args = ap.parse_args()

    def setups(url: str, llama_url):
        out = {"Ollama /api/chat": (url, "chat"), "Ollama /v1": (url, "openai")}
        if llama_url:
            out["llama-cpp-python /v1"] = (llama_url, "openai")
        return out

    if args.start:
        with started_servers() as (url, llama_url, version):
            out = measure(setups(url, llama_url), args.model, args.rounds, args.predict)
            out["meta"]["llama_cpp_python_version"] = version
            out["meta"]["conditions"] = (f"one GGUF file (SmolLM2-135M-Instruct Q4_1) served by both, {THREADS} "
                                         f"threads and a {CONTEXT}-token context on each")
    else:
        out = measure(setups(args.url, args.llama_url), args.model, args.rounds, args.predict)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
