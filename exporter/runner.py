"""One scenario run against one target: warm-ups, repeats, concurrency batches."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Iterable, Optional, Protocol

from .config import Case, Scenario, Target
from .ollama import OllamaClient, OllamaError, same_model
from .probe import run_probe
from .results import BatchSummary, ProbeResult, RunSummary, batch_output_tokens_per_s

log = logging.getLogger(__name__)

# Without the running-models list, a load this long means the model was not resident.
COLD_LOAD_FALLBACK_S = 0.5
# A model due to expire within this margin is treated as already gone.
UNLOAD_MARGIN_S = 1.0


class Sink(Protocol):
    def on_result(self, result: ProbeResult) -> None: ...
    def on_batch(self, batch: BatchSummary) -> None: ...
    def on_run(self, run: RunSummary) -> None: ...


class CollectingSink:
    """Keeps every record, batch and run summary; optionally passes each record on."""

    def __init__(self, on_result: Optional[Callable[[ProbeResult], None]] = None):
        self.results: list[ProbeResult] = []
        self.batches: list[BatchSummary] = []
        self.runs: list[RunSummary] = []
        self._on_result = on_result

    def on_result(self, result: ProbeResult) -> None:
        self.results.append(result)
        if self._on_result:
            self._on_result(result)

    def on_batch(self, batch: BatchSummary) -> None:
        self.batches.append(batch)

    def on_run(self, run: RunSummary) -> None:
        self.runs.append(run)


def model_is_loaded(client: OllamaClient, model: str) -> Optional[bool]:
    """True/False from the server's running-models list; None if the server would not say.

    A model listed with an expiry in the next moment is being unloaded (keep_alive 0
    or an expired timer): the next request will load it again, so it counts as not loaded.
    """
    try:
        running = client.running_models()
    except OllamaError:
        return None
    now = time.time()
    for m in running:
        if same_model(m.name, model):
            return not m.leaving(now, UNLOAD_MARGIN_S)
    return False


def _label_start(result: ProbeResult, loaded_before: Optional[bool]) -> None:
    if loaded_before is None:
        cold = (result.load_duration_s or 0.0) >= COLD_LOAD_FALLBACK_S
    else:
        cold = not loaded_before
    result.start = "cold" if cold else "warm"


class ScenarioRunner:
    """Runs a scenario once against one target and hands every record to the sinks."""

    def __init__(
        self,
        scenario: Scenario,
        target: Target,
        sinks: Iterable[Sink],
        stop: Optional[threading.Event] = None,
        client_factory: Callable[[Target], OllamaClient] = OllamaClient,
        progress: Optional[Callable[[ProbeResult], None]] = None,
    ):
        self.scenario = scenario
        self.target = target
        self.sinks = list(sinks)
        self.stop = stop or threading.Event()
        self.client = client_factory(target)
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:12]
        self._batch_seq = 0
        self._requests = 0
        self._failures = 0
        # Batch threads hand over their results as they finish (so a shutdown mid-batch
        # keeps every finished request); sinks see one result at a time.
        self._emit_lock = threading.Lock()

    def planned_requests(self) -> int:
        s = self.scenario
        return len(s.cases) * s.repeats * sum(s.concurrency)

    def _emit(self, result: ProbeResult) -> None:
        with self._emit_lock:
            self._emit_locked(result)

    def _emit_locked(self, result: ProbeResult) -> None:
        self._requests += 1
        if not result.ok:
            self._failures += 1
            log.warning(
                "probe failed: target=%s scenario=%s case=%s reason=%s: %s",
                result.target, result.scenario, result.case, result.reason, result.error,
            )
        for sink in self.sinks:
            try:
                sink.on_result(result)
            except Exception:
                log.exception("sink %r failed on a result", sink)
        if self.progress:
            self.progress(result)

    def _warm_up(self, case: Case) -> None:
        for _ in range(self.scenario.warmup):
            if self.stop.is_set():
                return
            r = run_probe(self.client, self.scenario, case, run_id=self.run_id)
            if not r.ok:
                log.info("warm-up failed: target=%s scenario=%s reason=%s", r.target, r.scenario, r.reason)

    def _sequential(self, case: Case) -> None:
        for _ in range(self.scenario.repeats):
            if self.stop.is_set():
                return
            loaded = model_is_loaded(self.client, self.scenario.model)
            self._batch_seq += 1
            r = run_probe(self.client, self.scenario, case, concurrency=1, batch=self._batch_seq, run_id=self.run_id)
            _label_start(r, loaded)
            self._emit(r)
            self._emit_batch(case, 1, [r])

    def _batch(self, case: Case, level: int) -> None:
        """All requests of a batch are released together by a barrier."""
        loaded = model_is_loaded(self.client, self.scenario.model)
        self._batch_seq += 1
        batch_id = self._batch_seq
        barrier = threading.Barrier(level)
        results: list[Optional[ProbeResult]] = [None] * level

        def one(i: int) -> None:
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            r = run_probe(self.client, self.scenario, case, concurrency=level, batch=batch_id, run_id=self.run_id)
            _label_start(r, loaded)
            self._emit(r)
            results[i] = r

        threads = [threading.Thread(target=one, args=(i,), name=f"probe-{self.scenario.name}-{i}", daemon=True) for i in range(level)]
        for t in threads:
            t.start()
        for t in threads:
            # A probe is bounded by the scenario timeout; the margin covers connect and thread start.
            t.join(self.scenario.timeout + 60)
        self._emit_batch(case, level, [r for r in results if r is not None])

    def _emit_batch(self, case: Case, level: int, results: list[ProbeResult]) -> None:
        summary = BatchSummary(
            target=self.target.name,
            scenario=self.scenario.name,
            model=self.scenario.model,
            case=case.name,
            concurrency=level,
            requests=len(results),
            failures=sum(1 for r in results if not r.ok),
            output_tokens_per_s=batch_output_tokens_per_s(results),
        )
        for sink in self.sinks:
            try:
                sink.on_batch(summary)
            except Exception:
                log.exception("sink %r failed on a batch", sink)

    def run(self) -> RunSummary:
        started = time.time()
        for case in self.scenario.cases:
            if self.stop.is_set():
                break
            self._warm_up(case)
            for level in self.scenario.concurrency:
                if self.stop.is_set():
                    break
                if level == 1:
                    self._sequential(case)
                else:
                    for _ in range(self.scenario.repeats):
                        if self.stop.is_set():
                            break
                        self._batch(case, level)
        summary = RunSummary(
            target=self.target.name,
            scenario=self.scenario.name,
            run_id=self.run_id,
            started_at=started,
            ended_at=time.time(),
            requests=self._requests,
            failures=self._failures,
            stopped=self.stop.is_set(),
        )
        for sink in self.sinks:
            try:
                sink.on_run(summary)
            except Exception:
                log.exception("sink %r failed on a run", sink)
        return summary
