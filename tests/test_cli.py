"""The `fedsct` command writes complete run folders; jobs run detached and can be cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine.core.run_folder import RunFolder, RunStatus
from engine.federation.server_view import ServerView
from engine.orchestration.jobs import cancel_job, start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run, delete_run, open_run


def fedsct(*args, env_root=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=300)


def test_run_smoke_writes_complete_run_folder(tmp_path):
    out = tmp_path / "runs"
    proc = fedsct("run", "--preset", "smoke", "--out", str(out), "--set", "federation.rounds=2")
    assert proc.returncode == 0, proc.stderr
    run = RunFolder(__import__("pathlib").Path(proc.stdout.strip().splitlines()[-1]))
    assert "round   2/2" in proc.stderr
    assert run.status().state == "done"
    assert (run.path / "config.yaml").exists() and (run.path / "checkpoints/final.pt").exists()
    metrics = run.metrics()
    assert [m["round"] for m in metrics] == [0, 1, 2]
    s = json.loads((run.path / "summary.json").read_text())
    fed = s["federation"]
    assert s["config"]["federation"]["rounds"] == 2
    assert fed["rounds"] == 2 and fed["aggregator"] == "fedavg"
    assert fed["secure_aggregation"] is False
    assert [h["round"] for h in fed["history"]] == [0, 1, 2]
    assert set(fed["history"][0]) == {"round", "mae_hu", "psnr_db", "ssim"}
    assert set(fed["final"]) == {"mae_hu", "psnr_db", "ssim"}
    assert set(fed["per_center"]) == {"center-0", "center-1", "center-2"}
    assert "unseen_center" in fed and s["timing"]["wall_s"] > 0
    assert ServerView(run.path).rounds == [1, 2]
    for png in s["artifacts"]["samples"].values():
        assert (run.path / png).stat().st_size > 100
    listing = fedsct("runs", "--out", str(out))
    assert run.run_id in listing.stdout and "done" in listing.stdout


def test_bad_config_exits_2_with_message_and_no_run_folder(tmp_path):
    out = tmp_path / "runs"
    proc = fedsct("run", "--preset", "smoke", "--out", str(out), "--set", "federation.lr=-1")
    assert proc.returncode == 2
    assert "federation.lr = -1 is not allowed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_invalid_input_is_refused_before_torch_loads(tmp_path):
    """Validation takes a fraction of a second; torch, MONAI and Flower (seconds and hundreds
    of MB) load only once the config and the runs root are usable."""
    code = ("import sys, time\n"
            "from engine.orchestration.cli import main\n"
            "start = time.perf_counter()\n"
            "rc = main(sys.argv[1:])\n"
            "print(rc, time.perf_counter() - start,"
            " [m for m in ('torch', 'monai', 'flwr') if m in sys.modules])\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for argv in (["run", "--set", "bad.key=1"], ["run", "--preset", "nope"],
                 ["run", "--set", "federation.rounds=true"],
                 ["run", "--preset", "smoke", "--out", str(a_file)],
                 ["run", "--set", "data.whatif_patient=/etc"],
                 ["sweep", "--preset", "whatif"]):
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              text=True, timeout=60)
        rc, seconds, loaded = proc.stdout.split(maxsplit=2)
        assert (rc, loaded.strip()) == ("2", "[]"), (argv, proc.stdout, proc.stderr)
        assert float(seconds) < 1.0, argv
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unusable_runs_root_exits_2_before_anything_runs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for out, message in ((a_file, "is a file"), (a_file / "runs", "is under a file"),
                         ("/proc/fedsct-runs", "not a writable folder")):
        proc = fedsct("run", "--preset", "smoke", "--out", str(out))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert a_file.read_text() == "keep"


def test_presets_and_help():
    proc = fedsct("presets")
    assert proc.returncode == 0
    for name in ("smoke", "demo", "paper"):
        assert name in proc.stdout
    assert "--set KEY.PATH=VALUE" in fedsct("run", "--help").stdout


def wait_for(run: RunFolder, states: tuple[str, ...], timeout: float = 180.0) -> RunStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = run.status()
        if status.state in states:
            return status
        time.sleep(0.3)
    raise AssertionError(f"run stayed {run.status()} for {timeout} s")


def test_background_job_completes_and_is_indexed(runs_dir):
    run = start_job(build_config("smoke", sets=["federation.rounds=1"]), preset="smoke")
    status = wait_for(run, ("done", "failed"))
    assert status.state == "done", (run.path / "log.txt").read_text()
    rows = RunIndex().list()
    assert rows[0]["run_id"] == run.run_id and rows[0]["final_mae_hu"] > 0
    assert open_run(run.run_id).summary() is not None
    delete_run(run.run_id)
    assert RunIndex().list() == []


def test_cancel_stops_a_running_job(runs_dir):
    cfg = build_config("demo", sets=["federation.rounds=200"])
    run = start_job(cfg)
    deadline = time.time() + 120
    while time.time() < deadline and len(run.metrics()) < 2:
        time.sleep(0.3)
    assert len(run.metrics()) >= 2, (run.path / "log.txt").read_text()
    cancel_job(run)
    assert run.status().state == "cancelled"
    assert run.summary() is None
    assert len(run.metrics()) < 200


def test_dead_process_is_reported_not_left_running(runs_dir):
    run = start_job(build_config("demo", sets=["federation.rounds=200"]))
    wait_for(run, ("running",))
    os.killpg(run.status().pid, signal.SIGKILL)
    status = wait_for(run, ("interrupted",), timeout=20)
    assert "ended without finishing" in status.error and "can be resumed" in status.error


def test_open_run_rejects_unknown_and_path_like_ids(runs_dir):
    with pytest.raises(FileNotFoundError):
        open_run("nope")
    with pytest.raises(FileNotFoundError):
        open_run("../etc")


def test_index_is_rebuilt_from_folders_when_damaged(runs_dir):

    run = create_run(build_config("smoke"))
    (runs_dir / "index.sqlite").write_bytes(b"this is not a database")
    assert [r["run_id"] for r in RunIndex().list()] == [run.run_id]


def test_listing_reads_a_run_that_finished_after_its_index_row(runs_dir):
    """The runner writes status.json before the index; a listing in between must not show
    the stale row (state done but no final MAE)."""


    run = create_run(build_config("smoke"))
    run.write_summary({"federation": {"final": {"mae_hu": 321.0}}, "timing": {"wall_s": 1.0}})
    status = json.loads((run.path / "status.json").read_text()) | {"state": "done"}
    (run.path / "status.json").write_text(json.dumps(status))  # index not updated yet
    row = RunIndex().list()[0]
    assert row["state"] == "done" and row["final_mae_hu"] == 321.0
