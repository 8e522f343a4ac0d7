"""Scenario YAML -> validated, expanded configuration.

Parsing is strict (unknown keys are errors) and every problem is collected
before reporting, so a user fixes a file in one pass instead of one error at a
time. Sweeps are expanded here, so the rest of the program only ever sees
concrete cases, and the label budget is enforced before anything starts.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
# Inside the package as a link to scenarios/default.yaml; a wheel build copies the file in.
DEFAULT_CONFIG_RESOURCE = "default.yaml"
# A config that would create more label combinations than this is refused: each
# combination is a dozen histograms of ~20 buckets, so 2000 is ~500k samples per scrape.
DEFAULT_MAX_LABEL_COMBINATIONS = 2000
LABEL_VALUE_MAX_LEN = 64
MAX_DURATION_S = 366 * 86400
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@=/+,-]{1,%d}$" % LABEL_VALUE_MAX_LEN)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every one found, each with its path."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


def valid_name(value: str) -> bool:
    """A target, scenario, case or group name: usable as a label value as it is."""
    return bool(_NAME_RE.match(value))


def parse_duration(value: Any) -> float:
    """'90s', '5m', '1h', '250ms' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("duration must be positive and finite")
    if seconds > MAX_DURATION_S:
        raise ValueError("duration must be at most 366 days")
    return seconds


def url_port(url: str) -> int:
    """The TCP port of a URL, the scheme's default when the URL names none."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def default_ollama_url() -> str:
    """$OLLAMA_HOST as Ollama's own tools read it (host, host:port or a URL), else the default."""
    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return DEFAULT_OLLAMA_URL
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):
        has_port = "]:" in hostport
    else:
        has_port = ":" in hostport
    if not has_port:
        hostport += ":11434"
    if hostport.startswith("0.0.0.0"):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0"):]
    return f"{scheme}://{hostport}"


def _valid_regex(v: Optional[str]) -> Optional[str]:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Options(_Strict):
    """Ollama request options; an explicit list so that typos (temprature) are caught."""

    temperature: Optional[float] = Field(None, ge=0)
    seed: Optional[int] = None
    num_predict: Optional[int] = None
    num_ctx: Optional[int] = Field(None, gt=0)
    num_batch: Optional[int] = Field(None, gt=0)
    num_thread: Optional[int] = Field(None, gt=0)
    num_gpu: Optional[int] = None
    num_keep: Optional[int] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    repeat_last_n: Optional[int] = None
    repeat_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    stop: Optional[list[str]] = None

    def merged(self, override: Optional["Options"]) -> "Options":
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_none=True))

    def as_request(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)




class Auth(_Strict):
    """Credentials for a target behind an authenticating proxy, read from the environment or a file."""

    bearer_token_env: Optional[str] = None
    bearer_token_file: Optional[str] = None
    basic_user: Optional[str] = None
    basic_password_env: Optional[str] = None
    basic_password_file: Optional[str] = None


class Target(_Strict):
    name: str = "local"
    url: str = Field(default_factory=default_ollama_url)
    # Regex matched against the command line of local processes to find the server's
    # process tree; null turns process metrics off for this target.
    process_match: Optional[str] = r"(^|/)ollama serve\b"
    auth: Optional[Auth] = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @property
    def port(self) -> int:
        return url_port(self.url)

    @field_validator("process_match")
    @classmethod
    def _regex(cls, v: Optional[str]) -> Optional[str]:
        return _valid_regex(v)


class TargetFile(_Strict):
    """Targets read from a Prometheus file_sd file (JSON or YAML), re-read when it changes.

    `group` is what a scenario's `targets:` names to run on every target of the file. A target
    is named by the `name_label` label of its entry, else by its address. Other labels in the
    file are not exported: metric label sets stay fixed; add labels by relabelling in Prometheus.
    """

    group: str
    path: str = Field(min_length=1)
    refresh_interval: float = 5.0
    name_label: str = "name"
    # For addresses given as host:port; an entry that is a URL keeps its own scheme.
    scheme: Literal["http", "https"] = "http"
    # Discovered servers are usually on other hosts, so no local process tree by default.
    process_match: Optional[str] = None
    auth: Optional[Auth] = None

    @field_validator("refresh_interval", mode="before")
    @classmethod
    def _refresh(cls, v):
        return parse_duration(v)

    @field_validator("process_match")
    @classmethod
    def _regex(cls, v: Optional[str]) -> Optional[str]:
        return _valid_regex(v)


class Schedule(_Strict):
    interval: Optional[float] = None
    cron: Optional[str] = None

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v):
        return None if v is None else parse_duration(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v):
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as exc:
                raise ValueError(f"not a valid crontab expression: {exc}") from None
        return v


