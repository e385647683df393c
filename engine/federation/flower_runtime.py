"""Run a federation on Flower: ``flower-sim`` (simulation) or ``flower-deploy`` (a local
SuperLink plus one SuperNode per center, started and stopped here).

Either way the ServerApp of :mod:`engine.federation.flower_app` writes the run folder itself
(round records, server view, final model), so :func:`run_flower` only starts Flower, waits,
and reads the result back into a :class:`~engine.federation.protocol.FederationResult`.
A failure inside Flower (a client's exception, too few replies) ends as an exception with
Flower's own message, never as a silently empty run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.core.config import ExperimentConfig
from engine.core.processes import descendants, pid_alive, signal_all, spawn
from engine.core.run_folder import RunFolder
from engine.federation.flower_app import (
    ERROR_FILE,
    FINAL_PARAMS,
    TIMING,
    client_app,
    server_app_for,
)
from engine.federation.protocol import Cancelled, FederationResult

REPO_ROOT = Path(__file__).resolve().parents[2]  # the Flower app (pyproject.toml) lives here
FEDERATION = "fedsct-local"  # SuperLink connection name written for `flwr run`


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower processes: telemetry off, state under ``home``, and this
    Python's scripts first on PATH (the SuperLink and SuperNodes start Flower's helper
    executables by name)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(home),
                         "PYTHONUNBUFFERED": "1", "PATH": path}


def run_flower(cfg: ExperimentConfig, run: RunFolder,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> FederationResult:
    """Train ``cfg``'s federation on its Flower runtime; the run folder gets the records.

    ``on_round`` sees each round's record once the ServerApp has written it (polled).
    """
    for stale in (ERROR_FILE, "flower_final.npz", "metrics.jsonl"):
        (run.path / stale).unlink(missing_ok=True)
    done = threading.Event()
    follower = threading.Thread(target=_follow, args=(run, on_round, done), daemon=True)
    if on_round:
        follower.start()
    try:
        if cfg.federation.runtime == "flower-sim":
            _simulate(cfg, run)
        else:
            deploy(cfg, run)
    finally:
        done.set()
        if on_round:
            follower.join()
    return collect(cfg, run)


def _follow(run: RunFolder, on_round: Callable[[dict[str, Any]], None] | None,
            done: threading.Event) -> None:
    """Hand new round records to ``on_round`` until ``done`` (and once more after)."""
    seen = 0
    while True:
        finished = done.wait(0.5)
        records = run.metrics()
        for entry in records[seen:]:
            if on_round:
                on_round(entry)
        seen = len(records)
        if finished:
            return


def _simulate(cfg: ExperimentConfig, run: RunFolder) -> None:
    # Deliberately lazy: Flower's simulation imports Ray, which only flower-sim needs.
    from flwr.simulation import run_simulation

    cpus = os.cpu_count() or 1
    gpus = 1.0 / cfg.data.centers if torch.cuda.is_available() else 0.0
    run.log(f"Flower simulation: {cfg.data.centers} SuperNodes on Ray ({cpus} CPUs)")
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    run_simulation(server_app=server_app_for(run.path), client_app=client_app,
                   num_supernodes=cfg.data.centers,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": gpus},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False,
                                                 "log_to_driver": True}})


def collect(cfg: ExperimentConfig, run: RunFolder) -> FederationResult:
    """The finished Flower run's result, read from what its ServerApp wrote."""
    error = run.path / ERROR_FILE
    if error.is_file():
        message = error.read_text().strip()
        if message.startswith("Cancelled"):
            raise Cancelled(message)
        raise RuntimeError(f"the Flower ServerApp failed: {message}")
    if run.cancel_requested():
        raise Cancelled("cancelled")
    final = run.path / FINAL_PARAMS
    if not final.is_file():
        raise RuntimeError(f"the Flower run ended without a final model (no {FINAL_PARAMS}); "
                           f"see {run.path / 'log.txt'} for Flower's log")
    with np.load(final) as z:
        params = [z[f"arr_{i}"] for i in range(len(z.files))]
    result = FederationResult.from_records(run.metrics(), params)
    timing = json.loads((run.path / TIMING).read_text())
    result.train_s, result.eval_s = timing["train_s"], timing["eval_s"]
    return result


