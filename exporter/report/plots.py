"""PNG plots for the bench report (matplotlib, headless)."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from ..results import ProbeResult  # noqa: E402
from .stats import sections  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return text.replace("/", "_").replace(":", "_")


def plot_name(kind: str, target: str, model: str, several_targets: bool, scenario: Optional[str] = None) -> str:
    """The file of one section's plot; the target is in the name only when the run had several."""
    parts = [kind] + ([_slug(target)] if several_targets else []) + [_slug(model)] + ([scenario] if scenario else [])
    return "_".join(parts) + ".png"


def resource_plot_name(target: str, several_targets: bool) -> str:
    return f"resource_usage_{_slug(target)}.png" if several_targets else "resource_usage.png"


def _by_case(records: list[ProbeResult], attr: str) -> dict[str, list[float]]:
    """Values per case, one box or histogram per target and case: targets are never pooled."""
    several_targets = len({r.target for r in records}) > 1
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        v = getattr(r, attr)
        if r.ok and v is not None:
            label = r.case if r.concurrency == 1 else f"{r.case} c={r.concurrency}"
            where = f"{r.target}: " if several_targets else ""
            groups[f"{where}{r.scenario}/{label}"].append(v)
    return dict(sorted(groups.items()))


def _boxplot(groups: dict[str, list[float]], title: str, ylabel: str, path: str) -> str:
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(groups) + 3), 4.5))
    ax.boxplot(list(groups.values()), showmeans=True)
    ax.set_xticks(range(1, len(groups) + 1), list(groups), rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def write_plots(out_dir: str, records: list[ProbeResult], summary: dict[str, Any],
                samples: list[dict[str, Any]]) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    latency = _by_case(records, "request_duration_s")
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, vals in latency.items():
            ax.hist(vals, bins=min(30, max(5, len(vals))), alpha=0.5, label=label)
        ax.set_title("Latency distribution")
        ax.set_xlabel("end-to-end latency (s)")
        ax.set_ylabel("requests")
        ax.legend(fontsize=7)
        written.append(_save(fig, os.path.join(out_dir, "latency_distribution.png")))
    tps = _by_case(records, "output_tokens_per_s")
    if tps:
        written.append(_boxplot(tps, "Decode speed (server eval rate)", "tokens/s", os.path.join(out_dir, "tokens_per_second.png")))
    ttft = _by_case(records, "ttft_s")
    if ttft:
        written.append(_boxplot(ttft, "Time to first token by case", "seconds", os.path.join(out_dir, "ttft_by_case.png")))

    several = len(summary["targets"]) > 1
    for target, model, m in sections(summary):
        title = f"{model} on {target}" if several else model
        pl = m.get("prompt_length")
        if pl:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            x = [p["prompt_tokens"] for p in pl["points"]]
            ax.plot(x, [p["ttft"] for p in pl["points"]], "o-", label="TTFT (client)")
            ax.plot(x, [p["prefill"] for p in pl["points"]], "s--", label="prefill (server)")
            ax.plot(x, [p["latency"] for p in pl["points"]], "^:", label="end-to-end latency")
            ax.set_xlabel("prompt tokens")
            ax.set_ylabel("seconds (median)")
            ax.set_title(f"Prompt length impact: {title}")
            ax.legend()
            ax.grid(alpha=0.3)
            written.append(_save(fig, os.path.join(out_dir, plot_name("prompt_length_impact", target, model, several))))
        for t in m.get("temperature", []):
            rows = t["rows"]
            fig, ax1 = plt.subplots(figsize=(7, 4.5))
            labels = [f"{r['temperature']:g}" for r in rows]
            pos = list(range(len(rows)))
            ax1.bar(pos, [r["latency"].get("mean", 0) for r in rows], yerr=[r["latency"].get("stdev", 0) for r in rows],
                    color="tab:blue", alpha=0.7, label="latency")
            ax1.set_xlabel("temperature")
            ax1.set_ylabel("mean latency (s)")
            ax2 = ax1.twinx()
            ax2.plot(pos, [r["decode_tps"].get("mean") for r in rows], "o-", color="tab:red", label="decode tokens/s")
            ax1.set_xticks(pos, labels)
            ax2.set_ylabel("decode tokens/s")
            ax1.set_title(f"Temperature impact: {title} ({t['scenario']})")
            fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88), fontsize=8)
            name = plot_name("temperature_impact", target, model, several, t["scenario"])
            written.append(_save(fig, os.path.join(out_dir, name)))
        for c in m.get("concurrency", []):
            rows = c["rows"]
            levels = [r["concurrency"] for r in rows]
            fig, ax1 = plt.subplots(figsize=(7, 4.5))
            ax1.plot(levels, [r["aggregate_tps"].get("mean") for r in rows], "o-", color="tab:green", label="aggregate tokens/s")
            ax1.set_xlabel("concurrent requests")
            ax1.set_ylabel("aggregate output tokens/s")
            ax2 = ax1.twinx()
            ax2.plot(levels, [r["latency"].get("mean") for r in rows], "s--", color="tab:orange", label="mean latency")
            ax2.set_ylabel("mean latency per request (s)")
            ax1.set_xticks(levels)
            ax1.set_title(f"Concurrency impact: {title} ({c['scenario']})")
            fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
            name = plot_name("concurrency_impact", target, model, several, c["scenario"])
            written.append(_save(fig, os.path.join(out_dir, name)))

    # One plot per server: samples of two process trees on one time line would read as one.
    # Targets no scenario ran on are sampled too; they have no section to show a plot in.
    by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        if sample.get("target") in summary["targets"]:
            by_target[sample["target"]].append(sample)
    for target, target_samples in sorted(by_target.items()):
        if len(target_samples) >= 2:
            written.append(_resource_plot(target_samples, target if several else None,
                                          os.path.join(out_dir, resource_plot_name(target, several))))
    return written


