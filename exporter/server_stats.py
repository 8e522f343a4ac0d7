"""The server side: is it up, which version, which models are loaded, and what
its process tree (`ollama serve` plus its model runners) costs in CPU and memory.

Polled in the background; scrapes read the cached snapshot. Series that cannot
be known (no local process visible, server down) are absent, never zero.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import Target
from .ollama import OllamaClient, OllamaError, RunningModel

log = logging.getLogger(__name__)


@dataclass
class ProcessSample:
    cpu_seconds_total: float
    resident_bytes: int
    processes: int
    root_pid: int


class ProcessTree:
    """Finds the server's process by command line and sums its tree.

    CPU seconds are accumulated per pid, so a model runner that exits does not
    make the counter go backwards (a runner is replaced on every model switch).
    """

    def __init__(self, pattern: str, port: Optional[int] = None):
        self.pattern = re.compile(pattern)
        self.port = port
        self._root: Optional[psutil.Process] = None
        self._last_cpu: dict[tuple[int, float], float] = {}
        self._total_cpu = 0.0
        self._lock = threading.Lock()

    def _listens_on_port(self, proc: psutil.Process) -> bool:
        try:
            return any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                for c in proc.net_connections(kind="inet")
            )
        except (psutil.Error, OSError):
            return False

    def _find_root(self) -> Optional[psutil.Process]:
        candidates = []
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmdline = proc.info.get("cmdline") or []
            if cmdline and self.pattern.search(" ".join(cmdline)):
                candidates.append(proc)
        if len(candidates) > 1 and self.port:
            # Several servers on one host (tests, a fleet of ports): the one on our port.
            on_port = [p for p in candidates if self._listens_on_port(p)]
            candidates = on_port or candidates
        if not candidates:
            return None
        return min(candidates, key=lambda p: p.info.get("create_time") or 0)

    def sample(self) -> Optional[ProcessSample]:
        with self._lock:
            root = self._root
            if root is None or not root.is_running():
                root = self._root = self._find_root()
            if root is None:
                return None
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                self._root = None
                return None
            rss = 0
            seen = set()
            for proc in procs:
                try:
                    with proc.oneshot():
                        if proc.status() == psutil.STATUS_ZOMBIE:
                            continue  # exited, not yet reaped: its CPU is already in the total
                        key = (proc.pid, proc.create_time())
                        cpu = proc.cpu_times()
                        used = cpu.user + cpu.system
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                seen.add(key)
                previous = self._last_cpu.get(key, 0.0)
                if used > previous:
                    self._total_cpu += used - previous
                self._last_cpu[key] = used
            for key in list(self._last_cpu):
                if key not in seen:
                    del self._last_cpu[key]
            return ProcessSample(self._total_cpu, rss, len(seen), root.pid)


@dataclass
class ServerSnapshot:
    up: bool = False
    version: Optional[str] = None
    models: list[RunningModel] = field(default_factory=list)
    process: Optional[ProcessSample] = None
    polled_at: float = 0.0
    error: Optional[str] = None


class ServerStats:
    """Polls every target; keeps the last snapshot of each for the collector and the report."""

    def __init__(self, targets: Iterable[Target], client_factory: Callable[[Target], OllamaClient] = OllamaClient):
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._snapshots: dict[str, ServerSnapshot] = {}
        self._trees: dict[str, Optional[ProcessTree]] = {}
        self._targets: tuple[Target, ...] = ()
        self.set_targets(targets)

    def set_targets(self, targets: Iterable[Target]) -> None:
        targets = tuple(targets)
        with self._lock:
            old = {t.name: t for t in self._targets}
            trees = {}
            for t in targets:
                same = old.get(t.name) == t
                if same and t.name in self._trees:
                    trees[t.name] = self._trees[t.name]
                else:
                    client = self._client_factory(t)
                    trees[t.name] = ProcessTree(t.process_match, client.port) if t.process_match else None
            self._trees = trees
            self._targets = targets
            self._snapshots = {k: v for k, v in self._snapshots.items() if k in trees}

    def poll_target(self, target: Target) -> ServerSnapshot:
        client = self._client_factory(target)
        snap = ServerSnapshot(polled_at=time.time())
        try:
            snap.version = client.version()
            snap.up = True
            snap.models = client.running_models()
        except OllamaError as exc:
            snap.error = exc.message
            if snap.up:
                log.warning("target %s: cannot list running models: %s", target.name, exc.message)
        tree = self._trees.get(target.name)
        if tree is not None:
            try:
                snap.process = tree.sample()
            except Exception:  # psutil on an odd platform must not stop the poller
                log.exception("target %s: cannot read the server's process tree", target.name)
        with self._lock:
            previous = self._snapshots.get(target.name)
            self._snapshots[target.name] = snap
        if previous is not None and previous.up != snap.up:
            if snap.up:
                log.info("target %s: server is up (version %s)", target.name, snap.version)
            else:
                log.warning("target %s: server is down: %s", target.name, snap.error)
        return snap

    def poll(self) -> None:
        with self._lock:
            targets = self._targets
        for t in targets:
            self.poll_target(t)

    def snapshots(self) -> dict[str, ServerSnapshot]:
        with self._lock:
            return dict(self._snapshots)


class ServerStatsCollector(Collector):
    """Exposes the last snapshot of every target at scrape time (no I/O in the scrape)."""

    def __init__(self, stats: ServerStats):
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        bg = " Polled in the background, not at scrape time."
        up = GaugeMetricFamily("llm_server_up", "1 if the server answered its version endpoint." + bg, labels=["target"])
        info = GaugeMetricFamily("llm_server_info", "Server version; always 1." + bg, labels=["target", "version"])
        cpu = CounterMetricFamily(
            "llm_server_process_cpu_seconds",
            "CPU seconds used by the server's process tree (server and model runners)." + bg, labels=["target"],
        )
        rss = GaugeMetricFamily(
            "llm_server_process_resident_memory_bytes",
            "Resident memory of the server's process tree (server and model runners)." + bg, labels=["target"],
        )
        procs = GaugeMetricFamily(
            "llm_server_processes", "Processes in the server's process tree." + bg, labels=["target"]
        )
        loaded = GaugeMetricFamily(
            "llm_server_model_loaded_bytes", "Size of each loaded model, from the running-models endpoint." + bg,
            labels=["target", "model"],
        )
        vram = GaugeMetricFamily(
            "llm_server_model_vram_bytes", "Part of each loaded model held in GPU memory." + bg,
            labels=["target", "model"],
        )
        vram_ratio = GaugeMetricFamily(
            "llm_server_model_vram_ratio",
            "Share of each loaded model held in GPU memory (size_vram / size): 1 all on the GPU, below 1 "
            "some layers run on the CPU, 0 a CPU-only run." + bg, labels=["target", "model"],
        )
        context = GaugeMetricFamily(
            "llm_server_model_context_length",
            "Context length (tokens) each loaded model was loaded with, where the server reports it." + bg,
            labels=["target", "model"],
        )
        for name, snap in sorted(self.stats.snapshots().items()):
            up.add_metric([name], 1 if snap.up else 0)
            if snap.version:
                info.add_metric([name, snap.version[:64]], 1)
            if snap.process is not None:
                cpu.add_metric([name], snap.process.cpu_seconds_total)
                rss.add_metric([name], snap.process.resident_bytes)
                procs.add_metric([name], snap.process.processes)
            for m in snap.models:
                model = m.name[:64]
                if m.size is not None:
                    loaded.add_metric([name, model], m.size)
                if m.size_vram is not None:
                    vram.add_metric([name, model], m.size_vram)
                ratio = m.vram_ratio
                if ratio is not None:
                    vram_ratio.add_metric([name, model], ratio)
                if m.context_length:
                    context.add_metric([name, model], m.context_length)
        yield from (up, info, cpu, rss, procs, loaded, vram, vram_ratio, context)
