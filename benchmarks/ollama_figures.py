"""The README's real-Ollama figures, measured with the product's own probe engine.

Starts the test Ollama (Go-built v0.11.4, SmolLM2-135M) on a free loopback port with a
private model store, then measures what the README quotes:

- warm TTFT and end-to-end latency over N probes (short prompt, num_predict 64);
- decode speed from the server's timings and from the client's streamed gaps, and their ratio;
- uncached prefill speed (unique prompts of ~230 tokens);
- cold load and cold TTFT over a few unload + probe cycles;
- resident memory of the server's process tree with the model loaded.

Usage: python benchmarks/ollama_figures.py [--probes 20] [--cycles 3]
The machine is shared: run it when it is otherwise idle, and read the load average it prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.probe import run_probe
from exporter.server_stats import ProcessTree
# tests/kit is the test and benchmark kit; it is not shipped, so run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from tests.kit.exporters import free_port
from tests.kit.real_ollama import MODEL, OllamaServer, ollama_binary

SCENARIO = """
targets:
  - name: local
    url: {url}
    process_match: "ollama"
scenarios:
  - name: figures
    model: {model}
    unique_prompt: {unique}
    keep_alive: 10m
    timeout: 300s
    options: {{temperature: 0, seed: 42, num_predict: {num_predict}}}
    cases:
      probe:
        prompt: {prompt!r}
"""
SHORT = "What is AI?"
LONG = ("Describe the architecture of a transformer neural network in detail. Cover token embeddings and "
        "positional encodings, multi-head self-attention with queries, keys and values, the feed-forward "
        "blocks, residual connections and layer normalisation, how a decoder-only model generates text one "
        "token at a time, and why a key-value cache makes generation faster. ") * 2


def scenario(url: str, prompt: str, num_predict: int, unique: bool):
    text = SCENARIO.format(url=url, model=MODEL, prompt=prompt, num_predict=num_predict,
                           unique="true" if unique else "false")
    config = load_text(text, "figures")
    return config.scenarios[0], config.targets[0]


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=3)
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = OllamaServer(ollama_binary(), os.path.join(tmp, "models"), port, os.path.join(tmp, "ollama.log"))
        os.makedirs(server.models_dir)
        server.start()
        try:
            server.create_model()
            warm_s, target = scenario(server.url, SHORT, 64, unique=False)
            client = OllamaClient(target)
            case = warm_s.cases[0]
            run_probe(client, warm_s, case)  # load the model
            warm = [run_probe(client, warm_s, case) for _ in range(args.probes)]
            ok = [r for r in warm if r.ok]
            ttft = [r.ttft_s for r in ok]
            e2e = [r.request_duration_s for r in ok]
            server_tps = [r.output_tokens_per_s for r in ok if r.output_tokens_per_s]
            ratios = [r.client_tokens_per_s / r.output_tokens_per_s for r in ok
                      if r.client_tokens_per_s and r.output_tokens_per_s]
            print(f"\nwarm probes: {len(ok)} of {len(warm)} ok (short prompt, num_predict 64)")
            print(f"  TTFT p50 {pct(ttft, 50) * 1000:.1f} ms, p95 {pct(ttft, 95) * 1000:.1f} ms")
            print(f"  end-to-end p50 {pct(e2e, 50):.3f} s")
            print(f"  decode (server) p50 {statistics.median(server_tps):.1f} tok/s")
            print(f"  client/server decode rate: median {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")

            sample = ProcessTree(target.process_match, target.port).sample()
            if sample is not None:
                print(f"  server process tree RSS {sample.resident_bytes / 2**20:.0f} MiB (model loaded)")

            prefill_s, _ = scenario(server.url, LONG, 8, unique=True)
            prefill = [run_probe(client, prefill_s, prefill_s.cases[0]) for _ in range(5)]
            rates = [r.prompt_tokens_per_s for r in prefill if r.ok and r.prompt_tokens_per_s]
            tokens = [r.prompt_eval_count for r in prefill if r.ok and r.prompt_eval_count]
            print(f"\nuncached prefill: {statistics.median(rates):.0f} tok/s median over {len(rates)} "
                  f"({statistics.median(tokens)} prompt tokens)")

            loads, cold_ttft = [], []
            for _ in range(args.cycles):
                client.unload(MODEL)
                time.sleep(0.5)
                r = run_probe(client, warm_s, case)
                if r.ok:
                    loads.append(r.load_duration_s or 0.0)
                    cold_ttft.append(r.ttft_s)
            print(f"\ncold: load {min(loads):.2f}-{max(loads):.2f} s, TTFT {min(cold_ttft):.2f}-{max(cold_ttft):.2f} s "
                  f"({len(loads)} unload + probe cycles)")
        finally:
            server.stop()
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
