"""Scenario YAML -> validated, expanded configuration.

Parsing is strict (unknown keys are errors) and every problem is collected
before reporting, so a user fixes a file in one pass instead of one error at a
time. Sweeps are expanded here, so the rest of the program only ever sees
concrete cases, and the label budget is enforced before anything starts.

The value rules (durations, label values, regexes) are annotated types in config_types.py;
sweep naming is in sweeps.py; the wording of problems and the checks that read the raw
document are in config_problems.py. Everything is imported from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config_problems import api_problems, cross_problems, format_pydantic, valid_entries
from .config_types import (
    CANARY_OPTIONS,
    DEFAULT_OLLAMA_URL,
    LABEL_VALUE_MAX_LEN,
    NAME_RULE,
    Auth,
    Duration,
    Expect,
    LabelValue,
    Options,
    OutputFormat,
    Regex,
    Regression,
    Strict,
    default_ollama_url,
    parse_duration,
    unique,
    url_port,
    valid_name,
)
from .config_types import expand_env as _expand_env
from .sweeps import Sweep, case_name, points

__all__ = [
    "DEFAULT_OLLAMA_URL", "LABEL_VALUE_MAX_LEN", "Auth", "Case", "CaseSpec", "Config", "ConfigError", "Expect",
    "Regression",
    "Options",
    "Scenario", "ScenarioSpec", "Slo", "Sweep", "Target", "TargetFile", "build_config", "default_ollama_url",
    "expand_env", "load_file", "load_text", "parse_duration", "resolve_targets", "url_port", "valid_name",
]

# Inside the package as a link to scenarios/default.yaml; a wheel build copies the file in.
DEFAULT_CONFIG_RESOURCE = "default.yaml"
# A config that would create more label combinations than this is refused: each
# combination is a dozen histograms of ~20 buckets, so 2000 is ~500k samples per scrape.
DEFAULT_MAX_LABEL_COMBINATIONS = 2000
MAX_TURNS = 50


class ConfigError(Exception):
    """A config that cannot be used; `problems` lists every one found, each with its path."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


class Target(Strict):
    name: LabelValue = "local"
    url: str = Field(default_factory=default_ollama_url)
    # Regex matched against the command line of local processes to find the server's
    # process tree; null turns process metrics off for this target.
    process_match: Optional[Regex] = r"(^|/)ollama serve\b"
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


class TargetFile(Strict):
    """Targets read from a Prometheus file_sd file (JSON or YAML), re-read when it changes.

    `group` is what a scenario's `targets:` names to run on every target of the file. A target
    is named by the `name_label` label of its entry, else by its address. Other labels in the
    file are not exported: metric label sets stay fixed; add labels by relabelling in Prometheus.
    """

    group: LabelValue
    path: str = Field(min_length=1)
    refresh_interval: Duration = 5.0
    name_label: str = "name"
    # For addresses given as host:port; an entry that is a URL keeps its own scheme.
    scheme: Literal["http", "https"] = "http"
    # Discovered servers are usually on other hosts, so no local process tree by default.
    process_match: Optional[Regex] = None
    auth: Optional[Auth] = None


