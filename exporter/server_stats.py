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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import psutil

from .config import Target
from .keyspace import SERVER
from .ollama import OllamaClient, OllamaError, RunningModel
from .state import Part, StateStore
from .textformat import Family, Labels, fmt

log = logging.getLogger(__name__)
POLL_WORKERS = 8


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


SERVER_PART = "server"
BG = " Polled in the background, not at scrape time."
UP = Family("llm_server_up", "gauge", "1 if the server answered its version endpoint (a server without one, "
                                      "such as an OpenAI-compatible server of another kind, counts if it answers 404)."
             + BG)
INFO = Family("llm_server_info", "gauge", "Server version; always 1." + BG)
CPU = Family("llm_server_process_cpu_seconds_total", "counter",
             "CPU seconds used by the server's process tree (server and model runners)." + BG)
RSS = Family("llm_server_process_resident_memory_bytes", "gauge",
             "Resident memory of the server's process tree (server and model runners)." + BG)
PROCESSES = Family("llm_server_processes", "gauge", "Processes in the server's process tree." + BG)
LOADED = Family("llm_server_model_loaded_bytes", "gauge",
                "Size of each loaded model, from the running-models endpoint." + BG)
VRAM = Family("llm_server_model_vram_bytes", "gauge", "Part of each loaded model held in GPU memory." + BG)
VRAM_RATIO = Family(
    "llm_server_model_vram_ratio", "gauge",
    "Share of each loaded model held in GPU memory (size_vram / size): 1 all on the GPU, below 1 "
    "some layers run on the CPU, 0 a CPU-only run." + BG)
CONTEXT = Family("llm_server_model_context_length", "gauge",
                 "Context length (tokens) each loaded model was loaded with, where the server reports it." + BG)
SERVER_FAMILIES = (UP, INFO, CPU, RSS, PROCESSES, LOADED, VRAM, VRAM_RATIO, CONTEXT)


class ServerSlot:
    """A target's last snapshot in the state store; none until its first poll ends."""

    __slots__ = ("snapshot",)

    def __init__(self):
        self.snapshot: Optional[ServerSnapshot] = None

    def render(self, name: str) -> dict[str, str]:
        snap = self.snapshot
        if snap is None:
            return {}
        target = Labels(("target",), (name,)).text
        out = {UP.name: f"{UP.name}{target} {fmt(1 if snap.up else 0)}\n"}
        if snap.version:
            out[INFO.name] = f"{INFO.name}{Labels(('target', 'version'), (name, snap.version[:64])).text} 1.0\n"
        if snap.process is not None:
            out[CPU.name] = f"{CPU.name}{target} {fmt(snap.process.cpu_seconds_total)}\n"
            out[RSS.name] = f"{RSS.name}{target} {fmt(snap.process.resident_bytes)}\n"
            out[PROCESSES.name] = f"{PROCESSES.name}{target} {fmt(snap.process.processes)}\n"
        per_model: dict[str, list[str]] = {f.name: [] for f in (LOADED, VRAM, VRAM_RATIO, CONTEXT)}
        for m in snap.models:
            labels = Labels(("target", "model"), (name, m.name[:64])).text
            for family, value in ((LOADED, m.size), (VRAM, m.size_vram), (VRAM_RATIO, m.vram_ratio),
                                  (CONTEXT, m.context_length or None)):
                if value is not None:
                    per_model[family.name].append(f"{family.name}{labels} {fmt(value)}\n")
        out.update((k, "".join(v)) for k, v in per_model.items())
        return out


class ServerStats:
    """Polls targets and keeps each one's last snapshot in the state store's server slots.

    A poll of a target that left the key space finds no slot, so its snapshot is dropped:
    a removed server never comes back as down."""

    def __init__(self, store: StateStore, client_factory: Callable[[Target], OllamaClient] = OllamaClient):
        self.store = store
        store.add_part(Part(SERVER, SERVER_PART, SERVER_FAMILIES, lambda key, ctx: ServerSlot(),
                            lambda key, state, ctx: state.render(key)))
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._trees: dict[str, Optional[ProcessTree]] = {}
        self._targets: tuple[Target, ...] = ()
        # One poll per target at a time: a server that never answers ties up one thread, not a queue.
        self._polling: set[str] = set()

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

    def poll_target(self, target: Target) -> Optional[ServerSnapshot]:
        """Poll one target now; None if a poll of it is already under way."""
        with self._lock:
            if target.name in self._polling:
                return None
            self._polling.add(target.name)
            tree = self._trees.get(target.name)
        try:
            snap = self._poll(target, tree)
        finally:
            with self._lock:
                self._polling.discard(target.name)
        previous: list[Optional[ServerSnapshot]] = [None]

        def store(slot: ServerSlot, ctx) -> None:
            previous[0], slot.snapshot = slot.snapshot, snap

        self.store.update(SERVER, target.name, SERVER_PART, store)
        if previous[0] is not None and previous[0].up != snap.up:
            if snap.up:
                log.info("target %s: server is up (version %s)", target.name, snap.version)
            else:
                log.warning("target %s: server is down: %s", target.name, snap.error)
        return snap

    def _poll(self, target: Target, tree: Optional[ProcessTree]) -> ServerSnapshot:
        client = self._client_factory(target)
        snap = ServerSnapshot(polled_at=time.time())
        try:
            try:
                snap.version = client.version()
            except OllamaError as exc:
                if exc.http_status != 404:
                    raise
                # It answered, without Ollama's version endpoint: an OpenAI-compatible server of
                # another kind (api: openai). Up, no version, no running-models list.
                snap.up = True
                return self._sample_tree(target, tree, snap)
            snap.up = True
            snap.models = client.running_models()
        except OllamaError as exc:
            snap.error = exc.message
            if snap.up:
                log.warning("target %s: cannot list running models: %s", target.name, exc.message)
        return self._sample_tree(target, tree, snap)

    @staticmethod
    def _sample_tree(target: Target, tree: Optional[ProcessTree], snap: ServerSnapshot) -> ServerSnapshot:
        if tree is not None:
            try:
                snap.process = tree.sample()
            except Exception:  # psutil on an odd platform must not stop the poller
                log.exception("target %s: cannot read the server's process tree", target.name)
        return snap

    def target(self, name: str) -> Optional[Target]:
        with self._lock:
            return next((t for t in self._targets if t.name == name), None)

    def poll(self) -> None:
        """Poll every target, side by side: a server that accepts and never answers delays only itself."""
        with self._lock:
            targets = self._targets
        if not targets:
            return
        with ThreadPoolExecutor(max_workers=min(POLL_WORKERS, len(targets)), thread_name_prefix="server-stats") as pool:
            list(pool.map(self.poll_target, targets))

    def snapshots(self) -> dict[str, ServerSnapshot]:
        out = {}
        for name in self.store.keys(SERVER):
            snap = self.store.read(SERVER, name, SERVER_PART, lambda slot, ctx: slot.snapshot)
            if snap is not None:
                out[name] = snap
        return out
