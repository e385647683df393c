"""Resuming a run: a background run killed with SIGKILL at a random round, then resumed with
``fedsct run --resume``, ends exactly as the same run did without interruption.

Both runs are real ``python -m engine run`` processes (one torch thread each, one at a time),
so checkpoints, the metrics file, the server view, the DP accountant and the membership attack
all go through what a crash really leaves behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration.cli import main as cli_main
from engine.orchestration.jobs import resume_job, start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run

pytestmark = pytest.mark.timeout(600)

ROUNDS = 6
SETS = [f"federation.rounds={ROUNDS}", "federation.checkpoint_every=2",
        "defenses.dp.enabled=true", "defenses.dp.noise_multiplier=0.5",
        "defenses.dp.clip_norm=5.0", "attacks.membership.enabled=true"]
# One thread, whatever the caller's FEDSCT_THREADS says (it would take precedence).
ENV = {**{k: v for k, v in os.environ.items() if k != "FEDSCT_THREADS"},
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _fedsct(root: Path, *args: str, env: dict[str, str] = ENV,
            **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "run", "--out", str(root),
                             "--quiet", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _new_run(root: Path, name: str, **kwargs: Any) -> subprocess.Popen:
    sets = [x for s in [*SETS, f"name={name}"] for x in ("--set", s)]
    return _fedsct(root, "--preset", "smoke", *sets, **kwargs)


def _rounds_written(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return -1
    lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["round"] if lines else -1


def _results(run: Path) -> dict[str, Any]:
    """Everything in the summary that the run's computation decides (timings left out)."""
    s = json.loads((run / "summary.json").read_text())
    fed = s["federation"]
    history = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in fed["history"]]
    mia = {k: v for k, v in (s.get("mia") or {}).items() if k != "timing_s"}
    return {"final": fed["final"], "history": history, "per_center": fed.get("per_center"),
            "dp": fed["dp"], "mia": mia}


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    reference = _new_run(root, "reference")
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    expected = _results(Path(out.strip()))

    kill_after = random.Random().randint(1, ROUNDS - 1)  # a fresh round on every run
    victim = _new_run(root, "victim", start_new_session=True)
    deadline = time.monotonic() + 300
    run_path = None
    while time.monotonic() < deadline:
        listed = [r for r in RunIndex(root).list() if r["name"] == "victim"]
        run_path = root / listed[0]["run_id"] if listed else None
        if run_path and _rounds_written(run_path) >= kill_after:
            break
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    assert run_path is not None
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = _rounds_written(run_path)
    run = RunFolder(run_path)
    status = run.status()
    assert status.state == "interrupted", (kill_after, status)
    assert not (run_path / "summary.json").exists()

    assert status.threads == 1
    # Resumed where another default applies: the run goes on with the count it started on.
    resumed = _fedsct(root, "--resume", run.run_id, env=ENV | {"OMP_NUM_THREADS": "2"})
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, (kill_after, killed_at, err)
    assert Path(out.strip()) == run_path
    assert run.status().state == "done"
    assert "resuming after round" in (run_path / "log.txt").read_text() or killed_at < 2
    got = _results(run_path)
    # Identical, not close: the rounds after the checkpoint are recomputed exactly.
    assert got == expected, f"killed after round {killed_at} (aimed at {kill_after})"
    assert json.loads((run_path / "summary.json").read_text())["environment"]["threads"] == 1
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))  # no round twice


def _wait(run: RunFolder) -> str:
    deadline = time.monotonic() + 300
    while run.status().state in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
    return run.status().state


def test_a_stopped_run_resumes_from_the_dashboard_queue(runs_dir: Path) -> None:
    """Stop (the cancel file) after round 2, then Resume as the Runs page does: the job
    queue runs it to the end an uninterrupted job reaches. Both go through the queue, so
    both get the same torch thread count (a different one changes the last digits)."""
    cfg = build_config("smoke", sets=SETS[:2])
    reference = start_job(cfg)
    assert _wait(reference) == "done", reference.status()
    run = start_job(cfg)
    deadline = time.monotonic() + 300
    while _rounds_written(run.path) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    run.request_cancel()
    assert _wait(run) == "cancelled", run.status()
    stopped_at = _rounds_written(run.path)
    assert stopped_at < ROUNDS, "the run finished before the stop reached it"
    resume_job(run)
    assert _wait(run) == "done", run.status()
    assert _results(run.path) == _results(reference.path), f"stopped after round {stopped_at}"


