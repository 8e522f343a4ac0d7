"""Past one host: targets from file_sd files that change without a restart, and replicas that
split a fleet by hashmod of the target name."""

import functools
import json
import os
import textwrap
import threading

import pytest

from exporter.config import ConfigError, TargetFile, load_text
from exporter.discovery import DiscoveryError, parse_file_sd
from exporter.shard import Shard, hashmod, ordinal_from_hostname
from tests.kit.exporters import ThreadedExporter, all_families, sample_value, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama


def fleet_yaml(targets_path, refresh="100ms", scenarios=None) -> str:
    """Targets from one file_sd file (group `fleet`), one hourly scenario on all of them."""
    return textwrap.dedent(f"""\
        target_files:
          - group: fleet
            path: {targets_path}
            refresh_interval: {refresh}
        scenarios:
        """) + (scenarios or textwrap.indent(textwrap.dedent("""\
        - name: s
          model: tiny
          schedule: {interval: 1h}
          timeout: 5s
          cases: {short: {prompt: hi}}
        """), "  "))


def write_targets(path, servers: dict) -> None:
    """Replace the file at once, as a ConfigMap update or an inventory tool's rename does."""
    groups = [{"targets": [f"127.0.0.1:{fake.port}"], "labels": {"name": name, "rack": "r1"}}
              for name, fake in servers.items()]
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(groups, f)
    os.replace(tmp, path)


def generate_requests(fake: FakeOllama) -> int:
    with fake.lock:
        return sum(1 for r in fake.requests if r.path == "/api/generate")


@pytest.fixture
def fakes():
    servers = [FakeOllama(Behavior(load_time=0.0, tokens=2)).start() for _ in range(12)]
    yield servers
    # In parallel: each stop waits out its server's half-second poll.
    stops = [threading.Thread(target=s.stop) for s in servers]
    for t in stops:
        t.start()
    for t in stops:
        t.join()


# ---- the file format ----

SPEC = TargetFile(group="fleet", path="unused")


def test_file_sd_json_and_yaml_give_the_same_targets():
    as_json = json.dumps([{"targets": ["gpu1:11434"], "labels": {"name": "gpu-1", "rack": "r1"}},
                          {"targets": ["https://gpu2.example", "10.0.0.7:11434"]}])
    as_yaml = textwrap.dedent("""\
        - targets: [gpu1:11434]
          labels: {name: gpu-1, rack: r1}
        - targets: ["https://gpu2.example", "10.0.0.7:11434"]
        """)
    for text in (as_json, as_yaml):
        targets = parse_file_sd(text, SPEC)
        # Named by the `name` label, else by the address as written; host:port gets the scheme.
        assert [(t.name, t.url) for t in targets] == [
            ("gpu-1", "http://gpu1:11434"),
            ("https://gpu2.example", "https://gpu2.example"),
            ("10.0.0.7:11434", "http://10.0.0.7:11434"),
        ]
        # Discovered servers are remote: no local process tree unless the file spec says so.
        assert all(t.process_match is None for t in targets)


def test_file_sd_spec_sets_scheme_name_label_and_credentials():
    spec = TargetFile(group="g", path="x", scheme="https", name_label="host",
                      auth={"bearer_token_file": "/var/run/secrets/ollama/token"})
    (t,) = parse_file_sd('[{"targets": ["a:443"], "labels": {"host": "a"}}]', spec)
    assert (t.name, t.url, t.auth.bearer_token_file) == ("a", "https://a:443", "/var/run/secrets/ollama/token")


@pytest.mark.parametrize("text, problem", [
    ("{targets: [a:1]}", "expected a list of target groups"),
    ("[{targets: [a:1], labelz: {}}]", "[0].labelz: Extra inputs"),
    ("[{labels: {name: x}}]", "[0].targets: Field required"),
    ("[{targets: ['a:1', 'b:1'], labels: {name: same}}]", "duplicate target name 'same'"),
    ("[{targets: ['a:1'], labels: {name: 'has space'}}]", "target name 'has space'"),
    ("[{targets: ['ftp://a:1']}]", "must be an http:// or https:// URL"),
    ("[{targets: [a:1]", "not JSON or YAML"),
])
def test_file_sd_problems_are_named(text, problem):
    with pytest.raises(DiscoveryError) as err:
        parse_file_sd(text, SPEC)
    assert problem in str(err.value)


