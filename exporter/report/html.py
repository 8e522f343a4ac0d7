"""report.html: REPORT.md as one self-contained page (plots inlined, tables sortable, no network).

The Markdown is our own (markdown.py), so a converter for the subset it writes is enough:
headings, tables, images, bullet lists, paragraphs, **bold** and `code`. Every section of
REPORT.md is in the page because the page is made from it.
"""

from __future__ import annotations

import base64
import html
import os
import re

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""

# Click a header to sort by that column; numbers (with units or %) sort as numbers.
SORT_JS = """
function cellValue(row, i) {
  var text = row.cells[i] ? row.cells[i].textContent.trim() : "";
  var m = text.match(/^[+-]?\\d+(\\.\\d+)?/);
  return m ? parseFloat(m[0]) : text.toLowerCase();
}
function sortTable(th) {
  var table = th.closest("table"), i = th.cellIndex, body = table.tBodies[0];
  var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", dir);
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = cellValue(a, i), y = cellValue(b, i), r;
    if (typeof x === typeof y) { r = x < y ? -1 : x > y ? 1 : 0; } else { r = typeof x === "number" ? -1 : 1; }
    return dir === "ascending" ? r : -r;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () { sortTable(th); });
});
"""

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_HEADING = re.compile(r"^(#{1,6}) (.*)$")


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** (our Markdown escapes a literal star as \\*)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part.replace("\\*", "\x00"))
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        out.append(escaped.replace("\x00", "*"))
    return "".join(out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _image(alt: str, name: str, out_dir: str) -> str:
    path = os.path.join(out_dir, name)
    if os.path.sep in os.path.normpath(name) or not os.path.exists(path):
        return f"<p>[missing plot {html.escape(name)}]</p>"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def render_html(markdown_text: str, out_dir: str) -> str:
    lines = markdown_text.splitlines()
    body: list[str] = []
    title = "Benchmark report"
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        heading = _HEADING.match(stripped)
        image = _IMAGE.match(stripped)
        if not stripped:
            i += 1
        elif heading:
            level, text = len(heading.group(1)), heading.group(2)
            if level == 1:
                title = text
            body.append(f'<h{level} id="{_slug(text)}">{_inline(text)}</h{level}>')
            i += 1
        elif image:
            body.append(_image(image.group(1), image.group(2), out_dir))
            i += 1
        elif stripped.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= {"-", ":"}:
            header = _cells(stripped)
            i += 2
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in header)
            rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>')
        elif stripped.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not _HEADING.match(lines[i].strip()) \
                    and not lines[i].strip().startswith(("|", "- ", "![")):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{SORT_JS}</script>\n</body></html>\n")