# --------------------------------------------------------------------------- deployment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalDeployment:
    """A SuperLink and one SuperNode per center on 127.0.0.1, as child processes.

    Use as a context manager: every process it started is stopped on exit (SIGTERM, then
    SIGKILL after a grace period), whatever happened. They stay in the caller's process
    group, so stopping a background job's group stops them too. Logs go to
    ``<folder>/*.log``.
    """

    def __init__(self, folder: Path, centers: int) -> None:
        self.folder, self.centers = folder, centers
        self.home = folder / "home"
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        proc = spawn(cmd, self.folder / f"{name}.log", env=flower_env(self.home),
                     cwd=self.folder)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> LocalDeployment:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        bin_dir = Path(sys.executable).parent
        self._start("superlink", [
            str(bin_dir / "flower-superlink"), "--insecure",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
            "--port", str(self.port), "--database", str(self.folder / "state.db"),
        ])
        for k in range(self.centers):
            self._start(f"supernode-{k}", [
                str(bin_dir / "flower-supernode"), "--insecure", "--superlink", self.address,
                "--node-config", f"partition-id={k} num-partitions={self.centers}",
                "--port", str(free_port()),
            ])
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
            f'address = "{self.address}"\ninsecure = true\n')
        return self

    def __exit__(self, *exc: Any) -> None:
        # The SuperLink and SuperNodes start helpers of their own (SuperExec, ServerApp,
        # ClientApps); those are found first, as they outlive a stopped parent for a while.
        helpers = [pid for proc in self.procs.values() for pid in descendants(proc.pid)]
        # SuperNodes first, so none is left polling a SuperLink that is gone.
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        signal_all(helpers, signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        while helpers and time.time() < deadline:
            helpers = [pid for pid in helpers if pid_alive(pid)]
            time.sleep(0.1)
        signal_all(helpers, signal.SIGKILL)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if "superlink" in dead:
            tail = (self.folder / "superlink.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"flower-superlink exited ({dead['superlink']}):\n{tail}")


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM (a cancelled background job) into SystemExit while inside, so the
    deployment's processes are stopped on the way out (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def deploy(cfg: ExperimentConfig, run: RunFolder) -> None:
    """Run ``cfg`` with ``flwr run``: on a local SuperLink + SuperNodes started (and always
    stopped) here, or on the running federation ``federation.superlink`` names."""
    folder = run.path / "flower"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if cfg.federation.superlink:
        run.log(f"Flower deployment on the SuperLink connection {cfg.federation.superlink!r}")
        env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0"}
        _submit(cfg, run, cfg.federation.superlink, env, folder)
        return
    with _terminate_as_exit(), LocalDeployment(folder, cfg.data.centers) as federation:
        run.log(f"Flower deployment: SuperLink on {federation.address}, "
                f"{cfg.data.centers} SuperNodes (logs in {folder})")
        federation.check_alive()
        _submit(cfg, run, FEDERATION, flower_env(federation.home), folder)
        federation.check_alive()


def _submit(cfg: ExperimentConfig, run: RunFolder, connection: str, env: dict[str, str],
            folder: Path) -> None:
    """``flwr run`` this app on ``connection`` and follow it to the end."""
    fed = cfg.federation
    # A bound, not an estimate: start-up, then per round the wait for SuperNodes and every
    # message stage at its timeout (SecAgg+ has four).
    stages = 4 if cfg.defenses.secure_aggregation else 1
    limit = 120 + fed.rounds * fed.round_timeout_s * (1 + stages)
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(REPO_ROOT), connection,
           "--run-config", f"run-dir='{run.path}'", "--stream"]
    log_path = folder / "flwr-run.log"
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT,
                                  timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the Flower run did not finish within {limit:g} s "
                               f"(start-up + rounds × federation.round_timeout_s × message "
                               f"stages); see {folder}") from None
    if done.returncode != 0 and not (run.path / ERROR_FILE).is_file():
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`flwr run` failed ({done.returncode}):\n{tail}")
