"""The federation on Flower: the simulation runtime and a real loopback deployment
(SuperLink + 3 SuperNodes), against the in-process runner; faults; SecAgg+.

Every run here is a real Flower run of the engine's own training (a few rounds of the smoke
federation). Tests run torch on one thread (conftest), as Ray's ClientApp actors do, so the
simulation trains the very same updates as the in-process runner.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import engine.federation.flower_app as flower_app
from engine.attacks.dp_audit import run_dp_audit
from engine.core.config import ConfigError
from engine.core.run_folder import RunFolder
from engine.federation.flower_app import EngineStrategy, failure_text
from engine.federation.secagg_encoding import SecAggParams, quantization_error_bound
from engine.federation.server_view import ServerView
from engine.learning.model import build_model, get_parameters
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

pytestmark = pytest.mark.slow
# The in-process reference runs take the sequential path the Flower runtimes use: batched
# training agrees only up to rounding, which Adam with InstanceNorm amplifies (test_batched).
# No node fails in these runs, so a generous timeout costs nothing (a healthy deployed round
# takes up to ~40 s beside the suite's other worker).
SMALL = ["federation.rounds=2", "federation.round_timeout_s=120",
         "federation.batched_clients=off"]


def _run(root: Path, *sets: str) -> tuple[RunFolder, dict | None]:
    run = create_run(build_config("smoke", sets=[*SMALL, *sets]), root)
    return run, execute(run)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
               for x, y in zip(a, b, strict=True))


def test_flower_sim_secaggplus_sums_like_fedavg_and_hides_every_center(tmp_path):
    plain, s_plain = _run(tmp_path, "federation.rounds=1")
    assert s_plain, plain.status()
    run, summary = _run(tmp_path, "federation.runtime=flower-sim",
                        "defenses.secure_aggregation=true", "attacks.membership.enabled=true",
                        "attacks.membership.bootstrap=0")
    assert summary, run.status()
    view = ServerView(run.path)[1]
    assert view.encoding["kind"] == "secaggplus"
    # What the strategy got from SecAgg+: the same sum from every center, nothing else.
    uploads = [view.client_params(c) for c in view.clients]
    assert all(_max_diff(u, uploads[0]) == 0 for u in uploads)
    examples = [int(view.metadata[c]["num_examples"]) for c in view.clients]
    bound = quantization_error_bound(examples, SecAggParams(max_weight=1000.0))
    assert _max_diff(view.aggregate, ServerView(plain.path)[1].aggregate) <= bound
    # The membership attack on that view has nothing to tell the centers apart by.
    assert all(abs(auc - 0.5) < 1e-9 for auc in summary["mia"]["auc"].values())
    assert [r["round"] for r in run.metrics()] == [0, 1, 2]


def test_flower_sim_dp_mod_adds_the_inprocess_noise(tmp_path):
    dp = ["federation.rounds=1", "defenses.dp.enabled=true", "defenses.dp.clip_norm=0.5",
          "defenses.dp.noise_multiplier=0.01"]
    ref, s_ref = _run(tmp_path, *dp)
    run, summary = _run(tmp_path, *dp, "federation.runtime=flower-sim")
    assert summary and s_ref, run.status()
    got, want = ServerView(run.path)[1], ServerView(ref.path)[1]
    for c in want.clients:
        assert got.metadata[c]["noise_std"] == pytest.approx(0.005)
        # Only public protocol values leave a DP hospital, over Flower as in process (at
        # hospital level not its step count, a function of its size).
        assert got.metadata[c] == want.metadata[c]
        assert set(got.metadata[c]) == {"num_examples", "noise_std"}
        # Same clip, same seeded noise stream: the uploads agree to float32 rounding.
        assert _max_diff(got.uploads[c], want.uploads[c]) < 1e-5
    assert summary["federation"]["dp"] == s_ref["federation"]["dp"]


def _processes(folder: Path) -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process working in ``folder``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) != folder:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int(next(line.split()[1] for line in (proc / "status").read_text()
                            .splitlines() if line.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            continue
        found[int(proc.name)] = (ppid, cmd)
    return found


def _kill_supernode(folder: Path, partition: int) -> None:
    """SIGKILL the SuperNode of ``partition`` and the ClientApp it runs (a site going dark)."""
    procs = _processes(folder)
    node = next(pid for pid, (_, cmd) in procs.items()
                if "flower-supernode" in cmd and f"partition-id={partition} " in cmd)
    for pid in [node, *(p for p, (ppid, _) in procs.items() if ppid == node)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _deploy_with_fault(root: Path, *sets: str) -> tuple[RunFolder, dict | None]:
    """A deployed 1-round run whose SuperNode 1 is killed as soon as the untrained model is
    measured (round 0 recorded), so round 1 lacks it; returns the run and its summary (None
    when it failed).

    The round stage that waits for the killed node ends once the SuperLink finds it gone
    (about 45 s here) or at ``round_timeout_s``. 75 s is twice a healthy round here while the
    suite's other worker trains beside it (37 s measured; 20–25 s alone): a slow healthy node
    must not read as a dropped one."""
    run = create_run(build_config("smoke", sets=["federation.runtime=flower-deploy",
                                                 "federation.round_timeout_s=75",
                                                 "federation.rounds=1", *sets]),
                     root)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(summary=execute(run)))
    worker.start()
    deadline = time.time() + 300
    while not run.metrics():
        assert worker.is_alive() and time.time() < deadline, run.status()
        time.sleep(0.2)
    _kill_supernode(run.path / "flower", 1)
    worker.join(timeout=300)
    assert not worker.is_alive(), "the run hung after a SuperNode was killed"
    assert not _processes(run.path / "flower"), "Flower processes were left running"
    return run, out.get("summary")


def test_flower_deploy_fedmedian_matches_inprocess(tmp_path):
    ref, s_ref = _run(tmp_path, "federation.aggregator=fedmedian")
    run, summary = _run(tmp_path, "federation.aggregator=fedmedian",
                        "federation.runtime=flower-deploy")
    assert summary, (run.status(), (run.path / "log.txt").read_text()[-3000:])
    assert [r["round"] for r in run.metrics()] == [0, 1, 2]
    assert ServerView(run.path).rounds == [1, 2]
    assert [sorted(r["clients"]) for r in run.metrics() if r["round"]] == [
        ["center-0", "center-1", "center-2"]] * 2
    a, b = summary["federation"]["final"], s_ref["federation"]["final"]
    # SuperNodes train with torch's default threads, this test with one: the float order of
    # the reductions differs, nothing else.
    assert abs(a["mae_hu"] - b["mae_hu"]) <= 0.01 * b["mae_hu"]
    assert abs(a["ssim"] - b["ssim"]) <= 0.01
    assert not _processes(run.path / "flower")
    assert (run.path / "flower" / "superlink.log").is_file()


def test_killed_supernode_round_goes_on_with_the_others(tmp_path):
    run, summary = _deploy_with_fault(tmp_path, "federation.min_centers=2")
    assert summary, run.status()
    # Every center takes part in a healthy deployed round (test above); this one goes on
    # without the killed one.
    assert [sorted(r["clients"]) for r in run.metrics() if r["round"] == 1] == [
        ["center-0", "center-2"]]


def test_killed_supernode_fails_the_run_with_a_clear_message(tmp_path):
    run, summary = _deploy_with_fault(tmp_path)
    assert summary is None
    error = run.status().error
    assert "centers replied (missing center-1)" in error and "min_centers = 3" in error


def test_secaggplus_survives_one_dropout_below_its_threshold(tmp_path):
    run, summary = _deploy_with_fault(tmp_path, "federation.min_centers=2",
                                      "federation.server_view_rounds=all",
                                      "defenses.secure_aggregation=true")
    assert summary, run.status()
    last = ServerView(run.path)[1]
    assert last.encoding["kind"] == "secaggplus" and sorted(last.clients) == ["center-0",
                                                                              "center-2"]
    assert np.isfinite(summary["federation"]["final"]["mae_hu"])


def test_strategy_names_the_failures_when_too_few_centers_reply(tmp_path):
    run = create_run(build_config("smoke", sets=["federation.runtime=flower-sim"]), tmp_path)
    strategy = EngineStrategy(run.config(), run)
    with pytest.raises(RuntimeError, match=r"round 4: 0 of 3 centers replied \(missing "
                                           r"center-0, center-1, center-2\).*failures: "
                                           r"ClientApp raised ValueError"):
        strategy.aggregate_fit(4, [], [RuntimeError("ClientApp raised ValueError")])


def test_failure_text_is_the_clientapps_exception_line():
    ray_like = ("Error(code=2, reason='<class 'ray.exceptions.RayTaskError(ClientAppException)'"
                ">:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\n  File \"x.py\", line "
                "1, in fit\n    raise\nTypeError: unsupported operand\n'>')")
    assert failure_text(RuntimeError(ray_like)) == "TypeError: unsupported operand"
    assert failure_text(RuntimeError("node 7 is gone")) == "node 7 is gone"


@pytest.mark.parametrize(("sets", "pattern"), [
    (["federation.runtime=flower-sim", "defenses.secure_aggregation=true",
      "data.centers=2"], "SecAgg\\+, which needs data.centers ≥ 3"),
    (["federation.runtime=flower-deploy", "attacks.poisoning.enabled=true",
      "attacks.poisoning.kind=alie"], "only federation.runtime = 'inprocess' simulates"),
    (["federation.min_centers=4"], "federation.min_centers = 4 is more than data.centers = 3"),
    (["federation.runtime=flower"], "federation.runtime"),
])
def test_impossible_flower_configs_are_refused(sets, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config("smoke", sets=sets)


def test_flower_run_config_and_components_are_in_pyproject():

    app = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app = app["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "engine.federation.flower_app:server_app",
                                 "clientapp": "engine.federation.flower_app:client_app"}
    assert "run-dir" in app["config"]
    assert json.dumps(app["fab-include"]) == '["engine/**/*.py"]'


def test_flower_sim_audits_like_in_process_and_audits_the_dp_mod(tmp_path, monkeypatch):
    """The canary hospitals of a Flower run upload through the ClientApp's DP mod: the same
    audit as in process (same clip, same noise streams), and a mod whose noise is switched
    off is caught although the hospitals' in-process code is intact."""
    audit = ["defenses.dp.enabled=true", "defenses.dp.clip_norm=0.5",
             "defenses.dp.target_epsilon=1", "attacks.dp_audit.enabled=true"]
    ref, s_ref = _run(tmp_path, *audit)
    run, summary = _run(tmp_path, *audit, "federation.runtime=flower-sim")
    assert summary and s_ref, run.status()
    seen, want = dict(summary["dp_audit"]), dict(s_ref["dp_audit"])
    assert seen.pop("seconds") >= 0 and want.pop("seconds") >= 0
    assert seen == want and seen["verdict"] == "consistent"

    honest = flower_app.privatize_update
    monkeypatch.setattr(flower_app, "privatize_update",
                        lambda local, glob, clip, _sigma, rng: honest(local, glob, clip, 0.0, rng))
    cfg = run.config()
    # A canary's upload does not depend on the global model: any model of the run's shape.
    broken = run_dp_audit(run.path, cfg, None, get_parameters(build_model(cfg)))
    assert broken["verdict"] == "violation" and broken["epsilon_lower_bound"] > 1
