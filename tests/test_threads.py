"""A run's thread count: set once from settings, never from the machine's load, recorded,
restored on resume, and part of what makes a finished run reusable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.core.environment import numeric_environment
from engine.core.run_folder import write_json_atomic
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run, find_finished_run
from engine.orchestration.threads import (
    MAX_THREADS,
    default_threads,
    job_environment,
    parse_threads,
)

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""
THREAD_VARIABLES = ("FEDSCT_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FEDSCT_MAX_JOBS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", "", " ", str(MAX_THREADS + 1),
                                  "9" * 400])
def test_a_bad_thread_count_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="not a thread count; use a whole number from 1") as err:
        parse_threads(text)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_the_default_comes_from_settings_not_from_the_load(clean_env, tmp_path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_threads() == cores
    clean_env.setenv("FEDSCT_MAX_JOBS", "2")
    assert default_threads() == max(1, cores // 2)
    clean_env.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    clean_env.setenv("FEDSCT_THREADS", "5")
    assert default_threads() == 5
    # A busy machine changes nothing.
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert default_threads() == 5
    finally:
        burner.kill()
        burner.wait()
    clean_env.setenv("FEDSCT_THREADS", "lots")
    with pytest.raises(ValueError, match=r"\$FEDSCT_THREADS 'lots' is not a thread count"):
        default_threads()


def _fedsct(*args: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, env=base | (env or {}), timeout=timeout)


def test_the_command_refuses_bad_thread_settings(tmp_path: Path) -> None:
    done = _fedsct("run", "--preset", "smoke", "--threads", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and "'0' is not a thread count" in done.stderr
    done = _fedsct("run", "--preset", "smoke", "--out", str(tmp_path),
                   env={"FEDSCT_THREADS": "many"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("fedsct: $FEDSCT_THREADS 'many' is not a thread count; use "
                                   f"a whole number from 1 to {MAX_THREADS} (this machine has "
                                   f"{len(os.sched_getaffinity(0))} cores)")
    done = _fedsct("run", "--resume", "nothing", "--threads", "1", "--out", str(tmp_path))
    assert done.returncode == 2 and "drop --threads" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def _figures(run: Path) -> dict[str, Any]:
    """Everything a run computed (timings left out)."""
    s = json.loads((run / "summary.json").read_text())
    fed = s["federation"]
    return {"history": fed["history"], "per_center": fed["per_center"],
            "unseen": fed["unseen_center"], "steps": fed["local_steps"]}


@pytest.mark.slow
def test_same_threads_same_figures_alone_and_beside_a_busy_process(tmp_path: Path) -> None:
    """The issue's check: `smoke` on 2 threads twice, once alone and once beside a process
    that keeps both cores busy with 2-thread torch; identical figures, environment recorded.
    A third run on 1 thread shows that the thread count is part of the figures."""
    args = ["run", "--preset", "smoke", "--set", "federation.rounds=2", "--quiet",
            "--out", str(tmp_path)]
    runs = {}
    for label, threads, busy in (("alone", "2", False), ("busy", "2", True),
                                 ("one", "1", False)):
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if busy else None
        try:
            done = _fedsct(*args, "--threads", threads)
        finally:
            if competitor:
                competitor.kill()
                competitor.wait()
        assert done.returncode == 0, done.stderr
        runs[label] = Path(done.stdout.strip())
    assert _figures(runs["alone"]) == _figures(runs["busy"])
    assert _figures(runs["one"]) != _figures(runs["alone"])
    env = json.loads((runs["busy"] / "summary.json").read_text())["environment"]
    assert env["threads"] == 2 and env["training"] == "batched"
    assert env["cpu_capability"] and env["torch"] and env["monai"] and env["precision"] == "fp32"
    assert json.loads((runs["one"] / "status.json").read_text())["threads"] == 1


def _wait(run) -> str:
    deadline = time.monotonic() + 300
    while run.status().active and time.monotonic() < deadline:
        time.sleep(0.2)
    return run.status().state


def test_a_queued_job_runs_on_the_configured_count(runs_dir: Path, clean_env) -> None:
    clean_env.setenv("FEDSCT_THREADS", "1")
    run = start_job(build_config("smoke", sets=["federation.rounds=1"]), preset="smoke")
    assert _wait(run) == "done", (run.path / "log.txt").read_text()
    assert run.status().threads == 1
    assert run.summary()["environment"]["threads"] == 1
    assert "torch threads 1, fixed for the whole run" in (run.path / "log.txt").read_text()


def test_a_finished_run_is_reused_only_with_the_same_numeric_environment(tmp_path: Path) -> None:
    cfg = build_config("smoke")
    run = create_run(cfg, tmp_path)
    summary = {"config": cfg.model_dump(), "environment": numeric_environment(1)}
    write_json_atomic(run.path / "summary.json", summary)
    run.set_status("done")
    assert find_finished_run(cfg, tmp_path, threads=1).path == run.path
    assert find_finished_run(cfg, tmp_path, threads=2) is None
    other = build_config("smoke", sets=["federation.batched_clients=off"])
    assert find_finished_run(other, tmp_path, threads=1) is None  # another training path
    # A run from before environments were recorded (or from another torch) is not reused.
    write_json_atomic(run.path / "summary.json", summary | {"environment": None})
    assert find_finished_run(cfg, tmp_path, threads=1) is None
    write_json_atomic(run.path / "summary.json",
                      summary | {"environment": numeric_environment(1) | {"torch": "2.0.0"}})
    assert find_finished_run(cfg, tmp_path, threads=1) is None


def test_jobs_get_their_thread_count_and_short_openmp_spinning(clean_env) -> None:
    clean_env.delenv("GOMP_SPINCOUNT", raising=False)
    assert job_environment(3) == {"FEDSCT_THREADS": "3", "OMP_NUM_THREADS": "3",
                                  "MKL_NUM_THREADS": "3", "GOMP_SPINCOUNT": "1000"}
    clean_env.setenv("GOMP_SPINCOUNT", "50")  # the user's own setting stays theirs
    assert "GOMP_SPINCOUNT" not in job_environment(1)
