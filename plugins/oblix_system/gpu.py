"""NVIDIA GPU readings through NVML (``nvidia-ml-py``, optional: ``oblix[gpu]``)."""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _nvml() -> Any:
    """The initialised ``pynvml`` module, or None when NVML or a GPU is unavailable."""
    with _lock:
        if "module" not in _state:
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["module"] = pynvml
            except Exception as exc:  # no package, no driver, no GPU
                _state["module"] = None
                _state["why"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _state["module"]


def read_gpus() -> dict[str, Any]:
    """``{"present": bool, "devices": [...], "utilization": max %, "memory_percent": max %}``."""
    nvml = _nvml()
    if nvml is None:
        return {"present": False, "reason": _state.get("why", "NVML unavailable")}
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = nvml.nvmlDeviceGetName(handle)
        devices.append(
            {
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "utilization": float(util.gpu),
                "memory_percent": round(100.0 * memory.used / memory.total, 1) if memory.total else 0.0,
                "memory_total_mb": round(memory.total / 2**20),
            }
        )
    if not devices:
        return {"present": False, "reason": "NVML reports no GPU"}
    return {
        "present": True,
        "devices": devices,
        "utilization": max(d["utilization"] for d in devices),
        "memory_percent": max(d["memory_percent"] for d in devices),
    }
