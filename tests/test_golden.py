"""Golden figures: fixed-seed runs of one preset per analysis must reproduce the figures
recorded in ``tests/golden/summary_figures.json``.

They were recorded before the engine was reorganised into layers and guard every later
restructuring: a move of code must not move a number. Torch runs on one thread here
(conftest), so results are deterministic on one machine kind; floats are compared to 1e-6
relative. The runs take the sequential local-training path (``federation.batched_clients =
off``), the reference the batched path is checked against in tests/test_batched.py: summing
the same numbers in another order changes the last bits, and Adam with normalisation layers
amplifies that over the rounds, so the golden figures pin one summation order.

Regenerate (only when a change of behaviour is intended, and say so in the commit):
``FEDSCT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

GOLDEN = Path(__file__).parent / "golden" / "summary_figures.json"
RTOL = 1e-6
# Small versions of the presets, so that the four runs take about a minute.
CASES: dict[str, tuple[str, list[str]]] = {
    "smoke": ("smoke", []),
    "membership": ("mia-paper", ["federation.rounds=3", "federation.local_epochs=2",
                                 "federation.server_view_rounds=[2,3]",
                                 "data.slices_per_patient=4", "data.image_size=32",
                                 "model.channels=[8,16,32]", "model.num_res_units=1",
                                 "attacks.membership.bootstrap=50"]),
    "inversion": ("inversion-easy", ["federation.rounds=2", "attacks.inversion.iterations=15",
                                     "attacks.inversion.restarts=2",
                                     "attacks.inversion.snapshot_every=0"]),
    "poisoning": ("poison-high", ["federation.rounds=3"]),
}


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a summary that a reorganisation must not change (no timings)."""
    fed = summary["federation"]
    out: dict[str, Any] = {"history": fed["history"], "per_center": fed["per_center"],
                           "dp": fed["dp"]}
    if "mia" in summary:
        mia = summary["mia"]
        out["mia"] = {k: mia[k] for k in ("auc", "auc_ci", "patient", "verdict",
                                          "baselines", "variants")}
    if "inversion" in summary:
        inv = summary["inversion"]
        out["inversion"] = {k: inv[k] for k in ("ssim", "ssim_body", "floor_ssim_body",
                                                "psnr_db", "ssim_ct", "verdict",
                                                "calibration")}
        out["inversion"]["calibration"].pop("seconds", None)
        out["inversion"]["final_loss"] = {c: p["final_loss"]
                                          for c, p in inv["per_client"].items()}
    if "poisoning" in summary:
        poison = summary["poisoning"]
        out["poisoning"] = {"cells": poison["cells"], "baseline": poison["baseline"],
                            "detection": poison["detection"]}
    return json.loads(json.dumps(out))  # tuples → lists, as stored


def assert_same(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, int | float), (path, got, want)
        assert math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-12), (path, got, want)
    else:
        assert got == want, (path, got, want)


@pytest.mark.parametrize("case", list(CASES))
def test_golden_figures(case: str, runs_dir: Path) -> None:
    preset, sets = CASES[case]
    run = create_run(build_config(preset, sets=[*sets, "federation.batched_clients=off"]),
                     runs_dir)
    summary = execute(run)
    assert summary is not None, (run.path / "log.txt").read_text()
    got = figures(summary)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("FEDSCT_UPDATE_GOLDEN") == "1":
        stored[case] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"golden figures of {case!r} rewritten")
    assert case in stored, f"no golden figures for {case!r}: see the module docstring"
    assert_same(got, stored[case], case)