def test_empty_file_means_no_targets():
    assert parse_file_sd("", SPEC) == () and parse_file_sd("[]", SPEC) == ()


# ---- the config ----

def test_scenarios_pick_static_targets_and_file_groups(tmp_path):
    config = load_text(textwrap.dedent(f"""\
        targets: [{{name: local, url: "http://127.0.0.1:11434"}}]
        target_files:
          - {{group: gpus, path: {tmp_path}/gpus.json, refresh_interval: 30s}}
        scenarios:
          - {{name: everywhere, model: m, cases: {{x: {{prompt: p}}}}}}
          - {{name: gpus-only, model: m, targets: [gpus], cases: {{x: {{prompt: p}}}}}}
        """))
    everywhere, gpus_only = config.scenarios
    assert (everywhere.selector, gpus_only.selector) == (None, ("gpus",))
    assert config.target_files[0].refresh_interval == 30.0
    # Until the file is read, the group is empty.
    assert [t.name for t in everywhere.targets] == ["local"] and gpus_only.targets == ()


def test_target_files_without_static_targets_add_no_implicit_local_target(tmp_path):
    config = load_text(fleet_yaml(tmp_path / "t.json"))
    assert config.targets == () and config.static_targets == ()


@pytest.mark.parametrize("body, problem", [
    ("target_files: [{group: a, path: x, refresh: 5s}]", "target_files[0].refresh: unknown key"),
    ("target_files: [{group: a, path: x, process_match: '('}]", "not a valid regular expression"),
    ("target_files: [{group: a, path: x, refresh_interval: 0s}]", "duration must be positive"),
])
def test_target_file_schema_problems(body, problem):
    with pytest.raises(ConfigError) as err:
        load_text(body + "\nscenarios: [{name: s, model: m, cases: {x: {prompt: p}}}]\n")
    assert any(problem in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("body, problem", [
    ("target_files: [{group: a, path: x}, {group: a, path: y}]",
     "target_files[1].group: duplicate target or group name 'a', already given by target_files[0].group"),
    ("targets: [{name: a}]\ntarget_files: [{group: a, path: x}]",
     "target_files[0].group: duplicate target or group name 'a', already given by targets[0].name"),
])
def test_group_name_problems_are_collected_with_the_others(body, problem):
    with pytest.raises(ConfigError) as err:
        load_text(body + "\nscenarios: [{name: s, model: m, targets: [nope], cases: {x: {prompt: p}}}]\n")
    assert any(problem in p for p in err.value.problems), err.value.problems
    assert any("no target named 'nope'" in p for p in err.value.problems)


# ---- sharding ----

def test_hashmod_is_prometheus_hashmod():
    # From Go with Prometheus's arithmetic: binary.BigEndian.Uint64(md5.Sum(v)[8:]) % m.
    expected = {"gpu-01": (1, 697), "gpu-02": (2, 276), "10.0.0.5:11434": (0, 301), "local": (0, 714)}
    assert {v: (hashmod(v, 3), hashmod(v, 1000)) for v in expected} == expected


def test_shard_flags():
    assert Shard(1, 3).owns("gpu-01") and not Shard(0, 3).owns("gpu-01")
    assert Shard().owns("anything")
    with pytest.raises(ValueError):
        Shard(3, 3)
    assert ordinal_from_hostname("ollama-perf-exporter-2") == 2
    with pytest.raises(ValueError, match="StatefulSet"):
        ordinal_from_hostname("exporter-7f9c6d5b8-x2kqz")


# ---- a running exporter ----

def probed_targets(exporter) -> set[str]:
    """Targets with at least one request counted."""
    return {s.labels["target"] for m in all_families(exporter) if m.name == "llm_probe_requests"
            for s in m.samples if s.name == "llm_probe_requests_total" and s.value > 0}


def series_targets(exporter) -> set[str]:
    """Targets named by any series: probe metrics and server stats."""
    return {s.labels["target"] for m in all_families(exporter) for s in m.samples if "target" in s.labels}


def test_target_file_changes_without_a_restart(tmp_path, fakes):
    a, b = fakes[:2]
    targets = tmp_path / "targets.json"
    write_targets(targets, {"a": a})
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets) + "server_stats: {interval: 200ms}\n")
    with ThreadedExporter(str(config)) as running:
        exp = running.exporter
        value = functools.partial(sample_value, exp)
        wait_for(lambda: probed_targets(exp) == {"a"}, what="the first target probed")
        assert value("llm_exporter_discovered_targets", {"group": "fleet"}) == 1

        loaded_at = value("llm_exporter_config_last_reload_success_timestamp_seconds")
        combinations = value("llm_exporter_config_label_combinations")
        write_targets(targets, {"a": a, "b": b})
        wait_for(lambda: probed_targets(exp) == {"a", "b"}, what="the added target probed")
        # A target file change is not a config load, but it does change the label combinations.
        assert value("llm_exporter_config_last_reload_success_timestamp_seconds") == loaded_at
        assert value("llm_exporter_config_label_combinations") == 2 * combinations
        wait_for(lambda: value("llm_server_up", {"target": "b"}) == 1, what="server stats of the added target")
        # The unchanged target kept its schedule (hourly): it was not probed again.
        assert generate_requests(a) == 1

        write_targets(targets, {"b": b})
        wait_for(lambda: "a" not in series_targets(exp), what="the removed target's series dropped")
        assert "b" in series_targets(exp) and value("llm_exporter_discovered_targets", {"group": "fleet"}) == 1

        targets.write_text('[{"targets": ["127.0.0.1:1"], "labels": {"name": "c"}')  # cut short
        wait_for(lambda: value("llm_exporter_targets_file_errors_total", {"group": "fleet"}) == 1,
                 what="the bad file counted")
        assert [t.name for t in exp.config.targets] == ["b"]
        assert value("llm_exporter_discovered_targets", {"group": "fleet"}) == 1
        assert value("llm_exporter_targets_file_last_read_successful", {"group": "fleet"}) == 0

        # A good version again is taken, the error count stays.
        write_targets(targets, {"a": a})
        wait_for(lambda: [t.name for t in exp.config.targets] == ["a"], what="recovery")
        assert value("llm_exporter_targets_file_errors_total", {"group": "fleet"}) == 1
        assert value("llm_exporter_targets_file_last_read_successful", {"group": "fleet"}) == 1


