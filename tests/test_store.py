"""The run store under faults: damaged files and indexes, reused process ids, killed runs.

Every case ends with every intact run listed, no traceback anywhere (the library, the CLI)
and no foreign process signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core import run_folder
from engine.core.config import ConfigError
from engine.core.processes import JOB_PID_FILE, process_start
from engine.core.run_folder import Progress, RunFolder, RunStatus, write_json_atomic
from engine.orchestration.cli import main as cli_main
from engine.orchestration.jobs import cancel_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run, find_finished_run


def _runs(root: Path, n: int) -> list[RunFolder]:
    runs = [create_run(build_config("smoke", sets=[f"seed={k}"]), root) for k in range(n)]
    for run in runs:
        run.set_status("done", finished=time.time())
        run.write_summary({"federation": {"final": {"mae_hu": 100.0 + len(run.run_id)}},
                           "timing": {"wall_s": 1.0}})
    return runs


def _listed(root: Path) -> set[str]:
    return {r["run_id"] for r in RunIndex(root).list()}


DAMAGE = {
    "summary.json is a list": ("summary.json", b"[1, 2, 3]"),
    "status.json is a list": ("status.json", b"[\"done\"]"),
    "status.json is not JSON": ("status.json", b"{\"state\": \"do"),
    "pid is a string": ("status.json", b"{\"state\": \"running\", \"pid\": \"12\"}"),
    "state unknown": ("status.json", b"{\"state\": \"exploded\"}"),
    "fields of other types": ("status.json", b"{\"state\": \"done\", \"created\": \"x\", "
                              b"\"preset\": 3, \"progress\": [1], \"error\": {}}"),
    "config.yaml is not UTF-8": ("config.yaml", b"name: \xff\xfe\xfa\n"),
    "config.yaml is a list": ("config.yaml", b"- 1\n- 2\n"),
    "metrics.jsonl is garbage": ("metrics.jsonl", b"\x00\xff{not json\n[]\n"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_file_never_breaks_a_listing(tmp_path: Path, case: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    intact = _runs(tmp_path, 2)
    broken = create_run(build_config("smoke"), tmp_path)
    name, data = DAMAGE[case]
    (broken.path / name).write_bytes(data)
    (tmp_path / "index.sqlite").unlink()  # the listing rebuilds the index from the folders
    assert _listed(tmp_path) == {r.run_id for r in [*intact, broken]}
    assert broken.metrics() == [] or case != "metrics.jsonl is garbage"
    assert cli_main(["runs", "--out", str(tmp_path)]) == 0
    assert broken.run_id in capsys.readouterr().out
    assert cli_main(["runs", "--out", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_a_status_field_of_another_type_reads_as_absent() -> None:
    """status.json is typed on read: each field of the wrong type is None, never a crash in
    a page (a damaged file shows what can be read)."""
    status = RunStatus.parse({"state": "running", "phase": "gradient inversion", "pid": True,
                              "threads": 2.0, "created": "yesterday", "progress": {
                                  "phase": "gradient inversion", "done": "3", "total": 50,
                                  "unit": "iteration", "eta_s": 12}})
    assert (status.pid, status.threads, status.created) == (None, 2, None)
    assert status.active and status.step_progress == Progress(
        "gradient inversion", 0, 50, "iteration", "", 12.0)
    # An earlier phase's progress is not the current step's.
    assert RunStatus.parse({"state": "running", "phase": "training",
                            "progress": {"phase": "data", "total": 3}}).step_progress is None
    assert Progress.parse({"phase": "data", "total": 0}) is None


@pytest.mark.parametrize("damage", ["garbage", "damaged page", "extra column",
                                    "missing column", "a folder"])
def test_a_damaged_index_is_rebuilt_from_the_folders(tmp_path: Path, damage: str) -> None:
    intact = _runs(tmp_path, 3)
    db = tmp_path / "index.sqlite"
    assert _listed(tmp_path) == {r.run_id for r in intact}
    if damage == "garbage":
        db.write_bytes(os.urandom(4096))
    elif damage == "damaged page":
        raw = bytearray(db.read_bytes())
        raw[100:1100] = os.urandom(1000)  # the schema page
        db.write_bytes(bytes(raw))
    elif damage in ("extra column", "missing column"):
        db.unlink()
        con = sqlite3.connect(db)
        cols = ["run_id TEXT PRIMARY KEY", "created REAL", "name TEXT"]
        if damage == "extra column":
            cols = [*RunIndex.SCHEMA.split("(", 1)[1].rstrip(")").split(","), "owner TEXT"]
        con.execute(f"CREATE TABLE runs ({', '.join(c.strip() for c in cols)})")
        con.commit()
        con.close()
    else:
        db.unlink()
        db.mkdir()
    # Even where the index cannot be repaired in place (a folder), the runs are listed.
    assert _listed(tmp_path) == {r.run_id for r in intact}
    assert all(r.path.is_dir() for r in intact)


def test_an_index_without_run_folders_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "index.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(2000))
    assert RunIndex(tmp_path).list() == []


def test_damaged_runs_are_not_reused_as_finished(tmp_path: Path) -> None:
    cfg = build_config("smoke")
    run = create_run(cfg, tmp_path)
    run.set_status("done")
    (run.path / "summary.json").write_text("[]")
    assert find_finished_run(cfg, tmp_path) is None
    (run.path / "status.json").write_text("[]")
    assert find_finished_run(cfg, tmp_path) is None


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)


def test_a_reused_pid_is_not_trusted_or_signalled(tmp_path: Path) -> None:
    """The run's recorded process is gone and an unrelated process now has its pid: the run
    is interrupted (not running), and stopping it signals nobody."""
    sleeper = _sleeper()
    try:
        run = create_run(build_config("smoke"), tmp_path)
        start = process_start(sleeper.pid)
        assert start is not None
        # As if the run's own process had had this pid, but started at another time.
        run.set_status("running", pid=sleeper.pid, pid_start=start - 1)
        status = run.status()
        assert status.state == "interrupted" and "resumed" in status.error
        assert json.loads((run.path / "status.json").read_text())["state"] == "interrupted"
        assert {r["run_id"]: r["state"] for r in RunIndex(tmp_path).list()} == {
            run.run_id: "interrupted"}
        # The same through job.pid (a background run that never wrote its status).
        other = create_run(build_config("smoke"), tmp_path)
        (other.path / JOB_PID_FILE).write_text(f"{sleeper.pid} {start - 1}")
        other.set_status("running")
        cancel_job(other, grace_s=0.5)
        time.sleep(0.3)
        assert sleeper.poll() is None, "an unrelated process was signalled"
        assert other.status().state in ("interrupted", "cancelled")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_pid_without_its_start_time_is_never_signalled(tmp_path: Path) -> None:
    """An older run recorded only its pid; a live process has that pid now. Stop asks the run
    to stop (its cancel file) and marks it stopped, but signals nobody."""
    sleeper = _sleeper()
    try:
        run = create_run(build_config("smoke"), tmp_path)
        run.set_status("running", pid=sleeper.pid)  # no pid_start
        cancel_job(run, grace_s=0.5)
        time.sleep(0.3)
        assert sleeper.poll() is None, "a process whose identity was not confirmed was signalled"
        assert run.status().state == "cancelled" and run.cancel_requested()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_that_finishes_while_its_status_is_read_stays_done(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The run writes "done" and exits between the status read and the process check: the
    reader must not overwrite the finished run with "interrupted"."""
    run = create_run(build_config("smoke"), tmp_path)
    run.set_status("running", pid=os.getpid(), pid_start=process_start(os.getpid()))

    def finishes_then_gone(pid: int, start: float | None) -> bool:
        run.set_status("done", finished=time.time())
        return False

    monkeypatch.setattr(run_folder, "pid_alive", finishes_then_gone)
    assert run.status().state == "done"
    assert json.loads((run.path / "status.json").read_text())["state"] == "done"