class Schedule(Strict):
    interval: Optional[Duration] = None
    cron: Optional[str] = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as exc:
                raise ValueError(f"not a valid crontab expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_of(self) -> "Schedule":
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of interval or cron")
        return self


class Slo(Strict):
    """A service-level objective: the share of requests that must be good.

    A request is good when it succeeded and met every threshold given (seconds).
    """

    ttft: Optional[Duration] = None
    time_per_output_token: Optional[Duration] = None
    request_duration: Optional[Duration] = None
    objective: float

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> float:
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
    def _some_threshold(self) -> "Slo":
        if self.ttft is None and self.time_per_output_token is None and self.request_duration is None:
            raise ValueError("give at least one of ttft, time_per_output_token, request_duration")
        return self


class CaseSpec(Strict):
    prompt: Optional[str] = Field(None, min_length=1)
    # A conversation (chat APIs): each user message is sent in turn, with the answers so far.
    turns: Optional[list[Annotated[str, Field(min_length=1)]]] = Field(None, min_length=1, max_length=MAX_TURNS)
    # A correctness canary (run at temperature 0 with a seed): checked against the (last) answer.
    expect: Optional[Expect] = None
    system: Optional[str] = None
    options: Optional[Options] = None
    # Overrides the scenario's slo for this case.
    slo: Optional[Slo] = None
    # Structured output: json or a JSON schema; overrides the scenario's `format`.
    format: Optional[OutputFormat] = None
    # Repeat the prompt text this many times: a cheap way to build long prompts for
    # prompt-length experiments without pasting pages of text into YAML.
    prompt_repeat: int = Field(1, ge=1, le=10000)

    @model_validator(mode="after")
    def _prompt_or_turns(self) -> "CaseSpec":
        if (self.prompt is None) == (self.turns is None):
            raise ValueError("give exactly one of prompt or turns")
        return self


class ScenarioSpec(Strict):
    name: LabelValue
    model: str = Field(min_length=1, max_length=LABEL_VALUE_MAX_LEN)
    # generate, chat: Ollama's native API; openai: OpenAI-compatible /v1/chat/completions.
    api: Literal["generate", "chat", "openai"] = "generate"
    # Target names or target_files groups; default: every target.
    targets: Optional[list[str]] = Field(None, min_length=1)
    schedule: Schedule = Schedule(interval=60.0)
    repeats: int = Field(1, ge=1, le=10000)
    warmup: int = Field(0, ge=0, le=100)
    concurrency: list[int] = Field(default_factory=lambda: [1])
    keep_alive: Any = None
    timeout: Duration = 120.0
    think: Optional[bool] = None
    # Ollama reuses the KV cache for a prompt prefix it has just seen and then reports
    # the full prompt_eval_count with only the uncached part's duration. A unique tag at
    # the start of every prompt makes each request prefill from scratch.
    unique_prompt: bool = False
    options: Options = Options()
    # Structured output for every case (`format` on the native APIs, `response_format` on openai).
    format: Optional[OutputFormat] = None
    # Names are checked after sweep expansion (build_config), where the swept suffix is known.
    cases: dict[str, CaseSpec] = Field(min_length=1)
    sweep: Optional[Sweep] = None
    slo: Optional[Slo] = None  # for every case that has none of its own
    regression: Regression = Regression()

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, v: Any) -> Any:
        # Passed through to Ollama, which takes seconds or a Go duration ("5m", "-1").
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return v
        if isinstance(v, str) and re.match(r"^-?\d+(\.\d+)?(ns|us|ms|s|m|h)?$", v.strip()):
            return v.strip()
        raise ValueError("expected seconds or a duration such as 5m, 0 or -1")

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


class Limits(Strict):
    max_label_combinations: int = Field(DEFAULT_MAX_LABEL_COMBINATIONS, ge=1)


class ServerStatsSpec(Strict):
    interval: Duration = 15.0


class FileSpec(Strict):
    targets: Optional[list[Target]] = None
    target_files: list[TargetFile] = Field(default_factory=list)
    scenarios: list[ScenarioSpec] = Field(min_length=1)
    limits: Limits = Limits()
    server_stats: ServerStatsSpec = ServerStatsSpec()


# ---- the validated, expanded config the rest of the program uses ----


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str  # the first turn of a conversation
    system: Optional[str]
    options: dict[str, Any]
    slo: Optional[Slo] = None
    turns: tuple[str, ...] = ()  # a conversation's user messages, the first being `prompt`; else empty
    expect: Optional[Expect] = None
    # Structured output: "json" or a JSON schema (a dict); None for free text.
    format: Union[str, dict[str, Any], None] = None

    @property
    def structured_output(self) -> Optional[str]:
        """What the record keeps of `format`: its kind ("json" or "schema"), never the schema."""
        if self.format is None:
            return None
        return "json" if self.format == "json" else "schema"


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


