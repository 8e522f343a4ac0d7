"""The documentation site: generated references up to date, a strict mkdocs build, README links.

The metrics and alerts references are written by scripts/gen_reference.py from the metric
families and prometheus/rules/; the committed pages must equal a fresh generation, or the docs
would describe metrics and alerts that are not the ones served and evaluated.
"""

import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gen_reference  # noqa: E402


def test_generated_references_match_the_code_and_the_rules():
    stale = []
    for path, text in gen_reference.pages().items():
        with open(path) as f:
            if f.read() != text:
                stale.append(os.path.relpath(path, ROOT))
    assert not stale, f"{', '.join(stale)} differ from a fresh generation: run `{gen_reference.COMMAND}` and commit"


def test_the_metrics_reference_lists_every_family_of_the_golden_exposition():
    # The golden text is a real render of every hand-written family (tests/test_golden.py).
    with open(gen_reference.GOLDEN) as f:
        names = {line.split()[2] for line in f if line.startswith("# TYPE ")}
    text = gen_reference.render_metrics()
    listed = set(re.findall(r"^\| `([a-z_:]+)` \|", text, re.M))
    assert names and names <= listed, f"not in the reference: {sorted(names - listed)}"
    # Discovery metrics are not in the golden render; they come from the registry.
    assert "llm_exporter_targets_file_errors_total" in listed
    row = re.search(r"^\| `llm_probe_request_failures_total` \| counter \| (.*?) \|", text, re.M).group(1)
    assert row == "`target`, `scenario`, `model`, `case`, `concurrency`, `reason`", row


def test_the_alerts_reference_lists_every_alert_and_recording_rule():
    alerts, records = set(), set()
    for path in gen_reference.rule_files():
        with open(path) as f:
            for group in yaml.safe_load(f)["groups"]:
                for rule in group["rules"]:
                    (alerts if "alert" in rule else records).add(rule.get("alert") or rule["record"])
    text = gen_reference.render_alerts()
    assert alerts and {m for m in re.findall(r"^### (\w+)$", text, re.M)} == alerts
    assert records and set(re.findall(r"^\| `([a-z_:0-9]+)` \| `prometheus/rules/", text, re.M)) == records


def test_the_check_mode_fails_on_a_stale_page(tmp_path, monkeypatch):
    stale = tmp_path / "metrics.md"
    stale.write_text("hand-edited\n")
    monkeypatch.setattr(gen_reference, "OUT_METRICS", str(stale))
    monkeypatch.setattr(gen_reference, "OUT_ALERTS", str(tmp_path / "alerts.md"))
    assert gen_reference.main(["--check"]) == 1
    assert stale.read_text() == "hand-edited\n"  # --check writes nothing
    assert gen_reference.main([]) == 0
    assert gen_reference.main(["--check"]) == 0


def _nav_pages(nav) -> set:
    pages = set()
    for item in nav:
        if isinstance(item, str):
            pages.add(item)
        else:
            for value in item.values():
                pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_is_in_the_nav():
    # mkdocs only logs (INFO) a page left out of the nav, so --strict would not catch it.
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        config = yaml.safe_load(f)
    docs = os.path.join(ROOT, "docs")
    pages = {os.path.relpath(os.path.join(d, n), docs) for d, _, names in os.walk(docs) for n in names
             if n.endswith(".md")}
    nav = _nav_pages(config["nav"])
    assert pages - nav == set(), f"pages missing from the nav in mkdocs.yml: {sorted(pages - nav)}"
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"


def test_mkdocs_builds_strictly(tmp_path):
    # Not skipped when mkdocs is missing: `make install` installs the docs extra.
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # a banner, not a finding
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "site" / "reference" / "metrics" / "index.html").is_file()
    assert (tmp_path / "site" / "runbooks" / "LLMProbeFailing" / "index.html").is_file()


def test_readme_links_point_at_files_that_exist():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
             if "://" not in target and not target.startswith("#")]
    assert links, "the README links no docs page"
    missing = [link for link in links if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, f"README links to missing files: {missing}"
    # The map of the docs covers every top-level page of the nav.
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        nav = _nav_pages(yaml.safe_load(f)["nav"])
    top = {p for p in nav if "/" not in p and p != "index.md"}
    unmapped = sorted(p for p in top if f"docs/{p}" not in links)
    assert not unmapped, f"README's map of the docs leaves out {unmapped}"


def _yaml_blocks(page: str) -> list[str]:
    with open(os.path.join(ROOT, "docs", page)) as f:
        return re.findall(r"```yaml\n(.*?)```", f.read(), re.S)


def test_the_other_engines_scenarios_pass_the_config_check():
    from exporter.config import load_text

    [block] = [b for b in _yaml_blocks("other-engines.md") if b.startswith("targets:")]
    cfg = load_text(block, "other-engines.md")
    assert [s.name for s in cfg.scenarios] == ["llamacpp-chat", "vllm-chat", "lmstudio-chat", "llamacpp-python-chat"]
    assert {t.name for t in cfg.targets} == {"llamacpp", "vllm", "lmstudio", "llamacpp-python"}
    assert all(s.api == "openai" for s in cfg.scenarios)


@pytest.mark.prometheus
def test_the_engines_scrape_config_passes_promtool(tmp_path):
    """The documented scrape jobs, with the secret and the target file made real (promtool checks both)."""
    [block] = [b for b in _yaml_blocks("other-engines.md") if b.startswith("scrape_configs:")]
    secret, targets = tmp_path / "vllm-api-key", tmp_path / "llm-engines.json"
    secret.write_text("s3cret\n")
    targets.write_text('[{"targets": ["10.0.0.7:8080"], "labels": {"target": "gpu-box-llamacpp"}}]\n')
    text = block.replace("/run/secrets/vllm-api-key", str(secret)).replace(
        "/etc/prometheus-targets/llm-engines.json", str(targets))
    jobs = yaml.safe_load(text)["scrape_configs"]
    # The engines' series get the target name the exporter's scenario file gives them.
    assert {j["job_name"]: j.get("static_configs", [{}])[0].get("labels", {}).get("target") for j in jobs} == {
        "ollama-perf-exporter": None, "llamacpp": "llamacpp", "vllm": "vllm", "llm-engines": None}
    (tmp_path / "prometheus.yml").write_text(text)
    res = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
