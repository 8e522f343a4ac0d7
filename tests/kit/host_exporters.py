"""The field's host and GPU exporters, for tests on a machine without a GPU.

- node_exporter runs for real (Debian's prometheus-node-exporter), with only the collectors
  bottleneck.yml reads, so it starts in a fraction of a second.
- The GPU exporters (NVIDIA's DCGM exporter, AMD's device metrics exporter) cannot run here:
  a small HTTP server serves their documented output instead (tests/exporter_samples/, whose
  README says where every name and label comes from).
"""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from .exporters import ROOT

SAMPLES_DIR = Path(ROOT) / "tests" / "exporter_samples"
# Collectors behind bottleneck.yml's host evidence: CPU time, memory, pressure stalls, disks.
NODE_COLLECTORS = ("cpu", "meminfo", "pressure", "diskstats")


def node_exporter_binary() -> Optional[str]:
    """Debian installs it as prometheus-node-exporter, upstream's release as node_exporter."""
    return shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def node_exporter_command(binary: str, address: str) -> list[str]:
    return [binary, f"--web.listen-address={address}", "--collector.disable-defaults",
            *(f"--collector.{c}" for c in NODE_COLLECTORS)]


class SampleMetricsServer:
    """Serves /<name>/metrics from tests/exporter_samples/<name>.prom (re-read on each scrape)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                path = SAMPLES_DIR / f"{parts[0]}.prom"
                if len(parts) != 2 or parts[1] != "metrics" or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"

    def start(self) -> "SampleMetricsServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