class Slo(_Strict):
    """A service-level objective: the share of requests that must be good.

    A request is good when it succeeded and met every threshold given (seconds).
    """

    ttft: Optional[float] = None
    time_per_output_token: Optional[float] = None
    request_duration: Optional[float] = None
    objective: float

    @field_validator("ttft", "time_per_output_token", "request_duration", mode="before")
    @classmethod
    def _threshold(cls, v):
        return None if v is None else parse_duration(v)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v):
        # "99%" and 0.99 mean the same; a bare 99 is refused rather than guessed at.
        if isinstance(v, str) and v.strip().endswith("%"):
            try:
                v = round(float(v.strip()[:-1]) / 100, 12)
            except ValueError:
                raise ValueError(f"expected a percentage such as 99% or a ratio such as 0.99, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a percentage such as 99% or a ratio such as 0.99, got {v!r}")
        if not (0 < v < 1):
            raise ValueError("must be between 0 and 1 (exclusive), e.g. 99% or 0.99")
        return float(v)

    @model_validator(mode="after")
    def _some_threshold(self):
        if self.ttft is None and self.time_per_output_token is None and self.request_duration is None:
            raise ValueError("give at least one of ttft, time_per_output_token, request_duration")
        return self


class Regression(_Strict):
    """A scenario's regression alerts (docs/regression.md): `regression: {recent: 15m, baseline: 7d,
    seasonality: auto, accept_after: 7d}`."""

    recent: float = 15 * 60.0  # the recent window: last max(3 runs, this)
    baseline: float = 7 * 86400.0  # the history the noise and the daily profile are measured on
    seasonality: Literal["auto", "daily", "off"] = "auto"  # compare with the same time of day
    accept_after: float = 7 * 86400.0  # a regression not accepted by then becomes the new normal

    @field_validator("recent", "baseline", "accept_after", mode="before")
    @classmethod
    def _duration(cls, v):
        # Days and weeks too (7d, 2w): these spans are long.
        if isinstance(v, str) and (m := re.match(r"^\s*(\d+(?:\.\d+)?)\s*([dw])\s*$", v)):
            v = float(m.group(1)) * (86400.0 if m.group(2) == "d" else 604800.0)
        return parse_duration(v)

    @model_validator(mode="after")
    def _spans(self):
        if self.baseline < 86400:
            raise ValueError("baseline must be at least 1d: the reference is the day before the recent window")
        if self.recent > 6 * 3600:
            raise ValueError("recent must be at most 6h")
        if self.accept_after < 3600:
            raise ValueError("accept_after must be at least 1h")
        return self


class CaseSpec(_Strict):
    prompt: str = Field(min_length=1)
    system: Optional[str] = None
    options: Optional[Options] = None
    # Overrides the scenario's slo for this case.
    slo: Optional[Slo] = None
    # Repeat the prompt text this many times: a cheap way to build long prompts for
    # prompt-length experiments without pasting pages of text into YAML.
    prompt_repeat: int = Field(1, ge=1, le=10000)


class Sweep(_Strict):
    """Each list multiplies the cases: every case runs at every listed value."""

    temperature: Optional[list[float]] = None
    num_predict: Optional[list[int]] = None
    num_ctx: Optional[list[int]] = None
    top_k: Optional[list[int]] = None
    top_p: Optional[list[float]] = None
    seed: Optional[list[int]] = None
    prompt_repeat: Optional[list[int]] = None


class ScenarioSpec(_Strict):
    name: str
    model: str = Field(min_length=1)
    api: Literal["generate", "chat"] = "generate"
    targets: Optional[list[str]] = None  # default: every target
    schedule: Schedule = Schedule(interval=60.0)
    repeats: int = Field(1, ge=1, le=10000)
    warmup: int = Field(0, ge=0, le=100)
    concurrency: list[int] = Field(default_factory=lambda: [1])
    keep_alive: Any = None
    timeout: float = 120.0
    think: Optional[bool] = None
    # Ollama reuses the KV cache for a prompt prefix it has just seen and then reports
    # the full prompt_eval_count with only the uncached part's duration. A unique tag at
    # the start of every prompt makes each request prefill from scratch.
    unique_prompt: bool = False
    options: Options = Options()
    cases: dict[str, CaseSpec] = Field(min_length=1)
    sweep: Optional[Sweep] = None
    slo: Optional[Slo] = None  # for every case that has none of its own
    regression: Regression = Regression()

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, v):
        # Passed through to Ollama, which takes seconds or a Go duration ("5m", "-1").
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return v
        if isinstance(v, str) and re.match(r"^-?\d+(\.\d+)?(ns|us|ms|s|m|h)?$", v.strip()):
            return v.strip()
        raise ValueError("expected seconds or a duration such as 5m, 0 or -1")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v):
        return parse_duration(v)

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one level")
        if any(c < 1 or c > 256 for c in v):
            raise ValueError("levels must be between 1 and 256")
        if len(set(v)) != len(v):
            raise ValueError("levels must be distinct")
        return v


