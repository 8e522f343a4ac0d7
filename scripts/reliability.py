#!/usr/bin/env python3
"""The fault matrix and a short soak, as one table.

    .venv/bin/python scripts/reliability.py            # fake-server and real-Ollama faults, 60 s soak
    .venv/bin/python scripts/reliability.py --no-real  # without building/starting Ollama
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from tests import faults  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-real", action="store_true", help="skip the faults that need a real Ollama")
    ap.add_argument("--soak", type=float, default=60, help="soak seconds (0: none; default 60)")
    args = ap.parse_args()
    outcomes = faults.fake_faults()
    if not args.no_real:
        from tests.real_ollama import OllamaServer, ollama_binary

        with tempfile.TemporaryDirectory() as models:
            binary = ollama_binary()
            seed = OllamaServer(binary, models, free_port(), os.path.join(models, "serve.log")).start()
            try:
                seed.create_model()
            finally:
                seed.stop()

            def make_server():
                return OllamaServer(binary, models, free_port(), os.path.join(models, "serve.log")).start()

            outcomes += faults.real_faults(make_server)
    print(faults.table(outcomes))
    ok = all(o.ok for o in outcomes)
    if args.soak:
        from soak import soak

        print(f"\nsoak: {args.soak:.0f} s at 10x the default probe rate")
        result = soak(args.soak, 6, max(args.soak / 4, 5))
        print(f"fds {result['fds_start']} -> {result['fds_end']}, threads {result['threads_start']} -> "
              f"{result['threads_end']}, RSS {result['rss_start_mib']:.1f} -> {result['rss_end_mib']:.1f} MiB, "
              f"{result['requests']:.0f} requests")
        ok = ok and not result["leak"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
