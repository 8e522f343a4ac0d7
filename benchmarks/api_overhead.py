"""Ollama's native /api/chat against its OpenAI-compatible /v1/chat/completions, same model and options,
and the prompt cache of a multi-turn conversation on both. Needs a running Ollama with the model.

    python benchmarks/api_overhead.py --url http://127.0.0.1:11434 --model smollm2-135m [--rounds 10]

Requests alternate between the APIs (chat, openai; then openai, chat; ...) so that a machine's
changing load falls on both alike, and each round's pair is compared directly (paired
differences). Prints Markdown tables: medians of TTFT, end-to-end latency and the gap between
tokens per API; then each turn of a conversation with its prompt tokens, cached tokens and TTFT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.config import load_text  # noqa: E402
from exporter.conversation import run_conversation  # noqa: E402
from exporter.ollama import OllamaClient  # noqa: E402
from exporter.probe import run_probe  # noqa: E402

APIS = ("chat", "openai")
PROMPT = "Explain in two sentences why the sky is blue."
TURNS = ["My name is Ada and I like sailing. Describe a good first boat for me in a few sentences. " * 3,
         "What safety equipment should I carry?", "And how do I learn to read the weather?",
         "Summarise your advice in one line."]


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


def med(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:11434")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--predict", type=int, default=24)
    args = ap.parse_args()
    setups = {api: config(args.url, args.model, api, args.predict).scenarios[0] for api in APIS}
    clients = {api: OllamaClient(s.targets[0]) for api, s in setups.items()}
    for api in APIS:  # load the model, warm both paths
        run_probe(clients[api], setups[api], setups[api].cases[0])
    single: dict[str, list] = {api: [] for api in APIS}
    pairs: list[tuple] = []  # (chat, openai) of one round: the machine's load drifts less within a pair
    for i in range(args.rounds):
        order = APIS if i % 2 == 0 else APIS[::-1]
        got = {}
        for api in order:
            r = run_probe(clients[api], setups[api], setups[api].cases[0])
            if not r.ok:
                print(f"{api}: {r.reason}: {r.error}", file=sys.stderr)
                continue
            single[api].append(r)
            got[api] = r
        if len(got) == 2:
            pairs.append((got["chat"], got["openai"]))
    print("| API | requests | TTFT median (ms) | end-to-end median (ms) | token gap median (ms) | output tokens |")
    print("|---|---|---|---|---|---|")
    for api, rs in single.items():
        gaps = [g for r in rs for g in r.inter_token_gaps_s]
        print(f"| {'/api/chat' if api == 'chat' else '/v1/chat/completions'} | {len(rs)} | {med(r.ttft_s for r in rs)}"
              f" | {med(r.request_duration_s for r in rs)} | {med(gaps)} | "
              f"{statistics.median(r.eval_count or r.output_chunks for r in rs) if rs else '-'} |")
    print()
    for what, field in (("TTFT", "ttft_s"), ("end-to-end", "request_duration_s")):
        diffs = sorted(getattr(b, field) - getattr(a, field) for a, b in pairs)
        if diffs:
            q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
            print(f"/v1 minus /api/chat, {what}, paired by round ({len(diffs)} pairs): median "
                  f"{q[1] * 1000:+.1f} ms, interquartile range {q[0] * 1000:+.1f} .. {q[2] * 1000:+.1f} ms")
    print()
    print("| API | turn | prompt tokens | cached tokens (source) | TTFT (ms) |")
    print("|---|---|---|---|---|")
    for api in APIS:
        for r in run_conversation(clients[api], setups[api], setups[api].cases[1]):
            cached = f"{r.cached_prompt_tokens} ({r.cache_source})" if r.cache_source else "-"
            ttft = f"{r.ttft_s * 1000:.1f}" if r.ttft_s is not None else r.reason
            print(f"| {api} | {r.turn} | {r.prompt_eval_count} | {cached} | {ttft} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
