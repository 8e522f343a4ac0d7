"""Value types of the scenario file, shared by its models and the target-file reader.

Each rule lives once, as an annotated type: a `Duration` field takes '90s', '5m', '1h', '250ms'
or a number of seconds; a `LabelValue` is a name usable as a Prometheus label value as it is; a
`Regex` compiles. `unique()` is the one duplicate check, which names both places a name is given.
Options and Auth are the two plain mappings a scenario file nests.
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Iterable, Literal, Optional, Union
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
LABEL_VALUE_MAX_LEN = 64
MAX_DURATION_S = 366 * 86400
NAME_RULE = f"must be 1-{LABEL_VALUE_MAX_LEN} characters of letters, digits and _.:@=/+,-"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@=/+,-]{1,%d}$" % LABEL_VALUE_MAX_LEN)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
# Days and weeks too: regression baselines and accept_after are spans of days.
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


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


def _label_value(value: str) -> str:
    if not valid_name(value):
        raise ValueError(NAME_RULE)
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


JSON_SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def _schema_problem(node: Any, where: str) -> Optional[str]:
    """The first thing in a schema that a server could not take as JSON Schema, else None.

    Only what is wrong for every reader is refused: keys that are not strings (YAML allows
    `1: x`, JSON does not), values that are not JSON (YAML dates), and `type`/`properties`/
    `required` of the wrong kind. Which keywords a server's grammar supports is its own business."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is not a string"
            inner = f"{where}.{key}" if where else key
            if key == "type" and not (value in JSON_SCHEMA_TYPES or (
                    isinstance(value, list) and value and all(v in JSON_SCHEMA_TYPES for v in value))):
                return f"{inner}: expected one of {', '.join(JSON_SCHEMA_TYPES)} (or a list of them), got {value!r}"
            if key == "properties" and not isinstance(value, dict):
                return f"{inner}: must be an object of schemas"
            if key == "required" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                return f"{inner}: must be a list of property names"
            problem = _schema_problem(value, inner)
            if problem:
                return problem
        return None
    if isinstance(node, list):
        for i, value in enumerate(node):
            problem = _schema_problem(value, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if node is None or isinstance(node, (str, bool, int)):
        return None
    if isinstance(node, float) and math.isfinite(node):
        return None
    return f"{where or '(schema)'}: {node!r} is not a JSON value"


def _output_format(value: Any) -> Any:
    """`json`, or a JSON schema given as a mapping (inline YAML or JSON)."""
    if isinstance(value, str):
        if value.strip() != "json":
            raise ValueError(f"expected json or a JSON schema (a mapping), got {value!r}")
        return "json"
    if not isinstance(value, dict):
        raise ValueError(f"a JSON schema must be an object (a mapping), got {type(value).__name__}")
    problem = _schema_problem(value, "")
    if problem:
        raise ValueError(f"not a usable JSON schema: {problem}")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Structured output: "json" (any JSON) or a JSON schema the answer must follow.
OutputFormat = Annotated[Union[str, dict[str, Any]], BeforeValidator(_output_format)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
Regex = Annotated[str, AfterValidator(_regex)]


class Strict(BaseModel):
    """Unknown keys are errors (a typo is caught), and a validated value never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Options(Strict):
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


class Auth(Strict):
    """Credentials for a target behind an authenticating proxy, read from the environment or a file."""

    bearer_token_env: Optional[str] = None
    bearer_token_file: Optional[str] = None
    basic_user: Optional[str] = None
    basic_password_env: Optional[str] = None
    basic_password_file: Optional[str] = None


def unique(entries: Iterable[tuple[str, str]], what: str) -> list[str]:
    """(name, where it is given) pairs -> one problem per repeat, naming where the name came first."""
    first: dict[str, str] = {}
    problems = []
    for name, where in entries:
        if name in first:
            problems.append(f"{where}: duplicate {what} {name!r}, already given by {first[name]}")
        else:
            first[name] = where
    return problems


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


# A canary's options unless the case sets its own: the same answer every time.
CANARY_OPTIONS = {"temperature": 0.0, "seed": 42}
# The options of api: openai, each sent under its OpenAI name; the config refuses the others.
OPENAI_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> tuple[str, list[str]]:
    """${NAME} and ${NAME:-default} replaced from the environment (compose passes the model this
    way); also the names that are unset and have no default."""
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        value: Optional[str] = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                missing.append(m.group(1))
                return ""
            return m.group(2)
        return value

    return _ENV_RE.sub(sub, text), list(dict.fromkeys(missing))


class Expect(Strict):
    """A correctness canary: what the answer must be. Exactly one of regex (searched in the answer),
    contains (a substring) or equals (the whole answer, surrounding whitespace ignored)."""

    regex: Optional[Regex] = None
    contains: Optional[str] = Field(None, min_length=1)
    equals: Optional[str] = None

    @model_validator(mode="after")
    def _one(self) -> "Expect":
        if sum(v is not None for v in (self.regex, self.contains, self.equals)) != 1:
            raise ValueError("give exactly one of regex, contains or equals")
        return self

    def matches(self, answer: str) -> bool:
        if self.regex is not None:
            return re.search(self.regex, answer) is not None
        if self.contains is not None:
            return self.contains in answer
        return answer.strip() == (self.equals or "").strip()


class Regression(Strict):
    """A scenario's regression alerts (docs/regression.md): `regression: {recent: 15m, baseline: 7d,
    seasonality: auto, accept_after: 7d}`."""

    recent: Duration = 15 * 60.0  # the recent window: last max(3 runs, this)
    # The history the noise and the daily profile are measured on (at least 672 blocks: 4 weeks hourly).
    baseline: Duration = 7 * 86400.0
    # Compare with the same time of day (daily), and of the week (weekly: both), where the history
    # shows it (auto), always, or never (off).
    seasonality: Literal["auto", "daily", "weekly", "off"] = "auto"
    accept_after: Duration = 7 * 86400.0  # a regression not accepted by then becomes the new normal

    @model_validator(mode="after")
    def _spans(self):
        if self.baseline < 86400:
            raise ValueError("baseline must be at least 1d: the reference is the day before the recent window")
        if self.recent > 6 * 3600:
            raise ValueError("recent must be at most 6h")
        if self.accept_after < 3600:
            raise ValueError("accept_after must be at least 1h")
        return self