def test_the_recorded_process_is_still_recognised(tmp_path: Path) -> None:
    sleeper = _sleeper()
    try:
        run = create_run(build_config("smoke"), tmp_path)
        run.set_status("running", pid=sleeper.pid, pid_start=process_start(sleeper.pid))
        assert run.status().state == "running"
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
        assert run.status().state == "interrupted"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_index_follows_a_run_resumed_elsewhere(tmp_path: Path) -> None:
    """A run interrupted, listed (indexed as interrupted), then resumed to the end by a
    process that writes only its folder (``fedsct run --resume`` in a terminal): the next
    listing shows it finished, with its MAE, without rebuilding the index."""
    run = create_run(build_config("smoke"), tmp_path)
    run.set_status("interrupted", error="killed")
    assert [r["state"] for r in RunIndex(tmp_path).list()] == ["interrupted"]
    time.sleep(0.01)  # a later modification time, on any file system's clock
    write_json_atomic(run.path / "summary.json", {"federation": {"final": {"mae_hu": 557.5}}})
    run.set_status("done")
    (row,) = RunIndex(tmp_path).list()
    assert (row["state"], row["final_mae_hu"]) == ("done", 557.5)
    # And the index itself was updated: a raw read of it agrees.
    (raw,) = RunIndex(tmp_path)._rows()
    assert raw[4] == "done"


