"""Time estimates before a run, sweep or study starts: from this machine's measured speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.views.common import expected_words
from engine.core.config import config_hash
from engine.orchestration import timings
from engine.orchestration.presets import PRESETS, build_config
from engine.orchestration.store import RunIndex, create_run
from engine.orchestration.sweep_catalogue import sweep_cells, sweep_spec


def _done(preset: str, wall_s: float, sets: list[str] | None = None) -> dict[str, Any]:
    """A run index row of a finished run of ``preset`` (with ``sets``) that took ``wall_s``."""
    return {"state": "done", "preset": preset, "wall_s": wall_s,
            "config_hash": config_hash(build_config(preset, sets=sets or []))}


def test_before_anything_ran_here_the_reference_figure_is_given_as_such() -> None:
    e = timings.expected_preset("mia-secagg", [])
    assert e.seconds == 60.0 * PRESETS["mia-secagg"]["minutes"] and e.basis == 0
    assert "on 2 quiet CPU cores" in expected_words(e)


def test_a_slower_machine_gets_estimates_scaled_by_its_measured_speed() -> None:
    """The newcomer's case: a preset said "about 2 min" on a machine three times slower
    than the reference. After one finished run of another preset, the estimate follows."""
    reference = 60.0 * PRESETS["study-setup"]["minutes"]
    runs = [_done("study-setup", 3 * reference)]
    assert timings.speed_ratio(runs) == (pytest.approx(3.0), 1)
    e = timings.expected_preset("mia-secagg", runs)
    assert e.seconds == pytest.approx(3 * 60.0 * PRESETS["mia-secagg"]["minutes"])
    assert expected_words(e).startswith(f"about {e.seconds / 60:.0f} min (at this machine's "
                                        "speed, measured over its last 1 finished run)")
    # A run that is not one of the catalogue's experiments says nothing about the speed.
    assert timings.speed_ratio([_done("smoke", 999.0, ["seed=7"])]) == (1.0, 0)


def test_a_preset_that_ran_here_is_estimated_from_its_own_newest_times() -> None:
    runs = [_done("mia-secagg", t) for t in (330.0, 300.0, 900.0, 310.0, 320.0, 10.0)]
    e = timings.expected_preset("mia-secagg", runs)
    assert (e.seconds, e.basis) == (320.0, 5)  # median of the newest 5; the oldest is left out


def test_a_sweep_counts_only_its_experiments_still_to_run() -> None:
    cells = sweep_cells("poison-model")
    reference = 60.0 * sweep_spec("poison-model")["minutes"]
    assert timings.expected_sweep("poison-model", []).seconds == pytest.approx(reference)
    first = cells[0]
    runs = [_done(first.preset, 1.0, first.sets)]
    e = timings.expected_sweep("poison-model", runs)
    assert (e.cells, e.reused) == (len(cells), 1)
    assert f"1 of {len(cells)} experiments already finished" in expected_words(e)
    everything = [_done(c.preset, 1.0, c.sets) for c in cells]
    assert expected_words(timings.expected_sweep("poison-model", everything)).startswith(
        "already finished")


def test_the_run_index_records_what_estimates_need(tmp_path: Path) -> None:
    """Real run folders: the index keeps each run's config hash beside its wall time."""
    cfg = build_config("study-setup")
    run = create_run(cfg, tmp_path, preset="study-setup")
    run.set_status("done", finished=time.time())
    run.write_summary({"timing": {"wall_s": 61.5}})
    (row,) = RunIndex(tmp_path).list()
    assert (row["config_hash"], row["wall_s"]) == (config_hash(cfg), 61.5)
    assert timings.expected_preset("study-setup", [row]).seconds == 61.5
