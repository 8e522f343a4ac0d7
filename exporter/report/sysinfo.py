"""System information for the report: the machine, the server, the models."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Iterable, Optional

import psutil

from .. import __version__
from ..config import Config, Target
from ..ollama import OllamaClient, OllamaError
from . import gpu


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_memory_bandwidth(size_mb: int = 256, repeats: int = 5) -> Optional[float]:
    """Bytes/s that one core moves in a large array copy (read + write), best of a few tries.

    A rough, single-threaded stand-in for the bandwidth that bounds CPU decoding;
    --memory-bandwidth overrides it with a datasheet figure.
    """
    try:
        import numpy as np
    except ImportError:
        return None
    src = np.ones(size_mb * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def collect(config: Config, bandwidth: Optional[float] = None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    gpus = gpu.gpu_facts()
    source = "configured" if bandwidth else "measured (single-thread array copy)"
    if not bandwidth and gpus and gpus[0].get("memory_bandwidth_bytes_per_s"):
        # Decode on a GPU is bounded by the GPU's memory, not the host's.
        bandwidth = gpus[0]["memory_bandwidth_bytes_per_s"]
        source = f"datasheet of the {gpus[0]['name']} (GPU table)"
    info: dict[str, Any] = {
        "collected_at": time.time(),
        "hostname": platform.node(),
        "exporter_version": __version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        # Other work on the machine slows a CPU server: the 1/5/15-minute load when the bench began.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "total_ram_bytes": vm.total,
        "memory_bandwidth_bytes_per_s": bandwidth if bandwidth else measure_memory_bandwidth(),
        "memory_bandwidth_source": source,
        "gpus": gpus,
        "targets": {},
    }
    models_by_target: dict[str, set[str]] = {}
    for s in config.scenarios:
        for t in s.targets:
            models_by_target.setdefault(t.name, set()).add(s.model)
    for target in config.targets:
        info["targets"][target.name] = target_info(target, sorted(models_by_target.get(target.name, ())))
    return info


def target_info(target: Target, models: Iterable[str]) -> dict[str, Any]:
    client = OllamaClient(target)
    out: dict[str, Any] = {"url": target.url, "models": {}}
    try:
        out["ollama_version"] = client.version()
    except OllamaError as exc:
        out["error"] = exc.message
        return out
    for model in models:
        try:
            out["models"][model] = client.show(model).to_dict()
        except OllamaError as exc:
            out["models"][model] = {"error": exc.message}
    return out


def running_model_facts(target: Target) -> list[dict[str, Any]]:
    """Loaded models with their size and VRAM share (taken while the model is loaded)."""
    try:
        return [m.to_dict() for m in OllamaClient(target).running_models()]
    except OllamaError:
        return []
