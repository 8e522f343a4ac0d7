"""The Prometheus text format 0.0.4, written directly: family headers, label blocks, values.

prometheus_client formats every sample in Python at about 12 us each; the state store
renders a key's text only when the key changes, so it writes the same format itself, byte
for byte as prometheus_client does (tests/test_golden.py parses it back with
prometheus_client's parser, and checks it with promtool where that is installed).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.utils import floatToGoString


@dataclass(frozen=True)
class Family:
    name: str
    type: str  # counter | gauge | histogram | summary
    help: str

    @property
    def header(self) -> str:
        doc = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.type}\n"


def escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def fmt(value: float) -> str:
    # Counts are the most common values: skip floatToGoString's work for them.
    if type(value) is int and -1_000_000 < value < 1_000_000:
        return f"{value}.0"
    return floatToGoString(value)


class Labels:
    """One child's label block, `{a="x",b="y"}`, labels sorted as prometheus_client writes them.

    Escaped and sorted once per key; `around(name)` gives the text before and after one more
    label (a histogram's `le`, a failure's `reason`), so a bucket line is two concatenations."""

    __slots__ = ("pairs", "text")

    def __init__(self, names: tuple[str, ...], values: tuple[str, ...]):
        self.pairs = sorted((n, escape(str(v))) for n, v in zip(names, values))
        self.text = "{" + ",".join(f'{n}="{v}"' for n, v in self.pairs) + "}"

    def plus(self, names: tuple[str, ...], values: tuple[str, ...]) -> "Labels":
        """These labels and more: only the new values are escaped."""
        new = Labels.__new__(Labels)
        new.pairs = sorted(self.pairs + [(n, escape(str(v))) for n, v in zip(names, values)])
        new.text = "{" + ",".join(f'{n}="{v}"' for n, v in new.pairs) + "}"
        return new

    def around(self, name: str) -> tuple[str, str]:
        before = [f'{n}="{v}"' for n, v in self.pairs if n < name]
        after = [f'{n}="{v}"' for n, v in self.pairs if n > name]
        return "{" + "".join(x + "," for x in before) + name + '="', '"' + "".join("," + x for x in after) + "}"


LE_TEXT: dict[tuple[float, ...], list[str]] = {}


def le_text(bounds: tuple[float, ...]) -> list[str]:
    text = LE_TEXT.get(bounds)
    if text is None:
        text = LE_TEXT[bounds] = [floatToGoString(b) for b in bounds] + ["+Inf"]
    return text