def test_a_killed_writer_leaves_nothing_a_resume_keeps(tmp_path: Path) -> None:
    """The temporary file of an atomic write whose process was killed (a dead pid in its
    name) is removed when the run starts again; a live process's is left alone."""
    folder = tmp_path / "run"
    folder.mkdir()
    dead = folder / ".summary.json.99999999.ab12cd34.tmp"  # above any pid_max
    live = folder / f".status.json.{os.getpid()}.ab12cd34.tmp"
    dead.write_text("{")
    live.write_text("{")
    assert run_folder.remove_stale_temporaries(folder) == [dead]
    assert not dead.exists() and live.exists()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "summary.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_a_running_status_without_a_process_is_interrupted(tmp_path: Path) -> None:
    run = create_run(build_config("smoke"), tmp_path)
    run.set_status("running", phase="training")  # no pid: damaged
    status = run.status()
    assert status.state == "interrupted" and "names no process" in status.error
    assert json.loads((run.path / "status.json").read_text())["state"] == "interrupted"


def test_a_queued_run_that_lost_its_queue_entry_can_be_resumed_or_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued run with no queue entry (damaged and dropped) is marked interrupted on the
    next listing once the grace for `fedsct run`'s own start has passed; one still waiting
    in the queue stays queued."""
    from engine.orchestration import queue, store

    lost = create_run(build_config("smoke", sets=["name=lost"]), tmp_path)
    waiting = create_run(build_config("smoke", sets=["name=waiting"]), tmp_path)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    monkeypatch.delenv("FEDSCT_MAX_JOBS", raising=False)
    queue.submit(tmp_path, kind="run", label="blocker", folder=blocker,
                 cmd=[sys.executable, "-c", "import time; time.sleep(30)"])
    queue.submit(tmp_path, kind="run", label="waiting", folder=waiting.path,
                 cmd=[sys.executable, "-c", "pass"])
    try:
        assert {r["name"]: r["state"] for r in RunIndex(tmp_path).list()} == {
            "lost": "queued", "waiting": "queued"}  # within the grace: nothing decided
        monkeypatch.setattr(store, "QUEUE_LOST_AFTER_S", 0.0)
        states = {r["name"]: r["state"] for r in RunIndex(tmp_path).list()}
        assert states == {"lost": "interrupted", "waiting": "queued"}
        assert "place in the job queue was lost" in lost.status().error
    finally:
        for job in queue.jobs(tmp_path):
            if job.pid:
                os.killpg(job.pid, signal.SIGKILL)


@pytest.fixture
def full_disk(tmp_path: Path):  # noqa: ANN201 - yields a folder
    """A 16 MiB tmpfs, for runs that (will) need more than it holds."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_as_failed_in_one_line(full_disk: Path) -> None:
    """The disk fills while the run trains (another program takes the space it was
    estimated to have): the run ends failed in one line, and listings keep working."""
    root = full_disk / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--preset", "smoke",
                             "--set", "federation.rounds=40", "--out", str(root), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        status = [json.loads(p.read_text()) for p in root.glob("*/status.json")
                  if p.stat().st_size]
        if status and status[0].get("phase") == "training":
            break
        time.sleep(0.05)
    with open(full_disk / "filler", "wb") as fh:  # take every byte that is left
        with contextlib.suppress(OSError):
            while True:
                fh.write(bytes(1 << 16))
    stdout, stderr = proc.communicate(timeout=300)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    (run,) = [RunFolder(p) for p in root.iterdir() if p.is_dir()]
    status = run.status()
    assert status.state == "failed", status
    assert status.error.startswith(f"the disk holding {root} is full")
    assert "fedsct run --resume" in status.error
    # Listings keep working on the full disk.
    assert [r["state"] for r in RunIndex(root).list()] == ["failed"]
    listed = subprocess.run([sys.executable, "-m", "engine", "runs", "--out", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and run.run_id in listed.stdout, listed.stderr


def test_the_disk_estimate_matches_what_a_run_writes(runs_dir: Path) -> None:
    """The server view and checkpoints of a finished smoke run, against the estimate made
    before it started (within 10 %)."""
    from engine.orchestration.experiment import execute
    from engine.orchestration.resources import estimate

    cfg = build_config("smoke", sets=["federation.server_view_rounds=all"])
    run = create_run(cfg, runs_dir)
    assert execute(run) is not None
    written = sum(f.stat().st_size for folder in ("server_view", "checkpoints")
                  for f in (run.path / folder).iterdir())
    assert estimate(cfg).disk_bytes == pytest.approx(written, rel=0.10)


@pytest.mark.slow
def test_a_run_the_machine_cannot_hold_is_refused_before_it_starts(
        full_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = full_disk / "runs"  # not made yet: the estimate asks the disk it will be on
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--preset", "demo", "--set",
                           "federation.server_view_rounds=all", "--out", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "this run would write about" in line, line
    assert "15 recorded rounds × 4 hospitals × 401,288 parameters" in line
    assert not root.exists() or list(root.iterdir()) == []  # no run folder, nothing queued
    # Memory: the same sentence, from the machine's available memory.
    from engine.orchestration import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 10 * 1024**2)
    with pytest.raises(ConfigError, match="would need about .* of memory"):
        resources.check_resources(build_config("demo"), full_disk.parent)


def test_a_summary_that_would_not_read_fails_its_run_instead_of_being_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Summaries are checked on write: a block every reader would refuse ends the run as
    failed, naming the block, and no summary.json is left for pages to trip on."""
    from engine.orchestration import experiment

    real = experiment.build_summary
    monkeypatch.setattr(experiment, "build_summary",
                        lambda *a, **k: real(*a, **k) | {"poisoning": {"cells": "none"}})
    run = create_run(build_config("smoke", sets=["federation.rounds=1"]), tmp_path)
    assert experiment.execute(run) is None
    status = run.status()
    assert status.state == "failed"
    assert status.error.startswith("SummaryError: the summary this run built: "
                                      "poisoning.cells: ")
    assert not (run.path / "summary.json").exists()


def test_the_index_names_the_rule_with_its_pre_aggregator(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    for pre in ("none", "nnm"):
        create_run(build_config("hospitals-8", sets=["federation.aggregator=fedmedian",
                                                     f"federation.pre_aggregator={pre}"]),
                   tmp_path)
    assert sorted(r["aggregator"] for r in RunIndex(tmp_path).list()) == [
        "fedmedian", "nnm+fedmedian"]
    assert cli_main(["runs", "--out", str(tmp_path)]) == 0
    assert " nnm+fedmedian " in capsys.readouterr().out