def test_missing_file_at_start_is_counted_and_picked_up_later(tmp_path, fakes):
    targets = tmp_path / "targets.json"
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets))
    with ThreadedExporter(str(config)) as running:
        exp = running.exporter
        assert sample_value(exp, "llm_exporter_targets_file_errors_total", {"group": "fleet"}) == 1
        assert running.exporter.ready()
        write_targets(targets, {"a": fakes[0]})
        wait_for(lambda: probed_targets(exp) == {"a"}, what="the target of a file that appeared")


def test_discovered_targets_beyond_the_label_budget_are_refused(tmp_path, fakes):
    targets = tmp_path / "targets.json"
    write_targets(targets, {"a": fakes[0]})
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets) + "limits: {max_label_combinations: 2}\n")
    with ThreadedExporter(str(config)) as running:
        exp = running.exporter
        write_targets(targets, {n: fakes[i] for i, n in enumerate("abc")})
        wait_for(lambda: sample_value(exp, "llm_exporter_targets_file_errors_total",
                                                       {"group": "fleet"}) == 1, what="the budget refusal")
        assert [t.name for t in exp.config.targets] == ["a"]


def test_reload_reads_the_target_files_again(tmp_path, fakes):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    write_targets(old, {"a": fakes[0]})
    write_targets(new, {"b": fakes[1]})
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(old, refresh="1h"))
    with ThreadedExporter(str(config)) as running:
        exp = running.exporter
        wait_for(lambda: probed_targets(exp) == {"a"}, what="first file")
        config.write_text(fleet_yaml(new, refresh="1h"))
        assert exp.reload()[0]
        wait_for(lambda: probed_targets(exp) == {"b"}, what="the file named by the reloaded config")


