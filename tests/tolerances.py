"""Float tolerances of the numeric tests, derived from what was measured across CPU kernels.

``tests/golden/spread.json`` holds how far each golden figure and each batched/bf16 quantity
moved across ten kernel selections and thread counts of one machine (torch's ATen capability
default/AVX2/AVX-512, oneDNN capped at AVX2/AVX512_CORE, MKL at AVX2, OpenBLAS as Haswell, 1
and 2 threads; ``tests/golden/measure_spread.py`` says how, and remeasures). The values a
review measured on another CPU (an Intel Xeon with AVX-512 and AMX) lie inside that spread.

* A figure is compared with ``FACTOR ×`` its measured spread, never less than ``FLOOR``
  (relative): a change of code that moves it further than another CPU would is caught.
* A figure whose spread exceeds ``CHAOTIC`` is not compared as a number: Adam with
  InstanceNorm amplifies rounding over the rounds (smoke's final MAE moves by 4.6 % across
  kernels), so a bound wide enough for every CPU would pass almost anything. The verdicts,
  counts and early rounds computed beside such figures are compared exactly or tightly.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SPREAD_FILE = Path(__file__).parent / "golden" / "spread.json"
FACTOR = 3.0
FLOOR = 1e-6
CHAOTIC = 1e-2


@cache
def spread() -> dict[str, Any]:
    return json.loads(SPREAD_FILE.read_text())


def golden_spread(case: str, path: str) -> float:
    """The largest relative distance of golden figure ``path`` of ``case`` across kernels."""
    return spread()["golden"][case]["max_rel_dev"][path]


def golden_rtol(case: str, path: str) -> float | None:
    """Relative tolerance of a golden figure; None: chaotic, not compared as a number."""
    s = golden_spread(case, path)
    return None if s > CHAOTIC else max(FACTOR * s, FLOOR)


def measured(*keys: str) -> Any:
    """A measured quantity of spread.json by its keys, e.g. ``measured("batched", ...)``."""
    value: Any = spread()
    for key in keys:
        value = value[key]
    return value
