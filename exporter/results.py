"""The result record, and the JSON-lines file that keeps every one of them.

Every number the exporter shows starts life in a ProbeResult. Metrics, the
results file and the bench report are views of these records.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

log = logging.getLogger(__name__)

ANSWER_HEAD_CHARS = 200
ANSWER_HASH_CHARS = 16

# The fixed set of failure reasons (docs/architecture.md); metric labels only ever take these.
FAILURE_REASONS = (
    "connection",
    "timeout",
    "model_not_found",
    "server_busy",
    "http_error",
    "stream_error",
    "malformed_response",
    "empty_response",
    "context_exceeded",
)


@dataclass
class ProbeResult:
    """One request, from the client's clock and the server's own timings."""

    target: str
    scenario: str
    model: str
    case: str
    concurrency: int = 1
    api: str = "generate"
    start: str = "warm"  # "cold" when the model had to be loaded for this request
    batch: int = 0  # requests of one concurrency batch share a batch number within a run
    run_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    prompt_chars: int = 0
    # Wall clock (Unix seconds) for humans and joins; durations come from the monotonic clock.
    started_at: float = 0.0
    ended_at: float = 0.0
    ok: bool = False
    reason: Optional[str] = None
    error: Optional[str] = None
    http_status: Optional[int] = None
    # client clock, from the moment the request is sent
    connect_duration_s: Optional[float] = None  # opening the connection, before the clock starts
    # When the request started to go out, on this process's time.monotonic() clock (the
    # zero of ttft_s and request_duration_s); not written to the results file.
    sent_at_monotonic: Optional[float] = None
    ttft_s: Optional[float] = None
    request_duration_s: Optional[float] = None
    inter_token_gaps_s: list[float] = field(default_factory=list)
    # The read that delivered the first token also delivered later data, so its receive stamp
    # belonged to that data and was only an upper bound (a reading thread that woke late, on a
    # busy host). None where the reader cannot tell (the http.client reader) or no token came;
    # absent from older results files.
    first_token_stamp_late: Optional[bool] = None
    # ... and its time was recovered from the server's own created_at spacing (readtimes.py);
    # False for a late first token left at its upper bound.
    first_token_recovered: Optional[bool] = None
    output_chunks: int = 0
    response_chars: int = 0
    # Thinking models stream their reasoning (`thinking`) before the answer: when each began
    # (client clock, from the request's send like ttft_s) and how many chunks of reasoning
    # (one token each). None / 0 for a model that does not think.
    first_thinking_s: Optional[float] = None
    first_answer_s: Optional[float] = None
    thinking_tokens: int = 0
    # server timings (seconds) and counts; any may be missing (Ollama omits zero values)
    load_duration_s: Optional[float] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration_s: Optional[float] = None
    eval_count: Optional[int] = None
    eval_duration_s: Optional[float] = None
    total_duration_s: Optional[float] = None
    done_reason: Optional[str] = None
    # Prompt tokens served from the server's prompt cache: as the server reports them
    # (OpenAI `usage.prompt_tokens_details.cached_tokens`), else estimated for a conversation's
    # later turns (conversation.py); `cache_source` says which ("server", "count", "timing").
    cached_prompt_tokens: Optional[int] = None
    cache_source: Optional[str] = None
    # The context the model was loaded with when the request ended, from the server's
    # running-models list (Ollama's /api/ps `context_length`): since 0.15.5 Ollama picks it by
    # VRAM when num_ctx is not set, so the same scenario can run with 4k on one server and 256k
    # on another. None where the server does not say.
    context_length: Optional[int] = None
    # Remote (cloud) models answer through the local server (Ollama 0.12.0 and later): the
    # host that really generated the answer, from the response's `remote_host`. Its timings
    # are the remote service's plus the network, not this server's.
    remote_host: Optional[str] = None
    # A conversation (a case with turns): this request's turn, 1-based; None for a single prompt.
    turn: Optional[int] = None
    # A correctness canary (a case with expect): whether the answer matched; the answer itself
    # is kept only as a short hash and its first ANSWER_HEAD_CHARS characters.
    answer_matched: Optional[bool] = None
    answer_sha256: Optional[str] = None
    answer_head: Optional[str] = None
    # Structured output asked for (the case's `format`): "json" or "schema"; None for free text.
    # Only the kind: a schema is config, not a measurement, and never becomes a label.
    structured_output: Optional[str] = None

    # ---- derived views; computed, never stored separately ----
    @property
    def output_tokens_per_s(self) -> Optional[float]:
        """Server decode speed."""
        if self.eval_count and self.eval_duration_s:
            return self.eval_count / self.eval_duration_s
        return None

    @property
    def prompt_tokens_per_s(self) -> Optional[float]:
        """Server prefill speed."""
        if self.prompt_eval_count and self.prompt_eval_duration_s:
            return self.prompt_eval_count / self.prompt_eval_duration_s
        return None

    @property
    def prompt_size_tokens(self) -> Optional[int]:
        """The whole prompt in tokens: the server's count, plus the cached part where the server
        counted only the tokens it evaluated (cache_source "count")."""
        if self.prompt_eval_count is None:
            return None
        if self.cache_source == "count" and self.cached_prompt_tokens:
            return self.prompt_eval_count + self.cached_prompt_tokens
        return self.prompt_eval_count

    @property
    def time_per_output_token_s(self) -> Optional[float]:
        tokens = self.eval_count or self.output_chunks
        if self.ttft_s is None or self.request_duration_s is None or tokens < 2:
            return None
        return max(self.request_duration_s - self.ttft_s, 0.0) / (tokens - 1)

    @property
    def client_tokens_per_s(self) -> Optional[float]:
        """Decode speed seen by the client: streamed chunks after the first over their span."""
        span = sum(self.inter_token_gaps_s)
        if len(self.inter_token_gaps_s) < 1 or span <= 0:
            return None
        return len(self.inter_token_gaps_s) / span

    @property
    def queue_duration_s(self) -> Optional[float]:
        """Client end-to-end minus server total: time queued and in transport."""
        if self.request_duration_s is None or self.total_duration_s is None:
            return None
        return max(self.request_duration_s - self.total_duration_s, 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["sent_at_monotonic"]  # meaningless outside this process
        d["inter_token_gaps_s"] = [round(g, 7) for g in self.inter_token_gaps_s]
        d["output_tokens_per_s"] = self.output_tokens_per_s
        d["prompt_tokens_per_s"] = self.prompt_tokens_per_s
        d["time_per_output_token_s"] = self.time_per_output_token_s
        d["client_tokens_per_s"] = self.client_tokens_per_s
        d["queue_duration_s"] = self.queue_duration_s
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class BatchSummary:
    target: str
    scenario: str
    model: str
    case: str
    concurrency: int
    requests: int
    failures: int
    output_tokens_per_s: Optional[float]


@dataclass
class RunSummary:
    target: str
    scenario: str
    run_id: str
    started_at: float
    ended_at: float
    requests: int
    failures: int
    stopped: bool = False

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def success(self) -> bool:
        return self.failures == 0 and self.requests > 0


def batch_output_tokens_per_s(records: Iterable[ProbeResult]) -> Optional[float]:
    """Aggregate decode throughput of one batch: all output tokens over the batch's wall time."""
    records = list(records)
    if not records:
        return None
    tokens = sum((r.eval_count or r.output_chunks) for r in records if r.ok)
    wall = max(r.ended_at for r in records) - min(r.started_at for r in records)
    if wall <= 0 or tokens == 0:
        return None
    return tokens / wall