def test_reload_judges_the_target_files_by_the_new_config(tmp_path, fakes):
    # D3: the files were checked against the running config, and the refused version was never
    # read again, so raising the budget by reload left the exporter without targets.
    targets = tmp_path / "targets.json"
    write_targets(targets, {"a": fakes[0], "b": fakes[1]})
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets, refresh="1h") + "limits: {max_label_combinations: 1}\n")
    with ThreadedExporter(str(config)) as running:
        exp = running.exporter
        value = exp.registry.get_sample_value
        assert exp.config.targets == ()
        assert value("llm_exporter_targets_file_last_read_successful", {"group": "fleet"}) == 0
        config.write_text(fleet_yaml(targets, refresh="1h") + "limits: {max_label_combinations: 10}\n")
        ok, message = exp.reload()
        assert ok, message
        assert sorted(t.name for t in exp.config.targets) == ["a", "b"]
        assert value("llm_exporter_targets_file_last_read_successful", {"group": "fleet"}) == 1
        assert value("llm_exporter_discovered_targets", {"group": "fleet"}) == 2
        exp.discovery.poll()
        assert sorted(t.name for t in exp.config.targets) == ["a", "b"]
        wait_for(lambda: probed_targets(exp) == {"a", "b"}, what="both targets probed")

        # Lowering the budget again is refused as a whole: the running config and targets stay.
        config.write_text(fleet_yaml(targets, refresh="1h") + "limits: {max_label_combinations: 1}\n")
        ok, message = exp.reload()
        assert not ok and "max_label_combinations" in message
        assert exp.config.max_label_combinations == 10
        assert sorted(t.name for t in exp.config.targets) == ["a", "b"]


def test_a_refused_version_is_asked_again_when_another_file_makes_room(tmp_path):
    from prometheus_client import CollectorRegistry

    from exporter.config import Target
    from exporter.discovery import DiscoveryMetrics, TargetDiscovery

    def at_most_two(found):
        count = sum(len(ts) for ts in found.values())
        return f"{count} targets, more than 2" if count > 2 else None

    big, small = tmp_path / "big.json", tmp_path / "small.json"
    for path, names in ((big, "ab"), (small, "c")):
        path.write_text(json.dumps([{"targets": [f"h{n}:1" for n in names], "labels": {}}]))
    registry = CollectorRegistry()
    changes = []
    discovery = TargetDiscovery(DiscoveryMetrics(registry), lambda: changes.append(1), at_most_two)
    discovery.configure([TargetFile(group="big", path=str(big)), TargetFile(group="small", path=str(small))])
    assert {g: [t.name for t in ts] for g, ts in discovery.current().items()} == {"big": ["ha:1", "hb:1"]}
    errors = {"group": "small"}
    assert registry.get_sample_value("llm_exporter_targets_file_errors_total", errors) == 1

    big.write_text(json.dumps([{"targets": ["ha:1"], "labels": {}}]))
    assert discovery.poll()
    found = discovery.current()
    assert found["big"] == (Target(name="ha:1", url="http://ha:1", process_match=None),)
    assert [t.name for t in found["small"]] == ["hc:1"]
    assert registry.get_sample_value("llm_exporter_targets_file_last_read_successful", errors) == 1
    # The refused version was one version: counted once, however often it was asked about.
    assert registry.get_sample_value("llm_exporter_targets_file_errors_total", errors) == 1
    assert changes == [1]

    # configure reads the files in its order: `small` is refused while `big` still holds its
    # old two targets, and asked again once big's new version (one target) is taken.
    big.write_text(json.dumps([{"targets": ["ha:1", "hb:1"], "labels": {}}]))
    discovery = TargetDiscovery(DiscoveryMetrics(CollectorRegistry()), lambda: None, at_most_two)
    discovery.configure([TargetFile(group="big", path=str(big)), TargetFile(group="small", path=str(small))])
    assert list(discovery.current()) == ["big"]
    big.write_text(json.dumps([{"targets": ["hb:1"], "labels": {}}]))
    discovery.configure([TargetFile(group="small", path=str(small)), TargetFile(group="big", path=str(big))])
    assert {g: [t.name for t in ts] for g, ts in discovery.current().items()} == {"big": ["hb:1"], "small": ["hc:1"]}


