"""What, besides the config, decides a run's figures: the numeric environment.

Floating-point results depend on the torch thread count (each count splits every parallel
sum differently), on the kernels the libraries pick for the CPU (torch's own by its CPU
capability, oneDNN's convolutions, MKL's matrix products, OpenBLAS for numpy; each can be
capped by an environment variable) and on the library versions. A run records these in
``summary.json`` → ``environment``; two runs with the same config and the same
:data:`REUSE_KEYS` compute the same figures on the same machine, so only such a run is reused
in place of a new one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# Environment variables that cap the CPU kernels (read when the libraries load).
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                    "MKL_CBWR", "OPENBLAS_CORETYPE")
# The entries of numeric_environment() that must agree for a finished run to stand in for a
# new one.
REUSE_KEYS = ("threads", "device", "cpu_capability", "kernel_limits", "torch", "monai")


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numeric_environment(threads: int) -> dict[str, Any]:
    """The numeric environment of a run on ``threads`` torch threads in this process:
    ``threads``, ``device``, ``cpu_capability`` (torch's kernels: e.g. ``AVX512``),
    ``kernel_limits`` (the capping variables that are set), ``cpu``, ``torch``, ``monai``."""
    import monai
    import torch

    return {"threads": threads,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_limits": {v: os.environ[v] for v in KERNEL_VARIABLES if os.environ.get(v)},
            "cpu": cpu_model(), "torch": torch.__version__, "monai": monai.__version__}


def same_numbers(recorded: Any, wanted: dict[str, Any]) -> bool:
    """Whether a run's recorded ``environment`` computes the figures ``wanted`` would (the
    :data:`REUSE_KEYS` agree); a run that recorded none never does."""
    return isinstance(recorded, dict) and all(recorded.get(k) == wanted[k] for k in REUSE_KEYS)