class ResultsWriter:
    """Appends one JSON line per record.

    Each line goes out in a single os.write on an O_APPEND descriptor, so a crash
    leaves at most the line being written torn, never an earlier one; the reader
    skips a torn line. A failed write (disk full, read-only) is logged and
    reported by write() returning False, never raised into the probe.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: Optional[int] = None, keep: int = 5):
        self.path = Path(path)
        # Size-based rotation: PATH -> PATH.1 -> ... -> PATH.<keep>; the oldest is dropped.
        self.max_bytes = max_bytes
        self.keep = keep
        self._size = 0
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._closed = False

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            # A previous crash may have left a torn line without its newline: end it,
            # so our first record starts on a line of its own.
            if self._size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._size += os.write(self._fd, b"\n")
        return self._fd

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = None
        if self.keep < 1:
            os.unlink(self.path)
            return
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write(self, record: ProbeResult) -> bool:
        """True if the line is in the file; False (logged) if it could not be written."""
        return self._write(record.to_dict())

    def write_acceptance(self, a: "Acceptance") -> bool:
        """Record that the user accepted a new level (LiveStats.rebuild replays it)."""
        return self._write(a.to_dict())

    def _write(self, d: dict) -> bool:
        line = (json.dumps(d, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self._closed:
                # Shutting down: a probe that outlived the grace period is not recorded.
                return False
            try:
                fd = self._open()
                if self.max_bytes and self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                    fd = self._open()
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    self._size += n
                return True
            except (OSError, ValueError) as exc:
                log.error("cannot write results file %s: %s", self.path, exc)
                return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None


def read_results(path: str | os.PathLike) -> Iterator[ProbeResult]:
    """Yield every complete record; skip a torn or garbled line instead of failing."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n") or not raw.strip():
                if raw.strip():
                    log.warning("%s:%d: skipping incomplete last line", path, lineno)
                continue
            try:
                d = json.loads(raw)
                if not isinstance(d, dict):
                    raise ValueError("not an object")
                if d.get("kind") == ACCEPT:
                    continue  # an acceptance of a new regression reference, not a request
                yield ProbeResult.from_dict(d)
            except (ValueError, TypeError) as exc:
                log.warning("%s:%d: skipping unreadable line: %s", path, lineno, exc)