def _expand_cases(spec: ScenarioSpec) -> list[tuple[Case, str]]:
    """The concrete cases of a scenario, each with the place in the file it comes from."""
    cases = []
    for base, case in spec.cases.items():
        for params in points(spec.sweep):
            repeat = params.get("prompt_repeat", case.prompt_repeat)
            option_params = {k: v for k, v in params.items() if k != "prompt_repeat"}
            options = spec.options.merged(case.options).model_copy(update=option_params).as_request()
            if case.expect is not None:  # a canary answers deterministically, unless told otherwise
                options = {**CANARY_OPTIONS, **options}
            first, *later = case.turns or [case.prompt or ""]
            prompt = " ".join([first] * repeat)  # with turns, prompt_repeat lengthens the first one
            name = case_name(base, params)
            where = f"cases.{base}" + (f" swept at {name[len(base) + 1:]}" if params else "")
            turns = (prompt, *later) if case.turns else ()
            fmt = case.format if case.format is not None else spec.format
            cases.append((Case(name, prompt, case.system, options, case.slo or spec.slo, turns, case.expect, fmt),
                          where))
    return cases


def _case_problems(where: str, cases: list[tuple[Case, str]]) -> list[str]:
    """The one check of case names, after sweep expansion: each a label value, each once."""
    problems = [f"{where}.{source}: case name {case.name!r} {NAME_RULE}"
                for case, source in cases if not valid_name(case.name)]
    return problems + unique(((case.name, f"{where}.{source}") for case, source in cases), "case name")


def _scenario(spec: ScenarioSpec, cases: tuple[Case, ...]) -> Scenario:
    """The running form of a scenario; its targets are filled in by resolve_targets."""
    return Scenario(
        name=spec.name,
        model=spec.model,
        api=spec.api,
        targets=(),
        interval=spec.schedule.interval,
        cron=spec.schedule.cron,
        repeats=spec.repeats,
        warmup=spec.warmup,
        concurrency=tuple(spec.concurrency),
        keep_alive=spec.keep_alive,
        timeout=spec.timeout,
        think=spec.think,
        cases=cases,
        unique_prompt=spec.unique_prompt,
        selector=tuple(spec.targets) if spec.targets is not None else None,
        regression=spec.regression,
    )


def build_config(raw: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    if raw is None:
        raise ConfigError(["(top level): the file is empty"], source)
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping, got {type(raw).__name__}"], source)
    problems: list[str] = []
    spec: Optional[FileSpec] = None
    try:
        spec = FileSpec.model_validate(raw)
    except ValidationError as exc:
        problems += format_pydantic(exc)
    problems += cross_problems(raw)
    scenarios: list[Scenario] = []
    for i, s in list(enumerate(spec.scenarios)) if spec else valid_entries(raw, "scenarios", ScenarioSpec):
        cases = _expand_cases(s)
        problems += _case_problems(f"scenarios[{i}]", cases) + api_problems(s, f"scenarios[{i}]", cases)
        scenarios.append(_scenario(s, tuple(case for case, _ in cases)))
    if spec is None or problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    # With target files and no static list, there is no implicit local target.
    targets = tuple(spec.targets) if spec.targets else (() if spec.target_files else (Target(),))
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
        # One combination per (target, case, concurrency): its label set. The series it costs
        # (a dozen histograms, TTFT and duration once per cold/warm start) are what the
        # default limit is sized for, so the count itself is not doubled.
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


def expand_env(text: str, source: str = "config") -> str:
    """${NAME} and ${NAME:-default} are replaced from the environment (compose passes the model this way)."""
    out, missing = _expand_env(text)
    if missing:
        raise ConfigError([f"(environment): ${{{name}}} is not set and has no default" for name in missing], source)
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
