"""One store for everything the exporter exports about probes and servers.

Every number lives in a slot keyed by its full key (keyspace.py): a case's histograms,
counters, batch gauge, SLO counters and live windows, a run's gauges, a server's last
snapshot. The store holds slots only for the keys of the current key space, which is
swapped atomically on every config load and every target-file change:

- a sink writes through `update()`, which finds the slot under the store's lock; a record
  whose key is not in the key space (a run of a removed target still in flight, a case
  that was dropped) finds no slot and is dropped, so nothing can bring a removed key back;
- `swap()` keeps the slots of keys that stay, makes empty ones for new keys and drops the
  rest, in one step under the same lock;
- the text of /metrics is rendered from the slots alone.

This is the fresh-registry-per-probe rule of blackbox_exporter, adapted to a prober that
keeps state between runs: the key space, not each metric's history, says what exists.

Rendering is incremental. Each part of a slot renders its own text fragment per metric
family; a fragment is rendered again only when its key changed (a write, or a new context
from a swap). A scrape joins the cached fragments family by family, which is a few
memory copies per family however many keys there are. The joined body is a list of
per-family byte strings, never one large join: one C-level join of a large body would
hold the GIL for tens of milliseconds, and the probes' reader threads need it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from prometheus_client.parser import text_string_to_metric_families

from .keyspace import CASE, KINDS, RUN, SERVER, CaseContext, Keyspace, RunContext
from .textformat import Family


@dataclass(frozen=True)
class Part:
    """One module's share of a kind of slot: how to make its state, which families it renders,
    and how it renders them. `render(key, state, context)` returns {family name: text}."""

    kind: str
    name: str
    families: tuple[Family, ...]
    new: Callable[[Any, Any], Any]  # (key, context) -> state
    render: Callable[[Any, Any, Any], dict[str, str]]


DEFAULT_CONTEXT = {CASE: CaseContext(), RUN: RunContext(), SERVER: None}


class Slot:
    __slots__ = ("context", "parts")

    def __init__(self, context, parts: dict[str, Any]):
        self.context = context
        self.parts = parts


class StateStore:
    """The slots of the current key space and their rendered text (see the module docstring)."""

    def __init__(self, parts: Iterable[Part] = (), open_keys: bool = False):
        """`open_keys`: make a slot for any key written, with the kind's default context. Only for
        tools that replay records without a config (the alert evaluation, the statistics tests);
        the exporter never opens its key space."""
        self.open_keys = open_keys
        self._lock = threading.Lock()
        self._parts: list[Part] = []
        self.keyspace = Keyspace()
        self._slots: dict[str, dict] = {kind: {} for kind in KINDS}
        # family name -> {key: text}, insertion order = key space order
        self._fragments: dict[str, dict] = {}
        self._family_kind: dict[str, str] = {}
        self._dirty: set[tuple[str, Any]] = set()
        self.version = 0  # bumped by every change: the exposition renders again when it moves
        self._rendered: Optional[tuple[int, list[bytes]]] = None
        for part in parts:
            self.add_part(part)

    def add_part(self, part: Part) -> None:
        with self._lock:
            self._parts.append(part)
            for family in part.families:
                self._fragments[family.name] = {}
                self._family_kind[family.name] = part.kind
            for key, slot in self._slots[part.kind].items():
                slot.parts[part.name] = part.new(key, slot.context)
                self._dirty.add((part.kind, key))
            self.version += 1

    # ---- the key space ----
    def swap(self, keyspace: Keyspace) -> None:
        """Make `keyspace` the current one: slots of kept keys stay, new keys get empty slots,
        the rest are dropped with their text, all at once."""
        with self._lock:
            for kind in KINDS:
                old = self._slots[kind]
                parts = [p for p in self._parts if p.kind == kind]
                new: dict = {}
                for key, context in keyspace.keys[kind].items():
                    slot = old.get(key)
                    if slot is None:
                        slot = Slot(context, {p.name: p.new(key, context) for p in parts})
                        self._dirty.add((kind, key))
                    elif slot.context != context:
                        slot.context = context
                        self._dirty.add((kind, key))
                    new[key] = slot
                self._slots[kind] = new
                for family, kind_of in self._family_kind.items():
                    if kind_of == kind:
                        frags = self._fragments[family]
                        self._fragments[family] = {k: frags[k] for k in new if k in frags}
            self._dirty = {(kind, key) for kind, key in self._dirty if key in self._slots[kind]}
            self.keyspace = keyspace
            self.version += 1

    # ---- writes ----
    def update(self, kind: str, key, part: str, change: Callable[[Any, Any], Optional[bool]]) -> bool:
        """Apply `change(state, context)` to the part's state of `key`, if the key exists.

        Returns False when the key is not in the key space: the record is dropped. `change`
        may return False to say that nothing visible changed (no re-render)."""
        with self._lock:
            slot = self._slots[kind].get(key)
            if slot is None:
                if not self.open_keys:
                    return False
                slot = self._open(kind, key)
            if change(slot.parts[part], slot.context) is not False:
                self._dirty.add((kind, key))
                self.version += 1
            return True

    def _open(self, kind: str, key) -> Slot:
        context = DEFAULT_CONTEXT[kind]
        parts = {p.name: p.new(key, context) for p in self._parts if p.kind == kind}
        slot = self._slots[kind][key] = Slot(context, parts)
        return slot

    def read(self, kind: str, key, part: str, read: Callable[[Any, Any], Any]):
        """read(state, context) under the lock, or None when the key is not in the key space."""
        with self._lock:
            slot = self._slots[kind].get(key)
            return None if slot is None else read(slot.parts[part], slot.context)

    def keys(self, kind: str) -> list:
        with self._lock:
            return list(self._slots[kind])

    # ---- rendering ----
    def _render_dirty(self) -> None:
        for kind, key in self._dirty:
            slot = self._slots[kind][key]
            for part in self._parts:
                if part.kind != kind:
                    continue
                texts = part.render(key, slot.parts[part.name], slot.context)
                for family in part.families:
                    text = texts.get(family.name)
                    frags = self._fragments[family.name]
                    if text:
                        frags[key] = text.encode()
                    else:
                        frags.pop(key, None)
        self._dirty = set()

    def render_chunks(self) -> list[bytes]:
        """The text of every family, one byte string per family (see the module docstring)."""
        with self._lock:
            if self._rendered is not None and self._rendered[0] == self.version:
                return list(self._rendered[1])
            version = self.version
            self._render_dirty()
            order = {kind: list(self._slots[kind]) for kind in KINDS}
            families = [
                (family, self._fragments[family.name], order[part.kind])
                for part in self._parts for family in part.families
            ]
            # Fragments are immutable bytes: copy the references, join outside the lock.
            snapshot = [(family, [frags[k] for k in keys if k in frags]) for family, frags, keys in families]
        chunks = [family.header.encode() + b"".join(texts) for family, texts in snapshot]
        with self._lock:
            if self.version == version:
                self._rendered = (version, chunks)
        return list(chunks)

    def render(self) -> bytes:
        return b"".join(self.render_chunks())

    # ---- prometheus_client's Collector protocol, for tests and tools that read a registry ----
    def describe(self):
        return []

    def collect(self):
        yield from text_string_to_metric_families(self.render().decode())
