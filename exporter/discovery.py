"""Targets from Prometheus file_sd files, re-read when a file changes.

A file is a JSON or YAML list of `{targets: [host:port or URL, ...], labels: {...}}`, the
format Prometheus's `file_sd_configs` reads, so the inventory that feeds Prometheus (or a
Kubernetes ConfigMap) can feed the exporter too. Each file is polled by its mtime, size and
inode; a file that cannot be read or parsed keeps the last good list and is counted.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Iterable, Mapping, Optional

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, ValidationError

from .config import Target, TargetFile
from .config_types import NAME_RULE, valid_name

log = logging.getLogger(__name__)


class DiscoveryError(Exception):
    pass


class _FileSdGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[str]
    labels: dict[str, str] = {}


def parse_file_sd(text: str, spec: TargetFile) -> tuple[Target, ...]:
    """The targets of one file_sd document; DiscoveryError says what is wrong with it."""
    try:
        raw = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"not JSON or YAML: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise DiscoveryError(f"expected a list of target groups, got {type(raw).__name__}")
    targets: dict[str, Target] = {}
    for i, entry in enumerate(raw):
        try:
            group = _FileSdGroup.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DiscoveryError(f"[{i}]{'.' + where if where else ''}: {first['msg']}") from None
        for j, address in enumerate(group.targets):
            address = address.strip()
            url = address if "://" in address else f"{spec.scheme}://{address}"
            name = group.labels.get(spec.name_label) or address
            if not valid_name(name):
                raise DiscoveryError(f"[{i}].targets[{j}]: target name {name!r} {NAME_RULE}")
            try:
                target = Target(name=name, url=url, process_match=spec.process_match, auth=spec.auth)
            except ValidationError as exc:
                raise DiscoveryError(f"[{i}].targets[{j}]: {address!r}: {exc.errors()[0]['msg']}") from None
            if targets.setdefault(name, target) != target:
                raise DiscoveryError(f"[{i}].targets[{j}]: duplicate target name {name!r}")
    return tuple(targets.values())


def read_target_files(specs: Iterable[TargetFile]) -> dict[str, tuple[Target, ...]]:
    """Every file read once (for `bench`, which runs once); ConfigError lists the bad ones."""
    from .config import ConfigError

    found, problems = {}, []
    for spec in specs:
        try:
            with open(spec.path, encoding="utf-8") as f:
                found[spec.group] = parse_file_sd(f.read(), spec)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"target_files {spec.group}: cannot read {spec.path}: {exc}")
        except DiscoveryError as exc:
            problems.append(f"target_files {spec.group}: {spec.path}: {exc}")
    if problems:
        raise ConfigError(problems, "target files")
    return found


class DiscoveryMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.errors = Counter(
            "llm_exporter_targets_file_errors_total",
            "Target file versions that could not be read or used; the last good list stays.",
            ["group"], registry=registry,
        )
        self.ok = Gauge(
            "llm_exporter_targets_file_last_read_successful",
            "1 if the last version of the target file was taken, 0 if it was refused.",
            ["group"], registry=registry,
        )
        self.discovered = Gauge(
            "llm_exporter_discovered_targets", "Targets in the last good version of each target file.",
            ["group"], registry=registry,
        )


def _signature(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TargetDiscovery:
    """Holds the last good targets of every target file and polls the files in a thread.

    `accept(candidate)` is asked before a new version is used (the label budget, name clashes
    with other groups); its error message, if any, rejects the version like a parse error.
    Its answer depends on the config and on the other files, so a version it refused is asked
    again when either changes: by `configure`, and after another file's version was taken.
    `on_change()` is called, outside the lock, after a version was taken.
    """

    def __init__(self, metrics: DiscoveryMetrics, on_change: Callable[[], None],
                 accept: Callable[[Mapping[str, tuple[Target, ...]]], Optional[str]]):
        self.metrics = metrics
        self.on_change = on_change
        self.accept = accept
        self._lock = threading.Lock()
        self._specs: tuple[TargetFile, ...] = ()
        self._targets: dict[str, tuple[Target, ...]] = {}
        self._seen: dict[str, Optional[tuple]] = {}
        # Groups whose current version was read and parsed but refused by `accept`.
        self._refused: set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def current(self) -> dict[str, tuple[Target, ...]]:
        with self._lock:
            return dict(self._targets)

    def configure(self, specs: Iterable[TargetFile],
                  accept: Optional[Callable[[Mapping[str, tuple[Target, ...]]], Optional[str]]] = None) -> None:
        """Use these files from now on, reading each at once; groups no longer listed are dropped.

        `accept`, when given, is the check from now on: a reload passes the check of the config
        it is loading, so the files are judged by that config and not by the running one.
        """
        specs = tuple(specs)
        with self._lock:
            if accept is not None:
                self.accept = accept
            groups = {s.group for s in specs}
            # Every file is read again: its spec (scheme, auth, name label) may have changed.
            previous, self._seen = self._seen, {}
            self._refused.clear()
            for group in list(self._targets):
                if group not in groups:
                    del self._targets[group]
            for group in previous:
                if group not in groups:
                    for metric in (self.metrics.discovered, self.metrics.errors, self.metrics.ok):
                        try:
                            metric.remove(group)
                        except KeyError:
                            pass
            self._specs = specs
            for spec in specs:
                self.metrics.errors.labels(spec.group)
                self._poll_one(spec)
            self._retry_refused()
            for spec in specs:
                self.metrics.discovered.labels(spec.group).set(len(self._targets.get(spec.group, ())))

    def poll(self) -> bool:
        """Re-read the files that changed; True if a new version was taken."""
        with self._lock:
            changed = any([self._poll_one(spec) for spec in self._specs])
            if changed:
                self._retry_refused()
        if changed:
            self.on_change()
            return True
        return False

    def _retry_refused(self) -> None:
        """Ask again about the versions `accept` refused, until no more is taken: one taken
        version (a file that shrank) can make room for another (the label budget)."""
        retried = True
        while retried and self._refused:
            retried = any([self._poll_one(spec, again=True) for spec in self._specs if spec.group in self._refused])

    def _poll_one(self, spec: TargetFile, again: bool = False) -> bool:
        """Read the file if it changed (or, with `again`, in any case); True if a new list was taken.

        A version that cannot be read or parsed stays refused until the file changes; one that
        `accept` refused is asked about again (see the class). Either is counted once.
        """
        sig = _signature(spec.path)
        key = spec.group
        if not again and key in self._seen and self._seen[key] == sig:
            return False
        new_version = not (key in self._seen and self._seen[key] == sig)
        self._seen[key] = sig
        self._refused.discard(key)
        try:
            try:
                with open(spec.path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise DiscoveryError(f"cannot read: {exc}") from None
            found = parse_file_sd(text, spec)
            problem = self.accept({**self._targets, key: found})
            if problem:
                self._refused.add(key)
                raise DiscoveryError(problem)
        except DiscoveryError as exc:
            self.metrics.ok.labels(key).set(0)
            if new_version:
                self.metrics.errors.labels(key).inc()
                kept = len(self._targets.get(key, ()))
                log.error("target file %s (group %s): %s; keeping the last good list (%d targets)",
                          spec.path, key, exc, kept)
            return False
        self.metrics.ok.labels(key).set(1)
        if self._targets.get(key) == found:
            return False
        self._targets[key] = found
        self.metrics.discovered.labels(key).set(len(found))
        log.info("target file %s (group %s): %d targets", spec.path, key, len(found))
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="target-files", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                wait = min((s.refresh_interval for s in self._specs), default=5.0)
            if self._stop.wait(wait):
                return
            try:
                self.poll()
            except Exception:  # the poller must outlive any surprise
                log.exception("target file poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