REFUSALS = {
    "finished": ([], [], "is done; only an interrupted, failed or cancelled run can be resumed"),
    "with a preset": ([], ["--preset", "smoke"], "drop --preset, --config and --set"),
    "flower": (["federation.runtime=flower-sim"], [], "needs the in-process runtime"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_resume_refuses_what_it_cannot_resume(tmp_path: Path, case: str,
                                              capsys: pytest.CaptureFixture) -> None:
    sets, extra, message = REFUSALS[case]
    root = tmp_path / "runs"
    run = create_run(build_config("smoke", sets=sets), root)
    run.set_status("failed" if case == "flower" else "done", error=None)
    state = run.status().state
    assert cli_main(["run", "--out", str(root), "--resume", run.run_id, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fedsct: can't resume") or case == "with a preset"
    assert message in err, err
    assert run.status().state == state  # untouched


def test_resume_of_an_unknown_run_names_it(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["run", "--out", str(tmp_path), "--resume", "20990101-000000-x-0000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsct: can't resume") and "no run '20990101-000000-x-0000'" in err
    assert "\n" not in err


def _interrupted_after_two_rounds(root: Path) -> RunFolder:
    """A 3-round smoke run that recorded 2 rounds (checkpoint after round 2), interrupted."""
    cfg = build_config("smoke", sets=["federation.rounds=3", "federation.checkpoint_every=1"])
    run = create_run(cfg, root)
    done = []
    from engine.orchestration.experiment import execute

    def stop_after_two(entry: dict[str, Any]) -> None:
        done.append(entry["round"])
        if entry["round"] == 2:
            run.request_cancel()

    execute(run, on_round=stop_after_two)
    assert run.status().state == "cancelled" and max(done) == 2, run.status()
    return run


def _damage(run: RunFolder, case: str) -> None:
    if case == "status":
        (run.path / "status.json").write_text("[1, 2]")
    elif case == "config":
        # Cut at a line boundary inside the data section: valid YAML whose missing keys
        # (smoke's 3 hospitals, 32 px, …) would silently become the defaults.
        lines = (run.path / "config.yaml").read_text().splitlines(keepends=True)
        cut = next(i for i, line in enumerate(lines) if "centers:" in line)
        (run.path / "config.yaml").write_text("".join(lines[:cut]))
    else:
        import numpy as np
        path = run.path / "checkpoints" / "latest.npz"
        arrays = dict(np.load(path))
        if case == "checkpoint round":
            arrays["round"] = np.array(999)
        else:
            arrays["p0"] = np.zeros(3, dtype=np.float32)
        np.savez(path, **arrays)


DAMAGE = {"status": "status.json is damaged, so what the run did cannot be trusted",
          "config": "config.yaml is not the config the run started with",
          "checkpoint round": "checkpoints/latest.npz says round 999, but the run has 3 "
                              "rounds and recorded up to round 2",
          "checkpoint model": "checkpoints/latest.npz does not hold this run's model"}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_refuses_damaged_files_in_one_line(tmp_path: Path, case: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    """A damaged file is never trusted: no traceback, no silent defaults, no run marked done
    from a checkpoint it never reached."""
    root = tmp_path / "runs"
    run = _interrupted_after_two_rounds(root)
    _damage(run, case)
    before = (run.path / "status.json").read_bytes()
    assert cli_main(["run", "--out", str(root), "--resume", run.run_id]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fedsct: can't resume"), err
    assert DAMAGE[case] in err, err
    assert (run.path / "status.json").read_bytes() == before  # untouched
    assert not (run.path / "summary.json").exists()


def test_stop_reaches_the_attack_at_its_next_iteration(tmp_path: Path) -> None:
    """Stop pressed while the server attacks: the attack ends at its next progress report, as
    "stopped by you", not when the attack is done nor by a signal after the grace."""
    import threading

    from engine.orchestration.experiment import execute

    cfg = build_config("inversion-easy", sets=["federation.rounds=1",
                                               "attacks.inversion.iterations=20000",
                                               "attacks.inversion.restarts=1"])
    run = create_run(cfg, tmp_path / "runs")
    stopped_at: list[float] = []

    def stop_during_the_attack() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            progress = run.status().progress
            if progress and progress.phase == "gradient inversion" and progress.done:
                stopped_at.append(time.monotonic())
                run.request_cancel()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_during_the_attack)
    watcher.start()
    assert execute(run) is None
    ended = time.monotonic()
    watcher.join()
    status = run.status()
    assert stopped_at and ended - stopped_at[0] < 10, "the attack ran on after Stop"
    assert status.state == "cancelled", status
    assert status.error.startswith("stopped by you during gradient inversion (iteration")
    assert "stopped by you during gradient inversion" in (run.path / "log.txt").read_text()
