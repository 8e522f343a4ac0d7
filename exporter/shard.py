"""Which targets this replica probes when several replicas split a fleet.

The hash is Prometheus's `hashmod`: the last 8 bytes of the MD5 of the target name, big-endian,
modulo the replica count. A relabel rule `hashmod` over the same name gives the same answer,
and the split depends on nothing but the name, so replicas agree without talking.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass
from typing import Optional


def hashmod(value: str, modulus: int) -> int:
    digest = hashlib.md5(value.encode()).digest()
    return int.from_bytes(digest[8:], "big") % modulus


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if self.count < 1:
            raise ValueError("shard count must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be between 0 and {self.count - 1}")

    def owns(self, target_name: str) -> bool:
        return self.count == 1 or hashmod(target_name, self.count) == self.index


_ORDINAL_RE = re.compile(r"-(\d+)$")


def ordinal_from_hostname(hostname: Optional[str] = None) -> int:
    """A StatefulSet pod's ordinal: `name-2` -> 2 (the pod's hostname is its name)."""
    hostname = hostname if hostname is not None else (os.environ.get("HOSTNAME") or socket.gethostname())
    m = _ORDINAL_RE.search(hostname.split(".", 1)[0])
    if not m:
        raise ValueError(f"--shard.index=auto: hostname {hostname!r} does not end in -<ordinal> like a StatefulSet pod")
    return int(m.group(1))
