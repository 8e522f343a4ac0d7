"""REPORT.md's comparison with an earlier run (`bench --compare`): what differs, and the change per case."""

from __future__ import annotations

from typing import Any, Optional

from .mdtable import pct as _pct
from .mdtable import table as _table

QUANTITY_NAMES = {"ttft": "TTFT", "latency": "latency", "tpot": "time per output token", "decode_tps": "decode tok/s"}
VERDICT_MARKS = {"worse": "**worse**", "better": "better", "within noise": "within noise"}


def _value(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if unit == "tok/s" else f"{v * 1000:.1f} ms" if v < 1 else f"{v:.3f} s"


def comparison_section(comparison: dict[str, Any]) -> list[str]:
    L = [f"## Comparison with `{comparison['old_dir']}`", ""]
    diffs = comparison["differences"]
    L += ["### What differs between the runs", ""]
    if diffs:
        rows = [[d["what"], f"`{d['old']}`", f"`{d['new']}`"] for d in diffs]
        L += [_table(["what", "old run", "this run"], rows), ""]
    else:
        L += ["Nothing recorded differs: same host, Ollama version, model digests, quantization and options.", ""]
    L += ["### Changes per case", ""]
    several = len(comparison.get("targets", ())) > 1
    for u in comparison.get("unmatched_targets", ()):
        L += [f"Target `{u['target']}` ran only in the {'old' if u['only_in'] == 'old' else 'this'} run: "
              "nothing of it is compared.", ""]
    if not comparison["cases"]:
        return L + [f"No {'target/' if several else ''}model/scenario/case/concurrency combination appears "
                    "in both runs.", ""]
    rows = []
    for c in comparison["cases"]:
        for q in c["quantities"]:
            judged = "change_pct" in q
            rows.append(([c["target"]] if several else []) + [
                c["model"], c["scenario"], c["case"], str(c["concurrency"]), QUANTITY_NAMES[q["quantity"]],
                f"{q['n_old']} / {q['n_new']}", _value(q["old_median"], q["unit"]), _value(q["new_median"], q["unit"]),
                _pct(q["change_pct"]) if judged else "-",
                f"{q['ci_low_pct']:+.1f}% .. {q['ci_high_pct']:+.1f}%" if judged else "-",
                f"{q['p_new_greater']:.2f}" if judged else "-",
                ("**REGRESSION** " if q["regressed"] else "") + VERDICT_MARKS.get(q["verdict"], q["verdict"]),
            ])
    L += [_table((["target"] if several else []) + [
        "model", "scenario", "case", "conc", "quantity", "n old / new", "old median", "new median",
        "change", f"{comparison['confidence']:.0%} CI", "P(new > old)", "verdict"], rows), ""]
    L += ["Each change is the relative change of the median over the successful warm requests of both runs. "
          + ("Each target is compared with the same target of the old run, never pooled with another. "
             if several else "")
          + f"Its interval is a percentile bootstrap ({comparison['resamples']} resamples, seeded per case, so a "
          f"rebuilt report shows the same numbers). A change is beyond noise (worse or better) when the interval "
          f"excludes zero. P(new > old) is the Mann-Whitney probability of superiority: 0.5 means no shift, "
          f"1.0 means every new value is above every old one (for decode tok/s, higher is better).", ""]
    pct = comparison.get("fail_on_regression_pct")
    if pct is not None:
        regs = comparison["regressions"]
        if regs:
            L += [f"**Regression gate failed**: {len(regs)} quantit{'y' if len(regs) == 1 else 'ies'} got worse by "
                  f"more than {pct:g}% with {comparison['confidence']:.0%} confidence (exit code 4):", ""]
            L += [f"- {r['scenario']}/{r['case']} (concurrency {r['concurrency']}"
                  + (f", target {r['target']}" if several else "") + f"): {QUANTITY_NAMES[r['quantity']]} "
                  f"{r['worse_pct']:+.1f}% worse, interval {r['worse_ci_low_pct']:+.1f}% .. "
                  f"{r['worse_ci_high_pct']:+.1f}%" for r in regs] + [""]
        else:
            L += [f"Regression gate passed: nothing got worse by more than {pct:g}% with "
                  f"{comparison['confidence']:.0%} confidence.", ""]
    return L
