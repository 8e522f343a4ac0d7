"""The local GPUs for the bench report, from `nvidia-smi` (NVIDIA's own tool).

`nvidia-smi --query-gpu=... --format=csv` prints a header naming each field (with its unit,
`memory.total [MiB]`) and one line per GPU; unsupported fields read `[N/A]` or `[Requested
functionality has been deprecated]`. Fields are read by header name, so their order and any
the driver adds do not matter. No tool, or a failing one, means "no GPU data": an empty list
and one log line, never an error.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import subprocess
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

FACT_FIELDS = ("index", "name", "uuid", "driver_version", "memory.total", "memory.used", "power.limit",
               "clocks.max.sm", "clocks.max.memory")
SAMPLE_FIELDS = ("index", "utilization.gpu", "memory.used", "power.draw")
TIMEOUT_S = 10

# Unit in the header -> factor to base units (bytes, watts, hertz, ratio).
_UNITS = {"MiB": 2**20, "W": 1.0, "MHz": 1e6, "%": 0.01}
# Output keys for the fields we ask for, in base units.
_KEYS = {"index": "index", "name": "name", "uuid": "uuid", "driver_version": "driver_version",
         "memory.total": "memory_total_bytes", "memory.used": "memory_used_bytes", "power.limit": "power_limit_watts",
         "power.draw": "power_watts", "utilization.gpu": "utilisation", "clocks.max.sm": "max_sm_clock_hz",
         "clocks.max.memory": "max_memory_clock_hz"}

# Peak memory bandwidth (bytes/s) from the vendors' datasheets, for the decode roofline when
# --memory-bandwidth is not given. Matched as a substring of the reported name, longest first.
KNOWN_BANDWIDTH = {
    "H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12, "A100-SXM4-40GB": 1.555e12, "A100-PCIE-40GB": 1.555e12, "L40S": 864e9, "L40": 864e9,
    "L4": 300e9, "A10": 600e9, "T4": 320e9, "V100": 900e9, "RTX 6000 Ada": 960e9, "RTX 4090": 1008e9,
    "RTX 4080 SUPER": 736e9, "RTX 4080": 717e9, "RTX 4070": 504e9, "RTX 3090": 936e9, "RTX 3080": 760e9,
    "RTX 2080 SUPER": 496e9, "MI300X": 5.3e12, "MI250X": 3.2e12, "MI210": 1.6e12,
}


def known_bandwidth(name: str) -> Optional[float]:
    name = name.upper()
    for key in sorted(KNOWN_BANDWIDTH, key=len, reverse=True):
        if key.upper() in name:
            return KNOWN_BANDWIDTH[key]
    return None


def _value(field: str, unit: Optional[str], cell: str) -> Any:
    cell = cell.strip()
    if not cell or cell.startswith("[") or cell == "N/A":
        return None
    if field in ("name", "uuid", "driver_version"):
        return cell
    if unit and cell.endswith(" " + unit):
        cell = cell[: -len(unit) - 1]
    try:
        number = float(cell)
    except ValueError:
        return None
    if field == "index":
        return int(number)
    return number * _UNITS.get(unit or "", 1.0)


def parse_query_gpu_csv(text: str) -> list[dict[str, Any]]:
    """`nvidia-smi --query-gpu=... --format=csv` (with its header) -> one dict per GPU, base units."""
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if len(rows) < 2:
        return []
    header = []
    for col in rows[0]:
        field, _, unit = col.strip().partition(" [")
        header.append((field, unit.rstrip("]") or None))
    gpus = []
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        gpu = {_KEYS[f]: _value(f, unit, cell) for (f, unit), cell in zip(header, row) if f in _KEYS}
        gpus.append(gpu)
    return gpus


Runner = Callable[..., subprocess.CompletedProcess]


def _query(fields: tuple[str, ...], run: Runner) -> Optional[list[dict[str, Any]]]:
    if shutil.which("nvidia-smi") is None and run is subprocess.run:
        return None
    try:
        res = run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv"],
                  capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): no GPU data", exc)
        return None
    if res.returncode != 0:
        log.warning("nvidia-smi exited with %s: no GPU data: %s", res.returncode, (res.stderr or res.stdout).strip()[:200])
        return None
    gpus = parse_query_gpu_csv(res.stdout)
    if not gpus:
        log.warning("nvidia-smi printed no GPU line: no GPU data")
        return None
    return gpus


def gpu_facts(run: Runner = subprocess.run) -> list[dict[str, Any]]:
    """The GPUs for system.json (name, memory, driver, power limit, clocks, datasheet bandwidth)."""
    gpus = _query(FACT_FIELDS, run)
    if gpus is None:
        if run is subprocess.run and shutil.which("nvidia-smi") is None:
            log.info("no nvidia-smi on this host: no GPU data")
        return []
    for g in gpus:
        g["memory_bandwidth_bytes_per_s"] = known_bandwidth(g.get("name") or "")
    return gpus


def gpu_sample(run: Runner = subprocess.run) -> Optional[list[dict[str, Any]]]:
    """Utilisation (0-1), memory used (bytes) and power draw (W) of each GPU now, or None."""
    return _query(SAMPLE_FIELDS, run)
