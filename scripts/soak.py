#!/usr/bin/env python3
"""Soak: the exporter process at ten times its normal probe rate against the fake server.

Reports the exporter's RSS, open file descriptors and threads at the start and every
--report-every seconds, and how many requests it made. Exits non-zero if descriptors or
threads end above where they started.

    .venv/bin/python scripts/soak.py --duration 3600            # the one-hour soak
    .venv/bin/python scripts/soak.py --duration 60 --report-every 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# tests/kit is the test and benchmark kit; it is not shipped, so run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from tests.kit.soak import soak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    ap.add_argument("--interval", type=float, default=6,
                    help="scenario interval in seconds (default 6: 10x the default 60)")
    ap.add_argument("--report-every", type=float, default=60, help="seconds between samples (default 60)")
    ap.add_argument("--json", help="write the samples and summary here")
    args = ap.parse_args()
    result = soak(args.duration, args.interval, args.report_every)
    print(f"\n{result['requests']:.0f} requests in {args.duration:.0f} s; "
          f"fds {result['fds_start']} -> {result['fds_end']}, "
          f"threads {result['threads_start']} -> {result['threads_end']}, RSS {result['rss_start_mib']:.1f} -> "
          f"{result['rss_end_mib']:.1f} MiB (max {result['rss_max_mib']:.1f}); "
          f"exporter exit code {result['exit_code']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if result["leak"] or result["exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