def _resource_plot(samples: list[dict[str, Any]], target: Optional[str], path: str) -> str:
    samples = sorted(samples, key=lambda s: s["t"])
    t0 = samples[0]["t"]
    t = [s["t"] - t0 for s in samples[1:]]
    cpu = [max(b["cpu_seconds_total"] - a["cpu_seconds_total"], 0) / max(b["t"] - a["t"], 1e-9) * 100
           for a, b in zip(samples, samples[1:])]
    fig, ax1 = plt.subplots(figsize=(8, 4.5))
    ax1.plot(t, cpu, color="tab:red", label="CPU %")
    ax1.set_xlabel("seconds since start")
    ax1.set_ylabel("server CPU (% of one core)")
    ax2 = ax1.twinx()
    ax2.plot([s["t"] - t0 for s in samples], [s["resident_bytes"] / 2**20 for s in samples],
             color="tab:blue", label="RSS")
    ax2.set_ylabel("server resident memory (MiB)")
    ax1.set_title("Server resource use during the benchmark" + (f" ({target})" if target else ""))
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.88), fontsize=8)
    return _save(fig, path)


def write_saturation_plot(out_dir: str, saturation: list[dict[str, Any]], ttft_limit: float, tpot_limit: float) -> list[str]:
    """Latency against offered load per swept case, limits dashed, the knee marked."""
    if not saturation:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for sweep in saturation:
        label = f"{sweep['scenario']}/{sweep['case']}" + (f" ({sweep['target']})" if len(saturation) > 1 else "")
        x = [r["offered_rate"] for r in sweep["rows"]]
        line, = axes[0].plot(x, [r["ttft_p95"] for r in sweep["rows"]], "o-", label=f"{label} p95 TTFT")
        axes[0].plot(x, [r["ttft_p50"] for r in sweep["rows"]], "o:", color=line.get_color(), label=f"{label} p50 TTFT")
        axes[1].plot(x, [r["goodput"] for r in sweep["rows"]], "s-", color=line.get_color(), label=f"{label} goodput")
        axes[1].plot(x, [r["throughput"] for r in sweep["rows"]], "^:", color=line.get_color(), label=f"{label} throughput")
        if sweep["knee_rate"] is not None:
            for ax in axes:
                ax.axvline(sweep["knee_rate"], color=line.get_color(), alpha=0.5, linestyle="--")
            axes[0].annotate(f"knee {sweep['knee_rate']:g}/s", (sweep["knee_rate"], ttft_limit),
                             textcoords="offset points", xytext=(4, 6), fontsize=8, color=line.get_color())
    axes[0].axhline(ttft_limit, color="red", linestyle="--", linewidth=1, label=f"TTFT limit {ttft_limit:g} s")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("offered load (requests/s, Poisson)")
    axes[0].set_ylabel("time to first token (s)")
    axes[0].set_title("Latency against offered load")
    top = max(r["offered_rate"] for s in saturation for r in s["rows"])
    axes[1].plot([0, top], [0, top], color="grey", linewidth=0.8, label="offered = served")
    axes[1].set_xlabel("offered load (requests/s, Poisson)")
    axes[1].set_ylabel("requests/s")
    axes[1].set_title(f"Goodput (TTFT <= {ttft_limit:g} s, TPOT <= {tpot_limit * 1000:g} ms)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return [_save(fig, os.path.join(out_dir, "saturation.png"))]