class Limits(_Strict):
    max_label_combinations: int = Field(DEFAULT_MAX_LABEL_COMBINATIONS, ge=1)


class ServerStatsSpec(_Strict):
    interval: float = 15.0

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v):
        return parse_duration(v)


class FileSpec(_Strict):
    targets: Optional[list[Target]] = None
    target_files: list[TargetFile] = Field(default_factory=list)
    scenarios: list[ScenarioSpec] = Field(min_length=1)
    limits: Limits = Limits()
    server_stats: ServerStatsSpec = ServerStatsSpec()


# ---- the validated, expanded config the rest of the program uses ----


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str
    system: Optional[str]
    options: dict[str, Any]
    slo: Optional[Slo] = None


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    api: str
    targets: tuple[Target, ...]
    interval: Optional[float]
    cron: Optional[str]
    repeats: int
    warmup: int
    concurrency: tuple[int, ...]
    keep_alive: Optional[Union[str, int, float]]
    timeout: float
    think: Optional[bool]
    cases: tuple[Case, ...]
    unique_prompt: bool = False
    # What `targets:` named (target names or target_files groups); None means every target.
    selector: Optional[tuple[str, ...]] = None
    regression: Regression = Regression()

    def series_per_target(self) -> int:
        return len(self.cases) * len(self.concurrency)


@dataclass(frozen=True)
class Config:
    targets: tuple[Target, ...]
    scenarios: tuple[Scenario, ...]
    server_stats_interval: float
    label_combinations: int
    source: str = "config"
    max_label_combinations: int = DEFAULT_MAX_LABEL_COMBINATIONS
    # The targets listed in the file; `targets` adds the discovered ones and applies the shard.
    static_targets: tuple[Target, ...] = ()
    target_files: tuple[TargetFile, ...] = ()


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_pydantic(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key missing"
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
        line = f"{_format_loc(loc)}: {msg}"
        if line not in problems:
            problems.append(line)
    return problems


def _case_name(base: str, params: dict[str, Any]) -> str:
    if not params:
        return base
    suffix = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"{base}@{suffix}"


def _expand_cases(spec: ScenarioSpec) -> list[Case]:
    sweep = spec.sweep.model_dump(exclude_none=True) if spec.sweep else {}
    keys = list(sweep)
    cases = []
    for case_name, case in spec.cases.items():
        for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
            params = dict(zip(keys, values))
            repeat = params.get("prompt_repeat", case.prompt_repeat)
            option_params = {k: v for k, v in params.items() if k != "prompt_repeat"}
            options = spec.options.merged(case.options).model_copy(update=option_params)
            prompt = " ".join([case.prompt] * repeat)
            cases.append(Case(_case_name(case_name, params), prompt, case.system, options.as_request(),
                              case.slo or spec.slo))
    return cases


def build_config(raw: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    if raw is None:
        raise ConfigError(["(top level): the file is empty"], source)
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(raw).__name__}"], source)
    try:
        spec = FileSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(exc), source) from None

    problems: list[str] = []
    # With target files and no static list, there is no implicit local target.
    targets = tuple(spec.targets) if spec.targets else (() if spec.target_files else (Target(),))
    target_names = [t.name for t in targets]
    for i, t in enumerate(targets):
        if not _NAME_RE.match(t.name):
            problems.append(f"targets[{i}].name: must be 1-{LABEL_VALUE_MAX_LEN} characters of letters, digits and _.:@=/+,-")
        if target_names.count(t.name) > 1 and target_names.index(t.name) != i:
            problems.append(f"targets[{i}].name: duplicate target name {t.name!r}")
    groups: list[str] = []
    for i, f in enumerate(spec.target_files):
        if not _NAME_RE.match(f.group):
            problems.append(f"target_files[{i}].group: must be 1-{LABEL_VALUE_MAX_LEN} characters of letters, digits and _.:@=/+,-")
        elif f.group in groups or f.group in target_names:
            problems.append(f"target_files[{i}].group: {f.group!r} is already the name of a target or group")
        groups.append(f.group)
    known = target_names + groups

    scenarios: list[Scenario] = []
    seen_scenarios: set[str] = set()
    for i, s in enumerate(spec.scenarios):
        where = f"scenarios[{i}]"
        if not _NAME_RE.match(s.name):
            problems.append(f"{where}.name: must be 1-{LABEL_VALUE_MAX_LEN} characters of letters, digits and _.:@=/+,-")
        if s.name in seen_scenarios:
            problems.append(f"{where}.name: duplicate scenario name {s.name!r}")
        seen_scenarios.add(s.name)
        if len(s.model) > LABEL_VALUE_MAX_LEN:
            problems.append(f"{where}.model: longer than {LABEL_VALUE_MAX_LEN} characters")
        if (s.schedule.interval is None) == (s.schedule.cron is None):
            problems.append(f"{where}.schedule: give exactly one of interval or cron")
        for j, name in enumerate(s.targets or ()):
            if name not in known:
                problems.append(f"{where}.targets[{j}]: no target named {name!r} (nor target_files group) (known: {', '.join(known)})")
        if s.targets is not None and not s.targets:
            problems.append(f"{where}.targets: needs at least one target")
        cases = _expand_cases(s)
        for case in cases:
            if not _NAME_RE.match(case.name):
                problems.append(f"{where}.cases.{case.name}: case names must be 1-{LABEL_VALUE_MAX_LEN} characters of letters, digits and _.:@=/+,- (after sweep expansion)")
        scenarios.append(
            Scenario(
                name=s.name,
                model=s.model,
                api=s.api,
                targets=(),
                interval=s.schedule.interval,
                cron=s.schedule.cron,
                repeats=s.repeats,
                warmup=s.warmup,
                concurrency=tuple(s.concurrency),
                keep_alive=s.keep_alive,
                timeout=s.timeout,
                think=s.think,
                cases=tuple(cases),
                unique_prompt=s.unique_prompt,
                selector=tuple(s.targets) if s.targets is not None else None,
                regression=s.regression,
            )
        )
    if problems:
        raise ConfigError(problems, source)
    base = Config(
        targets=targets,
        scenarios=tuple(scenarios),
        server_stats_interval=spec.server_stats.interval,
        label_combinations=0,
        source=source,
        max_label_combinations=spec.limits.max_label_combinations,
        static_targets=targets,
        target_files=tuple(spec.target_files),
    )
    # Target files are read later, by the running exporter; here their groups are empty.
    return resolve_targets(base, {})


