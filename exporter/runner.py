"""One scenario run against one target: warm-ups, repeats, concurrency batches."""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Callable, Iterable, Optional

from .config import Case, Scenario, Target
from .conversation import run_conversation
from .ollama import OllamaClient, OllamaError, same_model
from .probe import run_probe
from .results import BatchSummary, ProbeResult, RunSummary, batch_output_tokens_per_s
from .sinks import FanOut, Sink

log = logging.getLogger(__name__)

# Without the running-models list, a load this long means the model was not resident.
COLD_LOAD_FALLBACK_S = 0.5
# A model due to expire within this margin is treated as already gone.
UNLOAD_MARGIN_S = 1.0
# Without the running-models list and without a load time (OpenAI-compatible servers other than
# Ollama), a TTFT this many times the case's warm median, and at least COLD_LOAD_FALLBACK_S
# above it, means the model was loaded for this request.
COLD_TTFT_FACTOR = 3.0
WARM_HISTORY = 20  # warm TTFTs kept per case
WARM_HISTORY_MIN = 3  # below this many, a request counts as warm


class WarmHistory:
    """The last warm TTFTs of each (target, scenario, case): the last judge of a cold start."""

    def __init__(self, max_keys: int = 10000):
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._ttfts: OrderedDict[tuple, deque] = OrderedDict()

    def cold(self, key: tuple, ttft: float) -> bool:
        """Judge one TTFT against the history, and keep it if it was warm."""
        with self._lock:
            history = self._ttfts.get(key)
            if history is None:
                history = self._ttfts[key] = deque(maxlen=WARM_HISTORY)
                if len(self._ttfts) > self.max_keys:
                    self._ttfts.popitem(last=False)
            median = statistics.median(history) if len(history) >= WARM_HISTORY_MIN else None
            cold = median is not None and ttft >= COLD_TTFT_FACTOR * median and ttft - median >= COLD_LOAD_FALLBACK_S
            if not cold:
                history.append(ttft)
            return cold


WARM_TTFTS = WarmHistory()


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


class LoadedContext:
    """The context length the server reports for the scenario's model, asked once per batch,
    after the batch's first request has ended (so a cold request's fresh load is what counts).
    None where the server has no running-models list, does not give the length, or has already
    unloaded the model (keep_alive 0)."""

    def __init__(self, client: OllamaClient, model: str):
        self.client, self.model = client, model
        self._lock = threading.Lock()
        self._asked = False
        self._value: Optional[int] = None

    def get(self) -> Optional[int]:
        with self._lock:
            if not self._asked:
                self._asked = True
                try:
                    running = self.client.running_models()
                except OllamaError:
                    running = []
                self._value = next((m.context_length for m in running if same_model(m.name, self.model)), None)
            return self._value


def _label_start(result: ProbeResult, loaded_before: Optional[bool]) -> None:
    """Cold or warm: from the server's running-models list (Ollama's /api/ps, on either API)
    where it answered; else from the server's load time (Ollama's native API); else (a server
    with neither, such as most OpenAI-compatible ones) from the TTFT against the case's warm
    history (WarmHistory)."""
    if loaded_before is not None:
        cold = not loaded_before
    elif result.load_duration_s is not None or result.api != "openai":
        cold = (result.load_duration_s or 0.0) >= COLD_LOAD_FALLBACK_S
    elif result.ok and result.ttft_s is not None:
        cold = WARM_TTFTS.cold((result.target, result.scenario, result.case, result.turn), result.ttft_s)
    else:
        cold = False
    result.start = "cold" if cold else "warm"


def planned_requests(scenario: Scenario) -> int:
    """Requests one run of the scenario sends on one target, warm-ups excluded."""
    return sum(max(len(c.turns), 1) for c in scenario.cases) * scenario.repeats * sum(scenario.concurrency)


def _probe(client: OllamaClient, scenario: Scenario, case: Case, **kw) -> list[ProbeResult]:
    """One probe of a case: one request, or a conversation's turns."""
    if case.turns:
        return run_conversation(client, scenario, case, **kw)
    return [run_probe(client, scenario, case, **kw)]


