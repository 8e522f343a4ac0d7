"""report.html: self-contained, every REPORT.md section rendered, tables sortable, checked in a real browser."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from exporter.config import load_text
from exporter.report.bench import run_bench
from exporter.report.html import render_html
from tests.kit.fake_ollama import Behavior, FakeOllama
from tests.test_bench import bench_yaml


class Page(HTMLParser):
    """Headings, images and tables of a page (the DOM chromium dumped)."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.tables, self.external = [], [], [], []
        self._in = None
        self._text = []
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith(("data:", "#")):
                self.external.append(attrs[key])
        if tag in ("h1", "h2", "h3", "h4"):
            self._in, self._text = tag, []
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append({"attrs": attrs, "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._in, self._text = tag, []
        elif tag in ("link", "iframe", "object"):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == self._in and tag.startswith("h"):
            self.headings.append("".join(self._text).strip())
            self._in = None
        elif tag == self._in and tag in ("td", "th"):
            self._row.append("".join(self._text).strip())
            self._in = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in:
            self._text.append(data)


def chromium(*args, timeout=90):
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: make system-deps (apt-get install chromium)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", *args], capture_output=True, text=True, timeout=timeout)


def markdown_headings(text):
    return [re.sub(r"[`*]", "", m.group(2)).replace("\\", "") for m in re.finditer(r"^(#{1,4}) (.*)$", text, re.M)]


def test_markdown_subset_converts_without_a_browser(tmp_path):
    page = render_html("# T\n\n## A `b` **c**\n\n| x | y |\n|---|---|\n| 2 | <i> |\n\n- one\n- two\n\n![p](nope.png)\n"
                       "text \\* star\n", str(tmp_path))
    assert '<h2 id="a-b-c">A <code>b</code> <strong>c</strong></h2>' in page
    assert "<td>&lt;i&gt;</td>" in page and "<li>two</li>" in page and "text * star" in page
    assert "[missing plot nope.png]" in page


@pytest.mark.browser
def test_report_html_renders_every_section_in_headless_chromium(tmp_path):
    out = str(tmp_path / "o")
    with FakeOllama(Behavior(tokens=6, token_interval=0.002, load_time=0.05)) as server:
        cfg = load_text(bench_yaml(server.url))
        first = str(tmp_path / "first")
        assert run_bench(cfg, first, quiet=True, memory_bandwidth=10e9) == 0
        assert run_bench(cfg, out, compare=first, quiet=True, memory_bandwidth=10e9) == 0
    report_md = open(os.path.join(out, "REPORT.md")).read()
    html_path = os.path.join(out, "report.html")
    source = open(html_path).read()
    assert "http://" not in source.replace(server.url, "") and "https://" not in source  # nothing to fetch

    res = chromium("--dump-dom", f"file://{html_path}")
    assert res.returncode == 0, res.stderr[-2000:]
    page = Page()
    page.feed(res.stdout)
    assert page.external == []
    expected = markdown_headings(report_md)
    assert len(expected) > 20 and page.headings == expected
    plots = re.findall(r"^!\[[^\]]*\]\(([^)]+\.png)\)$", report_md, re.M)
    assert len(plots) >= 6 and len(page.images) == len(plots)
    assert all(img["src"].startswith("data:image/png;base64,iVBORw0KGgo") for img in page.images)
    md_tables = len(re.findall(r"^\|(---\|)+$", report_md, re.M))
    assert len(page.tables) == md_tables and all(t["attrs"].get("class") == "sortable" for t in page.tables)

    # Sort the summary table by its output tokens (they differ by concurrency): a click in the real browser, then the DOM.
    clicked = os.path.join(out, "clicked.html")
    with open(clicked, "w") as f:
        f.write(source.replace("</body>", "<script>var th = document.querySelectorAll('table')[1].tHead.rows[0]"
                                          ".cells[11]; th.click(); th.click();</script></body>"))
    res = chromium("--dump-dom", f"file://{clicked}")
    sorted_page = Page()
    sorted_page.feed(res.stdout)
    header, *rows = sorted_page.tables[1]["rows"]
    assert header[11].startswith("tokens")
    tokens = [int(r[11]) for r in rows]
    assert tokens[:2] == [48, 24] and tokens == sorted(tokens, reverse=True)  # clicked twice: descending
    unsorted = [int(r[11]) for r in page.tables[1]["rows"][1:]]
    assert sorted(unsorted) == sorted(tokens) and unsorted != tokens

    shot = os.path.join(out, "report.png")
    res = chromium(f"--screenshot={shot}", "--window-size=1280,2400", f"file://{html_path}")
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
