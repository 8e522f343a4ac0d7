"""Property-based: whatever YAML a user writes, the loader answers with its clean error list, never a traceback."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import ConfigError, build_config, load_text
from exporter.scheduler import ProbeScheduler

KEYS = ["scenarios", "targets", "name", "model", "cases", "prompt", "options", "temperature", "schedule",
        "interval", "cron", "concurrency", "repeats", "warmup", "timeout", "keep_alive", "sweep", "url",
        "limits", "api", "unique_prompt", "auth", "process_match", "bogus", "num_predict", "prompt_repeat"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["5m", "-1", "0", "1h", "* * * * *", "http://h:1", "generate", "chat"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=30,
)


def _scenario():
    return st.fixed_dictionaries(
        {"name": st.text(max_size=10), "model": st.one_of(st.text(max_size=10), st.integers()),
         "cases": st.dictionaries(st.text(max_size=6),
                                  st.one_of(scalars, st.fixed_dictionaries({"prompt": scalars})), max_size=3)},
        optional={k: st.one_of(scalars, st.lists(scalars, max_size=3),
                               st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3))
                  for k in ("schedule", "concurrency", "repeats", "timeout", "keep_alive", "options", "sweep", "api")},
    )


def check(raw):
    try:
        cfg = build_config(raw, "fuzz")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
        return
    assert cfg.scenarios
    # An accepted config must also be schedulable: this is what a reload would do with it.
    scheduler = ProbeScheduler([], lambda *a: None, lambda: None)
    scheduler.apply(cfg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_structures(raw):
    check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_scenario(), min_size=0, max_size=3))
def test_random_scenarios(scenarios):
    check({"scenarios": scenarios})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text):
    try:
        load_text(text, "fuzz")
    except ConfigError as exc:
        assert exc.problems


@settings(max_examples=100, deadline=None)
@given(documents)
def test_round_trip_through_yaml_text(raw):
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return
    try:
        load_text(text, "fuzz")
    except ConfigError as exc:
        assert exc.problems


@settings(max_examples=200, deadline=None)
@given(
    interval=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**12), st.text(max_size=8)),
    repeats=st.one_of(st.integers(-5, 10**9), scalars),
    levels=st.lists(st.integers(-3, 1000), max_size=5),
    temps=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
)
def test_nearly_valid_scenarios(interval, repeats, levels, temps):
    check({"scenarios": [{
        "name": "s", "model": "m", "schedule": {"interval": interval}, "repeats": repeats,
        "concurrency": levels, "cases": {"a": {"prompt": "p"}}, "sweep": {"temperature": temps},
    }]})
