"""The one job queue: one heavy job at a time, the rest wait their turn, nothing blocks it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.run_folder import RunStatus
from engine.orchestration import queue


def _job(root: Path, name: str, seconds: float, owner: str | None = None) -> queue.Job:
    """A stand-in job (no torch): sleeps, then leaves the queue as a real job does."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    code = (f"import time; time.sleep({seconds}); "
            "from engine.orchestration.queue import finished; finished()")
    return queue.submit(root, kind="run", label=name, folder=folder,
                        cmd=[sys.executable, "-c", code], owner=owner)


def _states(root: Path) -> dict[str, str]:
    return {j.label: j.state for j in queue.jobs(root)}


def _wait(cond, timeout: float = 30.0) -> None:  # noqa: ANN001 - a predicate
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_one_job_runs_and_the_next_starts_when_it_ends(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSCT_MAX_JOBS", raising=False)
    first = _job(tmp_path, "first", 1.5)
    second = _job(tmp_path, "second", 0.2)
    assert first.state == "running" and second.state == "waiting"
    assert _states(tmp_path) == {"first": "running", "second": "waiting"}
    # The first job's own process starts the second as it ends.
    _wait(lambda: _states(tmp_path) == {"second": "running"} or not _states(tmp_path))
    _wait(lambda: not _states(tmp_path))


def test_a_waiting_job_can_be_withdrawn(tmp_path: Path) -> None:
    _job(tmp_path, "first", 5)
    second = _job(tmp_path, "second", 0.1)
    assert queue.withdraw(tmp_path, Path(second.folder))
    assert list(_states(tmp_path)) == ["first"]
    assert not queue.withdraw(tmp_path, tmp_path / "first")  # running: not withdrawn
    for job in queue.jobs(tmp_path):
        os.killpg(job.pid, signal.SIGKILL)


def test_a_killed_job_does_not_block_the_queue(tmp_path: Path) -> None:
    first = _job(tmp_path, "first", 60)
    _job(tmp_path, "second", 0.2)
    os.killpg(first.pid, signal.SIGKILL)
    time.sleep(0.2)
    # The next listing drops the dead job and starts the waiting one.
    _wait(lambda: "first" not in _states(tmp_path))
    _wait(lambda: not _states(tmp_path))


def test_slots_and_threads_follow_the_setting(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSCT_MAX_JOBS", "2")
    monkeypatch.delenv("FEDSCT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert queue.max_jobs() == 2
    assert queue.default_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
    a, b = _job(tmp_path, "a", 1), _job(tmp_path, "b", 1)
    assert a.state == b.state == "running"
    monkeypatch.setenv("FEDSCT_MAX_JOBS", "zero")
    assert queue.max_jobs() == 1
    _wait(lambda: not _states(tmp_path))


def test_a_page_calls_its_own_job_yours_and_a_launched_run_starting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.views.common import progress_text
    from app.widgets import queued_behind

    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("FEDSCT_MAX_JOBS", raising=False)
    assert queued_behind() is None  # an empty queue: a new job starts at once
    mine = _job(tmp_path, "mine", 5)
    _job(tmp_path, "theirs", 0.1)
    try:
        assert queued_behind() == "mine and 1 more"
        assert queued_behind(Path(mine.folder)) == "your run and 1 more"
        # Launched by the queue, not yet marked running by its process: starting, not waiting.
        queued = RunStatus(state="queued")
        assert progress_text(queued, [], 5, started=True)[1] == "Starting…"
        assert progress_text(queued, [], 5)[1] == "Waiting for its turn in the job queue…"
    finally:
        for job in queue.jobs(tmp_path):
            if job.pid:
                os.killpg(job.pid, signal.SIGKILL)


def test_a_job_never_runs_files_from_the_folder_it_is_queued_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's queue starts jobs in its working folder; files there named like our
    modules or the standard library's are not run."""
    from tests.test_serve import decoys

    work = tmp_path / "work"
    marks = decoys(work)
    monkeypatch.chdir(work)
    folder = tmp_path / "runs" / "job"
    folder.mkdir(parents=True)
    job = queue.submit(tmp_path / "runs", kind="run", label="job", folder=folder,
                       cmd=queue.python_module("engine.orchestration.jobs", str(folder)))
    _wait(lambda: not queue.jobs(tmp_path / "runs"), timeout=60)
    assert job.state == "running"
    assert not marks.exists(), sorted(p.name for p in marks.iterdir())
    # The real job module ran (and refused the folder, which holds no run).
    assert "fixed for the whole run" in (folder / "log.txt").read_text()


def test_a_stuck_lock_holder_is_named_not_waited_for(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A live process that holds the queue's lock and never lets go: changes to the queue
    give up after LOCK_TIMEOUT_S with a sentence naming it, instead of hanging every page."""
    queue.jobs(tmp_path)  # creates the queue folder and its lock file
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); "
         "fcntl.flock(fh, fcntl.LOCK_EX); fh.seek(0); fh.truncate(); "
         "fh.write(str(__import__('os').getpid())); fh.flush(); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path / queue.QUEUE_DIR / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(queue, "LOCK_TIMEOUT_S", 0.5)
        t0 = time.monotonic()
        with pytest.raises(queue.QueueBusy, match=f"locked by process {holder.pid} for more "
                                                  "than"):
            queue.jobs(tmp_path)
        assert time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    assert queue.jobs(tmp_path) == []  # free again once the holder is gone


@pytest.mark.slow
def test_the_dashboard_moves_the_queue_on_without_a_browser(tmp_path: Path) -> None:
    """A job killed with SIGKILL never tells the queue it ended; the dashboard's own watcher
    notices and starts the next job, with no page open."""
    from tests.test_serve import _free_port

    runs = tmp_path / "runs"
    first, second = runs / "first", runs / "second"
    for folder in (first, second):
        folder.mkdir(parents=True)
    env = {**os.environ, "FEDSCT_RUNS_DIR": str(runs)}
    env.pop("FEDSCT_MAX_JOBS", None)
    server = subprocess.Popen([sys.executable, "-P", "-m", "engine", "dashboard", "--port",
                               str(_free_port())], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        killed = queue.submit(runs, kind="run", label="first", folder=first,
                              cmd=[sys.executable, "-c", "import time; time.sleep(120)"])
        queue.submit(runs, kind="run", label="second", folder=second,
                     cmd=[sys.executable, "-c", f"open({str(second / 'ran')!r}, 'w')"])
        assert killed.state == "running" and not (second / "ran").exists()
        os.killpg(killed.pid, signal.SIGKILL)
        # No call here that pumps the queue: only the dashboard can start the second job.
        deadline = time.monotonic() + 60
        while not (second / "ran").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (second / "ran").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_queue_takes_at_most_max_waiting_jobs(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A click (or a script) per second must not fill the queue: past MAX_WAITING waiting
    jobs, every way of queueing refuses in one line, before a run folder is made."""
    from engine.orchestration import jobs
    from engine.orchestration.presets import build_config

    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("FEDSCT_MAX_JOBS", raising=False)
    monkeypatch.setattr(queue, "MAX_WAITING", 2)
    first = _job(tmp_path, "running", 30)
    try:
        _job(tmp_path, "w1", 0.1)
        _job(tmp_path, "w2", 0.1)
        before = sorted(p.name for p in tmp_path.iterdir())
        for start in (lambda: jobs.start_job(build_config("smoke")),
                      lambda: jobs.start_sweep_job("poison-model"),
                      lambda: jobs.start_study_job("demo"),
                      lambda: _job(tmp_path, "w3", 0.1)):
            with pytest.raises(queue.QueueFull, match="2 jobs are waiting in the queue "
                                                      "already .at most 2."):
                start()
        assert sorted(p.name for p in tmp_path.iterdir()) == [*before, "w3"]  # _job's folder
        assert [j.label for j in queue.jobs(tmp_path)] == ["running", "w1", "w2"]
    finally:
        os.killpg(first.pid, signal.SIGKILL)


def test_one_session_may_hold_only_its_share_of_the_queue(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A session at its cap is refused (naming the per-session cap) while another session,
    and the command line, can still queue."""
    from engine.orchestration import jobs
    from engine.orchestration.presets import build_config

    monkeypatch.setenv("FEDSCT_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("FEDSCT_MAX_JOBS", raising=False)
    monkeypatch.setattr(queue, "MAX_WAITING_PER_SESSION", 2)
    first = _job(tmp_path, "running", 30, owner="a")
    try:
        _job(tmp_path, "a1", 0.1, owner="a")
        _job(tmp_path, "a2", 0.1, owner="a")
        before = sorted(p.name for p in tmp_path.iterdir())
        for start in (lambda: jobs.start_job(build_config("smoke"), owner="a"),
                      lambda: jobs.start_sweep_job("poison-model", owner="a"),
                      lambda: jobs.start_study_job("demo", owner="a"),
                      lambda: _job(tmp_path, "a3", 0.1, owner="a")):
            with pytest.raises(queue.QueueFull, match="you have 2 jobs waiting in the queue "
                                                      "already .at most 2 per browser session"):
                start()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "a3"])
        _job(tmp_path, "b1", 0.1, owner="b")
        _job(tmp_path, "cli", 0.1)
        assert [(j.label, j.owner) for j in queue.jobs(tmp_path)] == [
            ("running", "a"), ("a1", "a"), ("a2", "a"), ("b1", "b"), ("cli", None)]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
