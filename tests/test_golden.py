"""Golden figures: fixed-seed runs of one preset per analysis must reproduce the figures
recorded in ``tests/golden/summary_figures.json``.

They guard every restructuring: a move of code must not move a number further than another
CPU would. Each float is compared with a tolerance derived from how far it moved across
kernel selections and thread counts (``tests/tolerances.py``, measured into
``tests/golden/spread.json`` by ``tests/golden/measure_spread.py``); verdicts, counts and
every other discrete value exactly. Figures that rounding alone moves by more than 1 %
(the later rounds of Adam with InstanceNorm) are not compared as numbers: the early rounds
and the verdicts computed from them are. The runs take the sequential local-training path
(``federation.batched_clients = off``), the reference the batched path is checked against in
tests/test_batched.py.

Regenerate (only when a change of behaviour is intended, and say so in the commit):
``.venv/bin/python tests/golden/measure_spread.py --record`` (the figures and their spread).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from golden.measure_spread import leaves
from tolerances import golden_rtol, spread

from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

GOLDEN = Path(__file__).parent / "golden" / "summary_figures.json"
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
        out["inversion"]["null"] = inv["null"]
        out["inversion"]["leak_test"] = {c: {k: p[k] for k in ("gain", "leak", "p_value",
                                                               "null_ssim_body")}
                                         for c, p in inv["per_client"].items()}
    if "poisoning" in summary:
        poison = summary["poisoning"]
        out["poisoning"] = {k: poison[k] for k in ("cells", "baseline", "detection", "verdict",
                                                   "seeds", "ratio_ci", "fedavg_control")}
    return json.loads(json.dumps(out))  # tuples → lists, as stored


def assert_same(case: str, got: Any, want: Any, path: str = "") -> None:
    """``got`` equals ``want``: floats within their measured tolerance (chaotic ones only as
    finite numbers), everything else exactly."""
    where = path.lstrip(".")
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, got, want)
        for k in want:
            assert_same(case, got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(case, g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, int | float) and not isinstance(got, bool), (where, got, want)
        rtol = golden_rtol(case, where)
        if rtol is None:
            assert math.isfinite(got) == math.isfinite(want), (where, got, want)
        else:
            assert math.isclose(got, want, rel_tol=rtol, abs_tol=1e-12), (where, got, want, rtol)
    else:
        assert got == want, (where, got, want)


def run_case(case: str, root: Path) -> dict[str, Any]:
    """The figures of golden case ``case``, run in a new run folder under ``root``."""
    preset, sets = CASES[case]
    run = create_run(build_config(preset, sets=[*sets, "federation.batched_clients=off"]),
                     root)
    summary = execute(run)
    assert summary is not None, (run.path / "log.txt").read_text()
    return figures(summary)


@pytest.mark.parametrize("case", list(CASES))
def test_golden_figures(case: str, runs_dir: Path) -> None:
    got = run_case(case, runs_dir)
    stored = json.loads(GOLDEN.read_text())
    assert case in stored, f"no golden figures for {case!r}: see the module docstring"
    assert_same(case, got, stored[case])


@pytest.mark.parametrize("case", list(CASES))
def test_golden_tolerances_stay_tight(case: str) -> None:
    """The tolerances can fail: every figure of the untrained model and of round 1 is pinned
    to 0.3 % or better, and every stored figure has a measured spread."""
    flat = leaves(json.loads(GOLDEN.read_text())[case])
    paths = {p for p, v in flat.items() if isinstance(v, float)}
    assert paths == set(spread()["golden"][case]["max_rel_dev"]), "remeasure the spread"
    early = [p for p in paths if p.startswith(("history[0]", "history[1]"))]
    assert early and all((golden_rtol(case, p) or 1.0) <= 3e-3 for p in early), early


# Figures a review measured with this suite on another CPU (Intel Xeon, AVX-512 and AMX, 2
# cores), where the earlier 1e-6 tolerance failed: the measured tolerances must admit them.
# (Its inversion figure was the gain of the one fixed control, which the controls at the
# target's difficulty replaced.)
ANOTHER_CPU = {"smoke": ("history[1].ssim", 0.13986680),
               "membership": ("history[3].mae_hu", 1714.79),
               "poisoning": ("history[1].mae_hu", 1301.29)}


@pytest.mark.parametrize("case", list(ANOTHER_CPU))
def test_figures_of_another_cpu_are_within_the_tolerances(case: str) -> None:
    path, value = ANOTHER_CPU[case]
    want = leaves(json.loads(GOLDEN.read_text())[case])[path]
    rtol = golden_rtol(case, path)
    assert rtol is not None and math.isclose(value, want, rel_tol=rtol), (value, want, rtol)
    assert not math.isclose(value, want, rel_tol=1e-6)  # the old tolerance refused it