def test_three_replicas_probe_each_of_twelve_targets_once(tmp_path, fakes):
    targets = tmp_path / "targets.json"
    names = {f"ollama-{i:02d}": fake for i, fake in enumerate(fakes)}
    write_targets(targets, names)
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets, refresh="1h"))

    def run_replicas(count):
        replicas = [ThreadedExporter(str(config), shard=Shard(i, count)).start() for i in range(count)]
        try:
            expected = [{n for n in names if hashmod(n, count) == i} for i in range(count)]
            wait_for(lambda: [probed_targets(r.exporter) for r in replicas] == expected,
                     what=f"{count} replicas to probe their shares")
            # Each replica exports its own targets only, so their union is one fleet.
            assert [{t.name for t in r.exporter.config.targets} for r in replicas] == expected
            return replicas, expected
        finally:
            for r in replicas:
                r.stop()

    _, shares = run_replicas(3)
    assert all(shares) and set().union(*shares) == set(names)
    # Every server got exactly one probe request: no target was probed by two replicas.
    assert [generate_requests(f) for f in fakes] == [1] * 12

    for f in fakes:
        with f.lock:
            f.requests.clear()
    # One replica gone, the other two restarted with --shard.count 2.
    _, shares = run_replicas(2)
    assert set().union(*shares) == set(names) and not shares[0] & shares[1]
    assert [generate_requests(f) for f in fakes] == [1] * 12


def test_shard_flags_on_the_command_line(tmp_path, capsys, monkeypatch):
    from exporter.cli import main
    from exporter.exit_codes import EXIT_USAGE

    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(tmp_path / "t.json"))
    assert main(["--config.file", str(config), "--shard.count", "2", "--shard.index", "2"]) == EXIT_USAGE
    assert "between 0 and 1" in capsys.readouterr().err
    monkeypatch.setenv("HOSTNAME", "exporter-7f9c6d5b8-x2kqz")
    assert main(["--config.file", str(config), "--shard.count", "2", "--shard.index", "auto"]) == EXIT_USAGE
    assert "StatefulSet" in capsys.readouterr().err
    assert main(["--config.file", str(config), "--config.check"]) == 0
    assert "1 target file(s)" in capsys.readouterr().out


def test_sharded_process_logs_its_share(tmp_path, fakes):
    from tests.kit.exporters import ExporterProcess

    targets = tmp_path / "targets.json"
    names = {f"ollama-{i:02d}": fake for i, fake in enumerate(fakes[:4])}
    write_targets(targets, names)
    config = tmp_path / "scenarios.yaml"
    config.write_text(fleet_yaml(targets, refresh="1h"))
    env = dict(os.environ, HOSTNAME="ollama-perf-exporter-1")
    exp = ExporterProcess(["--config.file", str(config), "--shard.count", "2", "--shard.index", "auto"], env=env)
    try:
        mine = sorted(n for n in names if hashmod(n, 2) == 1)
        wait_for(lambda: all(f'llm_probe_success{{scenario="s",target="{n}"}} 1.0' in exp.scrape() for n in mine),
                 what="the replica's share probed")
        assert f"on {len(mine)} target(s)" in exp.output and "(shard 1 of 2)" in exp.output
        others = [n for n in names if n not in mine]
        assert not any(f'target="{n}"' in exp.scrape() for n in others)
    finally:
        assert exp.stop() == 0


def test_read_target_files_once_for_bench(tmp_path, fakes):
    from exporter.config import resolve_targets
    from exporter.discovery import read_target_files

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    write_targets(good, {"a": fakes[0], "b": fakes[1]})
    bad.write_text("{")
    config = load_text(fleet_yaml(good))
    resolved = resolve_targets(config, read_target_files(config.target_files))
    assert [t.name for t in resolved.scenarios[0].targets] == ["a", "b"]
    with pytest.raises(ConfigError) as err:
        read_target_files([TargetFile(group="g", path=str(bad)), TargetFile(group="h", path=str(tmp_path / "none"))])
    assert len(err.value.problems) == 2 and "not JSON or YAML" in err.value.problems[0]