def resolve_targets(
    config: Config,
    discovered: Mapping[str, Sequence[Target]],
    owns: Callable[[str], bool] = lambda name: True,
) -> Config:
    """`config` with its targets made concrete: the static list plus the targets discovered per
    group, kept only where `owns(name)` (this replica's shard). Raises ConfigError when two
    different targets share a name or the label budget is exceeded."""
    problems: list[str] = []
    by_name: dict[str, Target] = {}
    members: dict[str, list[Target]] = {}
    for t in config.static_targets:
        by_name[t.name] = t
        members[t.name] = [t]
    for group, found in discovered.items():
        members[group] = []
        for t in found:
            if by_name.setdefault(t.name, t) != t:
                problems.append(f"target_files {group}: target {t.name!r} is already defined differently")
                continue
            members[group].append(t)
    scenarios = []
    combinations = 0
    for s in config.scenarios:
        names = s.selector if s.selector is not None else list(members)
        chosen = {t.name: t for name in names for t in members.get(name, ()) if owns(t.name)}
        # Each (target, case, concurrency) gets its own series, twice for cold/warm.
        combinations += len(chosen) * s.series_per_target()
        scenarios.append(replace(s, targets=tuple(chosen.values())))
    limit = config.max_label_combinations
    if combinations > limit:
        problems.append(
            f"limits.max_label_combinations: this config creates {combinations} target/scenario/case/concurrency "
            f"combinations, more than the limit of {limit}; shrink the sweeps or raise the limit"
        )
    if problems:
        raise ConfigError(problems, config.source)
    targets = tuple(t for t in by_name.values() if owns(t.name))
    return replace(config, targets=targets, scenarios=tuple(scenarios), label_combinations=combinations)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, source: str = "config") -> str:
    """${NAME} and ${NAME:-default} are replaced from the environment (compose passes the model this way)."""
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                missing.append(m.group(1))
                return ""
            return m.group(2)
        return value

    out = _ENV_RE.sub(sub, text)
    if missing:
        raise ConfigError([f"(environment): ${{{name}}} is not set and has no default" for name in dict.fromkeys(missing)], source)
    return out


def load_text(text: str, source: str = "config") -> Config:
    text = expand_env(text, source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"], source) from None
    return build_config(raw, source)


def load_file(path: Union[str, Path, None]) -> Config:
    """Load a scenario file; None means the default scenarios shipped in the package."""
    if path is None:
        from importlib.resources import files

        text = files("exporter").joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")
        return load_text(text, "built-in default scenarios")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"(file): cannot read: {exc}"], str(path)) from None
    return load_text(text, str(path))
