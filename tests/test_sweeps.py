"""Sweeps: real runs collected into one table; finished cells are reused on a rerun."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.config import ConfigError, config_hash
from engine.core.processes import descendants, pid_alive
from engine.core.run_folder import RunFolder
from engine.orchestration import sweep_catalogue, sweeps
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex


@pytest.fixture
def tiny_sweep(monkeypatch):
    spec = {"description": "two aggregators on the smoke federation", "base": "smoke",
            "cells": [[], ["federation.aggregator=fedmedian"]]}
    monkeypatch.setitem(sweep_catalogue.SWEEPS, "tiny", spec)
    return spec


def test_sweep_writes_table_and_resumes_without_retraining(runs_dir, tiny_sweep):
    said: list[str] = []
    sets = ["federation.rounds=1"]
    folder = sweeps.run_sweep("tiny", sets=sets, progress=said.append)
    rows = json.loads((folder / "table.json").read_text())
    assert [r["cell"] for r in rows] == ["baseline", "aggregator=fedmedian"]
    assert [r["aggregator"] for r in rows] == ["fedavg", "fedmedian"]
    assert all(r["mae_hu"] > 0 for r in rows)
    with open(folder / "table.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    state = json.loads((folder / "sweep.json").read_text())
    assert state["trained"] == 2 and state["cells_done"] == 2

    said.clear()
    again = sweeps.run_sweep("tiny", sets=sets, progress=said.append)
    assert again == folder
    assert all("reusing" in line for line in said), said
    assert json.loads((folder / "sweep.json").read_text())["trained"] == 0
    assert len(RunIndex().list()) == 2  # no new runs


POISONED = ["attacks.poisoning.enabled=true", "attacks.poisoning.kind=update_noise",
            "attacks.poisoning.malicious_centers=[0]", "attacks.poisoning.noise_std=0.3"]


def test_parallel_workers_train_clean_cells_first_and_agree(runs_dir, tmp_path, monkeypatch):
    # The poisoned cell comes first in the sweep; with workers it must still start after its
    # clean baseline finished, and reuse it instead of training one of its own.
    monkeypatch.setitem(sweep_catalogue.SWEEPS, "mixed", {
        "description": "a poisoned cell before the clean ones", "base": "smoke",
        "cells": [POISONED, [], ["federation.aggregator=fedmedian"]]})
    sets = ["federation.rounds=2"]
    said: list[str] = []
    folder = sweeps.run_sweep("mixed", sets=sets, workers=2, progress=said.append)
    assert [line.split("]")[0] for line in said] == ["[2/3", "[3/3", "[1/3"]
    state = json.loads((folder / "sweep.json").read_text())
    assert state["state"] == "done" and state["trained"] == 3
    rows = json.loads((folder / "table.json").read_text())
    assert [r["cell"] for r in rows] == [state["cells"][i]["label"] for i in range(3)]
    poisoned = json.loads((runs_dir / rows[0]["run_id"] / "summary.json").read_text())
    assert poisoned["poisoning"]["baseline_run"] == rows[1]["run_id"]
    assert len(RunIndex().list()) == 3  # no baseline trained twice
    # One worker thread instead of the in-process default changes only the summation order.
    alone = sweeps.run_sweep("mixed", root=tmp_path / "alone", sets=sets)
    for a, b in zip(rows, json.loads((alone / "table.json").read_text()), strict=True):
        assert a["cell"] == b["cell"] and a["mae_hu"] == pytest.approx(b["mae_hu"], rel=0.05)


def test_unknown_sweep_and_bad_cell_fail_before_running(runs_dir, monkeypatch):
    with pytest.raises(ConfigError, match="available: mia-dp"):
        sweeps.run_sweep("nope")
    monkeypatch.setitem(sweep_catalogue.SWEEPS, "broken", {"description": "", "base": "smoke",
                                                  "cells": [[], ["federation.rounds=0"]]})
    with pytest.raises(ConfigError, match="federation.rounds = 0"):
        sweeps.run_sweep("broken")
    assert RunIndex().list() == []


def test_sweep_progress_is_typed_and_never_points_outside_the_runs_root(tmp_path):
    assert sweeps.read_sweep_progress(tmp_path) is None  # never started
    (tmp_path / "sweep.json").write_text(json.dumps({
        "state": "running", "cells_done": 1, "current_run": "../../etc",
        "cells": [{"label": "clean", "run_id": "20261207-a"}, {"label": 3, "run_id": "/x"},
                  "junk"]}))
    progress = sweeps.read_sweep_progress(tmp_path)
    assert progress == sweeps.SweepProgress("running", 1, ("clean", None, None),
                                            ("20261207-a", None, None), None)
    for damaged in ('{"state": "running"}', '{"cells_done": "two"}', "[1]", '{"cells_do'):
        (tmp_path / "sweep.json").write_text(damaged)
        with pytest.raises(ValueError, match="sweep.json is damaged"):
            sweeps.read_sweep_progress(tmp_path)


@pytest.mark.parametrize("name", list(sweep_catalogue.SWEEPS))
def test_every_sweep_cell_is_a_valid_config(name):

    spec = sweeps.sweep_spec(name)
    hashes = {config_hash(build_config(spec["base"], sets=c)) for c in spec["cells"]}
    assert len(hashes) == len(spec["cells"])  # no two cells are the same experiment


def test_inversion_results_become_columns(runs_dir, monkeypatch):
    monkeypatch.setitem(sweep_catalogue.SWEEPS, "tiny-inv", {
        "description": "", "base": "smoke",
        "cells": [["defenses.prune_fraction=0.5"]],
    })
    folder = sweeps.run_sweep("tiny-inv", sets=[
        "federation.rounds=1", "attacks.inversion.enabled=true",
        "attacks.inversion.iterations=2", "attacks.inversion.restarts=1",
        "attacks.inversion.target_center=all"], progress=lambda _: None)
    (row,) = json.loads((folder / "table.json").read_text())
    summary = json.loads((runs_dir / row["run_id"] / "summary.json").read_text())["inversion"]
    assert row["prune_fraction"] == 0.5 and row["inversion_round"] == 1
    assert row["inversion_ssim_body"] == summary["ssim_body"]
    assert row["inversion_floor_ssim_body"] == summary["floor_ssim_body"]
    assert row["inversion_ssim_body[center-2]"] == summary["per_client"]["center-2"]["ssim_body"]


def test_sigterm_stops_the_workers_cells_before_the_sweep_ends(tmp_path: Path) -> None:
    """``fedsct sweep --workers 2`` ended by SIGTERM (a service manager, ``kill``) stops the
    cells its workers are training and leaves no worker process behind."""
    cmd = [sys.executable, "-m", "engine", "sweep", "--preset", "poison-breakdown",
           "--set", "federation.rounds=400", "--workers", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # both workers past their first round
            metrics = list(tmp_path.glob("2*/metrics.jsonl"))
            if len(metrics) == 2 and all(m.stat().st_size for m in metrics):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.5)
        else:
            pytest.fail("the sweep's two cells did not start within 180 s")
        workers = descendants(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(pid_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid_alive(w) for w in workers)
        states = {RunFolder(m.parent).status().state for m in metrics}
        assert states == {"cancelled"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