def parse_results_line(line: bytes) -> Optional[ProbeResult]:
    """One results-file line -> a record; None for a blank, torn or garbled one, or an acceptance."""
    try:
        d = json.loads(line)
        return ProbeResult.from_dict(d) if isinstance(d, dict) and d.get("kind") != ACCEPT else None
    except (ValueError, TypeError):
        return None


ACCEPT = "accept"
SCOPE = ("target", "scenario", "model", "case", "concurrency", "start", "quantity")


@dataclass
class Acceptance:
    """A results-file line that is not a request: the user accepted the current level of the series
    in scope as their new regression reference (every field left None matches anything)."""

    at: float
    target: Optional[str] = None
    scenario: Optional[str] = None
    model: Optional[str] = None
    case: Optional[str] = None
    concurrency: Optional[str] = None
    start: Optional[str] = None
    quantity: Optional[str] = None

    def matches(self, key: tuple) -> bool:
        """key: (target, scenario, model, case, concurrency, start, quantity) of a live series."""
        return all(want is None or str(want) == got for want, got in zip((getattr(self, f) for f in SCOPE), key))

    def to_dict(self) -> dict:
        return {"kind": ACCEPT, "at": self.at, **{f: getattr(self, f) for f in SCOPE if getattr(self, f) is not None}}

    @classmethod
    def from_dict(cls, d: dict) -> "Acceptance":
        return cls(at=float(d["at"]), **{f: (str(d[f]) if d.get(f) is not None else None) for f in SCOPE})


def parse_acceptance_line(line: bytes) -> Optional[Acceptance]:
    """An acceptance line -> Acceptance; None for anything else. Cheap on request lines."""
    if b'"kind":"accept"' not in line:
        return None
    try:
        d = json.loads(line)
        return Acceptance.from_dict(d) if isinstance(d, dict) and d.get("kind") == ACCEPT else None
    except (ValueError, TypeError, KeyError):
        return None


def iter_lines(path: Path, start: int) -> Iterator[bytes]:
    """The complete lines of a file from byte `start` (the first, partial, line skipped when
    start > 0), streamed in blocks: memory does not grow with the file."""
    with open(path, "rb") as f:
        f.seek(start)
        if start > 0:
            f.readline()
        for line in f:
            if line.endswith(b"\n"):
                yield line[:-1]


def read_tail_lines(path: Path, budget: int) -> tuple[Iterator[bytes], int]:
    """The complete lines of the last `budget` bytes of a file, oldest first, one at a time
    (the bytes read are held once, never split into a list)."""
    try:
        size = path.stat().st_size
    except OSError:
        return iter(()), 0
    start = max(size - budget, 0)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(size - start)

    def lines() -> Iterator[bytes]:
        pos = 0
        if start > 0:  # the first line began before the tail
            pos = data.find(b"\n") + 1
            if pos == 0:
                return
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                return  # a torn last line
            yield data[pos:end]
            pos = end + 1

    return lines(), len(data)


def results_file_parts(path: Path) -> Iterator[Path]:
    """PATH, then its rotated files PATH.1, PATH.2, ... (newest first) while they exist."""
    yield path
    for i in itertools.count(1):
        part = path.with_name(f"{path.name}.{i}")
        if not part.exists():
            return
        yield part
