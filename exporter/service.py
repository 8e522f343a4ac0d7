"""The long-running exporter: wires config -> scheduler -> probe -> sinks, and reloads."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from prometheus_client import CollectorRegistry

from .config import Config, ConfigError, load_file, resolve_targets
from .discovery import DiscoveryMetrics, TargetDiscovery
from .exposition import CachedExposition
from .http import LandingPage
from .keyspace import Keyspace
from .live_stats import LiveStats
from .metrics import ExporterMetrics, ProbeMetrics
from .results import Acceptance, ResultsWriter
from .scheduler import ProbeScheduler
from .server_stats import ServerStats
from .shard import Shard
from .sinks import ResultsFileSink, Sink
from .state import StateStore

log = logging.getLogger(__name__)


class Exporter:
    def __init__(
        self,
        config_path: Optional[str],
        config: Config,
        results_path: Optional[str] = None,
        registry: Optional[CollectorRegistry] = None,
        results_max_bytes: Optional[int] = None,
        results_keep: int = 5,
        shard: Shard = Shard(),
    ):
        self.config_path = config_path
        self.shard = shard
        # `base_config` is the file as loaded; `config` adds the discovered targets and the shard.
        self.base_config = config
        self.config = config
        # The exporter's own health lives on a prometheus_client registry; every probe and
        # server series lives in the state store, which holds only the current config's keys.
        self.registry = registry or CollectorRegistry()
        self.exporter_metrics = ExporterMetrics(self.registry)
        self.store = StateStore()
        self.probe_metrics = ProbeMetrics(self.store)
        self.live_stats = LiveStats(self.store)
        self.registry.register(self.live_stats.settings_collector)
        self.server_stats = ServerStats(self.store)
        self.writer = (ResultsWriter(results_path, max_bytes=results_max_bytes, keep=results_keep)
                       if results_path else None)
        self.exposition = CachedExposition(self.registry, self.store)
        sinks: list[Sink] = [self.probe_metrics, self.live_stats, self.exposition]
        if self.writer:
            sinks.append(ResultsFileSink(self.writer, self.exporter_metrics.results_lines,
                                         self.exporter_metrics.results_errors))
        self.scheduler = ProbeScheduler(sinks, self._skipped, self._poll_all, self._poll_target)
        self._reload_lock = threading.Lock()
        self.discovery = TargetDiscovery(DiscoveryMetrics(self.registry), self._targets_changed, self._check_targets)
        self.discovery.configure(config.target_files)
        self._install(config)
        self.results_path = results_path
        self.rebuilt = threading.Event()  # the live statistics are replayed; probes may run
        self._stopped = False
        self._reload_pending = False  # a reload asked for while the rebuild ran
        self._start_lock = threading.Lock()  # shutdown against the start that follows the rebuild

    def _resolve(self, config: Config, discovered=None) -> Config:
        discovered = self.discovery.current() if discovered is None else discovered
        return resolve_targets(config, discovered, self.shard.owns)

    def _check_targets(self, discovered, base: Optional[Config] = None) -> Optional[str]:
        """Why these discovered targets cannot run with `base` (default: the running config), or None."""
        try:
            self._resolve(self.base_config if base is None else base, discovered)
        except ConfigError as exc:
            return "; ".join(exc.problems)
        return None

    def _targets_changed(self) -> None:
        with self._reload_lock:
            self._install(self.base_config, loaded=False)

    def _poll_all(self) -> None:
        self.server_stats.poll()
        self.exposition.invalidate()

    def _poll_target(self, target) -> None:
        self.server_stats.poll_target(target)
        self.exposition.invalidate()

    def _skipped(self, target: str, scenario: str) -> None:
        self.probe_metrics.skipped(target, scenario)
        self.exposition.invalidate()

    def _install(self, base: Config, loaded: bool = True) -> None:
        """Use `base` with the current discovered targets (checked by `_check_targets` already);
        `loaded` is False when only the target files changed, not the config."""
        self.base_config = base
        config = self.config = self._resolve(base)
        # One step: from here on, a record or a poll for a key the config no longer has is
        # dropped by the store, and /metrics holds exactly this config's keys.
        self.store.swap(Keyspace.of(config))
        self.live_stats.configure(config)  # each scenario's regression settings (before a rebuild replays)
        self.server_stats.set_targets(config.targets)
        self.scheduler.apply(config)
        if loaded:
            self.exporter_metrics.reload_ok.set(1)
            self.exporter_metrics.reload_time.set(time.time())
        self.exporter_metrics.label_combinations.set(config.label_combinations)
        self.exposition.invalidate()

    def rebuild(self) -> None:
        """Replay the results file into the live statistics: a restart must not reset the
        baseline that regressions are judged against. The key space is in place, so only the
        current config's cases are rebuilt. A reload asked for meanwhile runs after it. Whatever
        goes wrong, the exporter goes on with what was rebuilt (a history builds up again from
        new runs) rather than never probing."""
        if self.results_path and not self.rebuilt.is_set():
            try:
                with self._reload_lock:
                    self.live_stats.rebuild(self.results_path)
            except Exception:
                log.exception("cannot rebuild live statistics from %s; going on without the rest of them",
                              self.results_path)
            self.exposition.invalidate()
        with self._start_lock:
            self.rebuilt.set()
            pending, self._reload_pending = self._reload_pending, False
        if pending:
            self.reload()

    def start(self) -> None:
        """Rebuild, then probe, on a thread of its own: /metrics is served meanwhile (four weeks of
        results take minutes to replay, and an exporter that answers no scrape for that long is
        down to Prometheus). No probe runs before the rebuild: its runs must come after the
        replayed ones."""
        def begin() -> None:
            self.rebuild()
            with self._start_lock:
                if self._stopped:
                    return
                self.scheduler.start()
                self.discovery.start()
            shard = f" (shard {self.shard.index} of {self.shard.count})" if self.shard.count > 1 else ""
            log.info(
                "probing %d scenario(s) on %d target(s) from %s%s",
                len(self.config.scenarios), len(self.config.targets), self.config.source, shard,
            )

        if self.results_path:
            threading.Thread(target=begin, name="start", daemon=True).start()
        else:
            begin()  # nothing to replay

    def ready(self) -> bool:
        return self.rebuilt.is_set() and self.scheduler.running and not self.scheduler.stop.is_set()

    def reload(self) -> tuple[bool, str]:
        """Re-read the config file; a bad one is refused and the running config stays. While the
        rebuild at start-up runs (minutes, holding the lock), it is queued, not waited for."""
        if not self.rebuilt.is_set() and self.results_path:
            with self._start_lock:
                if not self.rebuilt.is_set():
                    self._reload_pending = True
                    return True, "the live statistics are being rebuilt; the config is reloaded right after"
        with self._reload_lock:
            try:
                config = load_file(self.config_path)
                # The target files are judged by the config being loaded (its budget, its names).
                self.discovery.configure(config.target_files, lambda found: self._check_targets(found, config))
                try:
                    self._resolve(config)
                except ConfigError:
                    self.discovery.configure(self.base_config.target_files, self._check_targets)
                    raise
            except ConfigError as exc:
                self.exporter_metrics.reload_ok.set(0)
                self.exposition.invalidate()
                log.error("reload refused, keeping the running config: %s", exc)
                return False, str(exc)
            self._install(config)
            log.info("config reloaded from %s", config.source)
            return True, f"reloaded {len(config.scenarios)} scenario(s) from {config.source}"

    def landing(self) -> "LandingPage":
        return LandingPage.of(self.config)

    def app(self):
        """The WSGI app serving this exporter."""
        from .http import create_app

        return create_app(self.exposition, reload=self.reload, ready=self.ready, landing=self.landing,
                          accept=self.accept)

    def accept(self, scope: dict) -> tuple[int, str]:
        """Accept the current level of the series in scope as their new regression reference:
        recorded in the results file (a restart replays it), then applied. Returns (series, message);
        series is -1 while the rebuild at start-up runs (an acceptance then would land among the
        replayed runs)."""
        if not self.rebuilt.is_set():
            return -1, "the live statistics are being rebuilt from the results file; try again when /-/ready says ready"
        a = Acceptance(at=time.time(), **scope)
        n = self.live_stats.accept(a)
        what = ", ".join(f"{k}={v}" for k, v in scope.items() if v is not None) or "every series"
        if not n:
            return 0, f"no series with a regression reference matches ({what})"
        self.exposition.invalidate()
        log.info("accepted the current level of %d series (%s) as their regression reference", n, what)
        message = f"accepted the current level of {n} series ({what})"
        if self.writer and not self.writer.write_acceptance(a):
            message += "; the results file could not record it, so a restart will not keep it"
        return n, message

    def shutdown(self, grace: float = 10.0) -> bool:
        """Stop probing; True if every run ended within the grace period."""
        with self._start_lock:
            self._stopped = True
        self.discovery.stop()
        finished = self.scheduler.shutdown(grace)
        if not finished:
            log.warning("some probe runs were still going after %.0fs; their unfinished requests are not recorded",
                        grace)
        if self.writer:
            self.writer.close()
        self.exposition.close()
        return finished