class ScenarioRunner:
    """Runs a scenario once against one target and hands every record to the sinks."""

    def __init__(
        self,
        scenario: Scenario,
        target: Target,
        sinks: Iterable[Sink],
        stop: Optional[threading.Event] = None,
        client_factory: Callable[[Target], OllamaClient] = OllamaClient,
    ):
        self.scenario = scenario
        self.target = target
        self.sinks = FanOut(sinks)
        self.stop = stop or threading.Event()
        self.client = client_factory(target)
        self.run_id = uuid.uuid4().hex[:12]
        self._batch_seq = 0
        self._requests = 0
        self._failures = 0
        self._remote_warned = False
        # Batch threads hand over their results as they finish (so a shutdown mid-batch
        # keeps every finished request); sinks see one result at a time.
        self._emit_lock = threading.Lock()

    def _emit(self, result: ProbeResult) -> None:
        with self._emit_lock:
            self._requests += 1
            if not result.ok:
                self._failures += 1
                log.warning(
                    "probe failed: target=%s scenario=%s case=%s reason=%s: %s",
                    result.target, result.scenario, result.case, result.reason, result.error,
                )
            if result.remote_host and not self._remote_warned:
                self._remote_warned = True
                log.warning(
                    "target %s scenario %s: model %s is a remote model served by %s; its timings are that "
                    "service's plus the network, not this server's (remote_host in the results file)",
                    result.target, result.scenario, result.model, result.remote_host,
                )
            self.sinks.on_result(result)

    def _warm_up(self, case: Case) -> None:
        for _ in range(self.scenario.warmup):
            if self.stop.is_set():
                return
            for r in _probe(self.client, self.scenario, case, run_id=self.run_id):
                if not r.ok:
                    log.info("warm-up failed: target=%s scenario=%s reason=%s", r.target, r.scenario, r.reason)

    def _batch(self, case: Case, level: int) -> None:
        """One batch of `level` requests; more than one are released together by a barrier."""
        loaded = model_is_loaded(self.client, self.scenario.model)
        context = LoadedContext(self.client, self.scenario.model)
        self._batch_seq += 1
        batch_id = self._batch_seq
        barrier = threading.Barrier(level)
        results: list[list[ProbeResult]] = [[] for _ in range(level)]

        def one(i: int) -> None:
            if level > 1:
                try:
                    barrier.wait(timeout=30)
                except threading.BrokenBarrierError:
                    pass
            for r in _probe(self.client, self.scenario, case, concurrency=level, batch=batch_id, run_id=self.run_id):
                # A conversation's later turns follow its first on a model that is loaded by then.
                _label_start(r, loaded if r.turn in (None, 1) or loaded is None else True)
                # A server without a running-models list (loaded is None) is not asked again.
                r.context_length = context.get() if loaded is not None else None
                self._emit(r)
                results[i].append(r)

        if level == 1:
            one(0)  # a lone request needs no thread
        else:
            threads = [threading.Thread(target=one, args=(i,), name=f"probe-{self.scenario.name}-{i}", daemon=True)
                       for i in range(level)]
            for t in threads:
                t.start()
            for t in threads:
                # A probe is bounded by the scenario timeout; the margin covers connect and thread start.
                t.join(self.scenario.timeout + 60)
        self._emit_batch(case, level, [r for rs in results for r in rs])

    def _emit_batch(self, case: Case, level: int, results: list[ProbeResult]) -> None:
        self.sinks.on_batch(BatchSummary(
            target=self.target.name,
            scenario=self.scenario.name,
            model=self.scenario.model,
            case=case.name,
            concurrency=level,
            requests=len(results),
            failures=sum(1 for r in results if not r.ok),
            output_tokens_per_s=batch_output_tokens_per_s(results),
        ))

    def run(self) -> RunSummary:
        started = time.time()
        for case in self.scenario.cases:
            if self.stop.is_set():
                break
            self._warm_up(case)
            for level in self.scenario.concurrency:
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
        self.sinks.on_run(summary)
        return summary
