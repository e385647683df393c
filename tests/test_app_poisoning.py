"""The Poisoning page, driven headless with AppTest on real run and sweep folders.

Once per module, three tiny poisoned/clean runs (3 hospitals, 2 rounds) are trained with the
engine's own ``execute``, and a 5-cell stand-in for the ``poison-paper`` sweep runs through
``run_sweep`` on top of them (reusing them). Each test copies that runs root into a private
one. Background jobs started by the page are stopped at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from app.views.common import hospital_name
from app.views.poisoning import TITLES, attack_sets, detection_sentence, poisoning_runs, verdict
from app.views.results import list_runs
from engine.analyses.poisoning import BROKEN, PROTECTED, VERDICTS, poisoning_verdict
from engine.analyses.results import Detection, PoisoningSummary
from engine.core.config import config_hash
from engine.core.processes import pid_alive, read_job_pid
from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration import queue, sweep_catalogue
from engine.orchestration.experiment import execute
from engine.orchestration.jobs import cancel_job, cancel_sweep
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, create_run, open_run
from engine.orchestration.sweep_catalogue import POISON_LEVELS
from engine.orchestration.sweeps import run_sweep, sweep_folder

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
POISONING = "../pages/poisoning.py"  # relative to the entrypoint's folder (app/)
SHORT = ["federation.rounds=2"]
ATTACK = ["attacks.poisoning.enabled=true", "attacks.poisoning.kind=update_noise",
          "attacks.poisoning.noise_std=1.0"]
MEDIAN = ["federation.aggregator=fedmedian"]
TINY_PAPER = {
    "description": "poison-paper in miniature: smoke, 2 rounds",
    "base": "smoke",
    "cells": [SHORT, [*SHORT, *MEDIAN], [*SHORT, *ATTACK], [*SHORT, *MEDIAN, *ATTACK],
              [*SHORT, *ATTACK, "attacks.poisoning.malicious_centers=[0, 1]"]],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A runs root with a clean, a FedAvg-poisoned and a FedMedian-poisoned tiny run, and the
    tiny poison-paper sweep (which reuses them and trains the other two cells)."""
    root = tmp_path_factory.mktemp("poison-runs")
    ids = {}
    for key, sets in (("clean", SHORT), ("fedavg", [*SHORT, *ATTACK]),
                      ("fedmedian", [*SHORT, *MEDIAN, *ATTACK])):
        run = create_run(build_config("smoke", sets=sets), root)
        assert execute(run) is not None, run.status()
        ids[key] = run.run_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sweep_catalogue.SWEEPS, "poison-paper", TINY_PAPER)
        run_sweep("poison-paper", root=root, progress=lambda _msg: None)
    return root, ids


@pytest.fixture
def paper(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny sweep stands in for poison-paper (so its folder name is the tiny one's)."""
    monkeypatch.setitem(sweep_catalogue.SWEEPS, "poison-paper", TINY_PAPER)


def _copy(built: tuple[Path, dict[str, str]], runs_dir: Path) -> dict[str, RunFolder]:
    root, ids = built
    shutil.copytree(root, runs_dir)
    return {k: RunFolder(runs_dir / v) for k, v in ids.items()}


def _page(**params: str) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    at.switch_page(POISONING)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Poisoning"
    return at


def _md(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _trace(spec: dict, name: str) -> dict:
    return next(d for d in spec["data"] if d.get("name") == name)


def _heatmaps(at: AppTest) -> list[dict]:
    return [s["data"][0] for s in _charts(at) if s["data"] and s["data"][0]["type"] == "heatmap"]


def _expected_title(poison: dict) -> str:
    """The title's opening for the engine's verdict, which must follow the ratio rule."""
    ratio = poison["mae_ratio_mean"]
    assert poison["verdict"] == ("broken" if ratio >= BROKEN else "damaged"
                                 if ratio > PROTECTED else poison["verdict"])
    return {"broken": "The federation was made useless",
            "damaged": "The federation was damaged but still learns",
            "protected": "The rule protected the federation",
            "attack_too_weak": "Attack too weak to judge the rule"}[poison["verdict"]]


def _column(history: list[dict], key: str) -> list[float]:
    return [h[key] for h in history]


def test_empty_runs_folder_gives_empty_states(runs_dir: Path) -> None:
    at = _page(poi_run="no-such-run")
    assert any("can't be opened" in w.value for w in at.warning)
    assert "poi_run" not in at.query_params
    assert any("No poisoning results yet" in i.value for i in at.info)
    assert any("`fedsct sweep --preset poison-paper`" in i.value for i in at.info)
    # The other studies read as on every page: not run yet, how long, the command on Start.
    studies = ("poison-paper", "poison-model", "poison-data-factors", "poison-breakdown",
               "poison-breakdown-16", "poison-breakdown-64", "backdoor-paper",
               "backdoor-defenses")
    assert sum(c.value.startswith("Not run yet: ") for c in at.caption) == len(studies)
    for name in studies:
        assert not at.button(key=f"sweep_start_{name}").disabled
        assert f"`fedsct sweep --preset {name}`" in at.button(key=f"sweep_start_{name}").help
    assert not at.get("plotly_chart")
    assert not at.button(key="poi_start").disabled


def test_verdict_curves_and_detection_match_the_summary(runs_dir: Path, built) -> None:
    runs = _copy(built, runs_dir)
    run = runs["fedavg"]
    summary = run.summary()
    p = summary["poisoning"]
    at = _page(poi_run=run.run_id)
    assert next(s for s in at.selectbox if s.label == "Poisoned run").value == run.run_id

    # Verdict: title from the engine's ratio, numbers as in summary.json.
    cell, base = p["cells"][0], p["baseline"]["fedavg"]
    assert _expected_title(p) in _md(at)
    assert (f"**{cell['mae_hu']:.0f} HU** against **{base['mae_hu']:.0f} HU**" in _md(at))
    assert f"**{cell['mae_ratio']:.2f}×** the clean error" in _md(at)
    assert any(p["baseline_run"] in c.value for c in at.caption)  # the clean run was reused

    # Curves: this run and the FedMedian run of the same attack, each with its dashed baseline;
    # the run with two attackers is a different attack and stays out.
    curves, detection = _charts(at)[:2]
    assert [d["name"] for d in curves["data"]] == [
        "FedAvg under attack", "FedAvg without attackers", "FedMedian under attack",
        "FedMedian without attackers"]
    history = summary["federation"]["history"]
    np.testing.assert_allclose(_trace(curves, "FedAvg under attack")["y"],
                               _column(history, "mae_hu"))
    clean = _trace(curves, "FedAvg without attackers")
    assert clean["line"]["dash"] == "dash"
    assert _trace(curves, "FedAvg under attack")["line"]["dash"] == "solid"
    np.testing.assert_allclose(clean["y"], _column(p["baseline_history"], "mae_hu"))
    median = runs["fedmedian"].summary()
    np.testing.assert_allclose(_trace(curves, "FedMedian under attack")["y"],
                               _column(median["federation"]["history"], "mae_hu"))

    # Detection: the attacker's line, the threshold and the flagged points are the summary's.
    det = p["detection"]
    attacker = _trace(detection, f"{hospital_name('center-0')} (attacker)")
    np.testing.assert_allclose(attacker["y"], [r["clients"]["center-0"]["distance_ratio"]
                                               for r in det["per_round"]])
    flagged = [(r["round"], hospital_name(c)) for r in det["per_round"]
               for c, v in r["clients"].items() if v["flagged"]]
    marks = _trace(detection, "flagged by the server")
    assert list(zip(marks["x"], marks["customdata"], strict=True)) == flagged
    assert det["detected"] == ["center-0"]
    assert set(marks["customdata"]) == {hospital_name(c) for c in det["detected"]}
    assert detection["layout"]["shapes"][0]["y0"] == det["flag_ratio"] == 2.0
    assert f"The attacker **{hospital_name('center-0')}** was visible" in _md(at)
    assert f"flagged in {det['flag_rate']['center-0']:.0%} of rounds" in _md(at)

    # Another quality measure redraws the curves from the same histories.
    at.radio(key="w_poi_metric").set_value("psnr_db").run()
    assert not at.exception, at.exception
    np.testing.assert_allclose(_trace(_charts(at)[0], "FedAvg without attackers")["y"],
                               _column(p["baseline_history"], "psnr_db"))

    # The FedMedian run: its own verdict, a robust rule.
    picker = next(s for s in at.selectbox if s.label == "Poisoned run")
    ids = [r.run_id for r in poisoning_runs(list_runs())[0]]  # the picker's order, newest first
    assert len(ids) == len(picker.options)
    picker.select_index(ids.index(runs["fedmedian"].run_id)).run()
    assert not at.exception, at.exception
    assert at.query_params["poi_run"] == runs["fedmedian"].run_id
    mp = median["poisoning"]
    assert _expected_title(mp) in _md(at)
    # Every rule's verdict on this attack is shown, worst first: FedAvg's above FedMedian's.
    captions = [c.value for c in at.caption]
    order = [next(i for i, c in enumerate(captions) if c.startswith(f"**{rule}**. The clean"))
             for rule in ("FedAvg", "FedMedian")]
    assert order[0] < order[1], captions
    assert f"**{mp['cells'][0]['mae_ratio']:.2f}×** the clean error" in _md(at)
    assert "**FedMedian** ended with" in _md(at)


def test_study_grid_matches_table_json(runs_dir: Path, built, paper) -> None:
    _copy(built, runs_dir)
    folder = sweep_folder("poison-paper")
    table = json.loads((folder / "table.json").read_text())
    curves = json.loads((folder / "curves.json").read_text())
    at = _page()
    assert any("Finished: all 5 experiments" in c.value for c in at.caption)

    # Heat-map: rows = attackers, columns = rules; each cell is table.json's MAE and ratio.
    heat = _heatmaps(at)[0]
    assert heat["y"] == [hospital_name("center-0"),
                         f"{hospital_name('center-0')} + {hospital_name('center-1')}"]
    assert heat["x"] == ["FedAvg", "FedMedian"]
    names = {"fedavg": "FedAvg", "fedmedian": "FedMedian"}
    attacked = [r for r in table if r.get("poison_kind")]
    assert len(attacked) == 3
    for r in attacked:
        i = heat["y"].index(" + ".join(hospital_name(c) for c in r["malicious"].split()))
        j = heat["x"].index(names[r["aggregator"]])
        assert heat["z"][i][j] == pytest.approx(r["mae_ratio"])
        assert heat["text"][i][j] == f"{r['mae_hu']:.0f} HU<br>×{r['mae_ratio']:.2f}"
    assert heat["z"][1][1] is None  # two attackers were not run against the median

    # Curves from curves.json, the clean baseline dashed; then final MAE vs noise level.
    specs = _charts(at)
    grid_curves = next(s for s in specs if any(d.get("name") == "FedMedian under attack"
                                               for d in s["data"])
                       and s is not specs[0])
    row = next(r for r in attacked if r["aggregator"] == "fedmedian")
    clean = {r["aggregator"]: r for r in table if not r.get("poison_kind")}
    np.testing.assert_allclose(_trace(grid_curves, "FedMedian under attack")["y"],
                               _column(curves[row["run_id"]], "mae_hu"))
    dashed = _trace(grid_curves, "FedMedian without attackers")
    assert dashed["line"]["dash"] == "dash"
    np.testing.assert_allclose(dashed["y"], _column(curves[clean["fedmedian"]["run_id"]],
                                                    "mae_hu"))
    levels = specs[-1]
    fedavg = _trace(levels, "FedAvg")
    assert fedavg["x"] == ["no attack", "σ 1"]
    single = next(r for r in attacked if r["aggregator"] == "fedavg"
                  and r["malicious"] == "center-0")
    np.testing.assert_allclose(fedavg["y"], [clean["fedavg"]["mae_hu"], single["mae_hu"]])

    # Two attackers: only FedAvg ran them.
    at.selectbox(key="w_poi_grid_malicious").select("center-0 center-1").run()
    assert not at.exception, at.exception
    pair = next(r for r in attacked if r["malicious"] == "center-0 center-1")
    specs = _charts(at)
    grid_curves = next(s for s in specs[1:] if s["data"]
                       and s["data"][0].get("name") == "FedAvg under attack"
                       and len(s["data"]) == 2)
    np.testing.assert_allclose(grid_curves["data"][0]["y"],
                               _column(curves[pair["run_id"]], "mae_hu"))


def test_page_reads_the_sweep_through_sweep_folder(runs_dir: Path, built) -> None:
    """Without the tiny spec, poison-paper's folder is another one: nothing is shown."""
    _copy(built, runs_dir)
    at = _page()
    assert any("`fedsct sweep --preset poison-paper`" in i.value for i in at.info)
    assert not _heatmaps(at)


def test_damaged_files_give_warnings(runs_dir: Path, built, paper) -> None:
    runs = _copy(built, runs_dir)
    folder = sweep_folder("poison-paper")
    (folder / "curves.json").write_text("{half")
    at = _page()
    assert any(str(folder / "curves.json") in w.value for w in at.warning)
    assert _heatmaps(at)  # the table itself is fine

    (folder / "table.json").write_text("[{half-written")
    at = _page()
    assert any(str(folder / "table.json") in w.value for w in at.warning)
    assert not _heatmaps(at)

    (folder / "table.json").write_text(json.dumps([{"poison_kind": "update_noise",
                                                    "noise_std": "high", "malicious": "x"}]))
    at = _page()  # a column of the wrong type: the table is damaged, read as such
    assert any(str(folder / "table.json") in w.value and "damaged or unreadable" in w.value
               for w in at.warning)
    assert not at.exception and not _heatmaps(at)

    # A poisoning block with no attacked cell gives no verdict, and one that does not read as
    # a run summary gives nothing: either way the file is named as damaged, never a traceback.
    broken = runs["fedmedian"]
    summary = broken.summary()
    for cells in ([], [{"mae_hu": "n/a"}]):
        summary["poisoning"]["cells"] = cells
        broken.write_summary(summary)
        at = _page(poi_run=broken.run_id)
        assert any(str(broken.path / "summary.json") in w.value and "damaged" in w.value
                   for w in at.warning), cells
        assert not at.error, [e.value for e in at.error]

    (runs["fedavg"].path / "summary.json").write_text("{half-written")
    (broken.path / "summary.json").unlink()
    at = _page()
    for run in (runs["fedavg"], broken):
        assert any(str(run.path / "summary.json") in w.value for w in at.warning)


def _stop(run: RunFolder) -> None:
    """Cancel a background run: a waiting one leaves the queue; a started one is terminated
    and its process reaped (it is this process's child), so no training is left behind."""
    pid, start = read_job_pid(run.path)  # written when the queue starts it
    cancel_job(run, grace_s=0)
    if pid is not None:
        if pid_alive(pid, start):  # asked to stop before it had recorded its own pid
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        assert not pid_alive(pid, start)


def test_run_queues_one_rule_after_the_other(runs_dir: Path) -> None:
    at = _page()
    at.selectbox(key="w_poi_kind").select("data_noise").run()
    at.radio(key="w_poi_level").set_value("low")
    at.multiselect(key="w_poi_malicious").set_value([2, 1])
    at.multiselect(key="w_poi_rules").set_value(["fedprox", "fedmedian"]).run()
    assert not at.exception, at.exception
    at.button(key="poi_start").click().run()
    assert not at.exception, at.exception
    first = open_run(at.query_params["poi_run"])
    started = [RunFolder(runs_dir / r["run_id"]) for r in RunIndex(runs_dir).list()]
    second = next(r for r in started if r.run_id != first.run_id)
    sweep = sweep_folder("poison-paper")
    more: list[RunFolder] = []
    try:
        assert len(started) == 2  # one run per rule, both queued at once
        cfg = first.config()
        poison = cfg.attacks.poisoning
        assert (cfg.name, cfg.federation.aggregator, cfg.federation.fedprox_mu) == \
            ("poison-base", "fedprox", 0.01)
        assert (poison.enabled, poison.kind, poison.noise_std, poison.malicious_centers) == \
            (True, "data_noise", 0.1, [1, 2])
        # Spelt like the study's cell, so a finished study experiment would be reused.
        cells = {config_hash(build_config("poison-base", sets=c))
                 for c in sweep_catalogue.SWEEPS["poison-paper"]["cells"]}
        assert config_hash(cfg) in cells
        assert first.status().state in ACTIVE
        assert at.get("progress")
        # The next rule waits in the engine's queue behind the first: the same attack.
        assert second.config().federation.aggregator == "fedmedian"
        assert second.config().attacks.poisoning == poison
        assert second.status().state == "queued"
        assert [(Path(j.folder), j.state) for j in queue.jobs(runs_dir)] == [
            (first.path, "running"), (second.path, "waiting")]
        assert any("Queued the attack under FedProx, FedMedian: the runs go one after the "
                   "other" in s.value for s in at.success)
        # The start buttons stay usable while they run; what they start queues behind them.
        for key in ("poi_start", "sweep_start_poison-paper"):
            button = at.button(key=key)
            assert not button.disabled, key
            assert button.help == ("Queued behind poison-base and 1 more: it starts when "
                                   "that job ends."), (key, button.help)
        at.button(key="sweep_start_poison-paper").click().run()
        assert not at.exception, at.exception
        assert json.loads((sweep / "sweep.json").read_text())["state"] == "queued"
        at.button(key="poi_start").click().run()
        assert not at.exception, at.exception
        more = [RunFolder(runs_dir / r["run_id"]) for r in RunIndex(runs_dir).list()
                if r["run_id"] not in (first.run_id, second.run_id)]
        assert at.query_params["poi_run"] in [r.run_id for r in more]
        assert sorted(r.config().federation.aggregator for r in more) == ["fedmedian",
                                                                           "fedprox"]
        assert [r.status().state for r in more] == ["queued", "queued"]
        waiting = {Path(j.folder) for j in queue.jobs(runs_dir) if j.state == "waiting"}
        assert {sweep, *(r.path for r in more)} <= waiting
    finally:
        # The waiting jobs first: ending the running one would start the next.
        for run in more:
            _stop(run)
        if (sweep / "sweep.json").exists():
            cancel_sweep(sweep, grace_s=0)
        _stop(second)
        _stop(first)
    assert json.loads((sweep / "sweep.json").read_text())["state"] == "cancelled"
    assert [r.status().state for r in more] == ["cancelled", "cancelled"]
    at.run()  # stopped: nothing more starts, and nothing is queued behind any more
    assert not at.exception, at.exception
    assert queue.jobs(runs_dir) == []
    assert len(RunIndex(runs_dir).list()) == 4
    assert "Queued behind" not in at.button(key="poi_start").help


def test_run_reuses_a_finished_run_and_refuses_impossible_rules(
        runs_dir: Path, built, monkeypatch: pytest.MonkeyPatch) -> None:
    # The copied run computed its figures on this process's one thread: so would a new one.
    monkeypatch.setenv("FEDSCT_THREADS", "1")
    root, ids = built
    high = POISON_LEVELS["update_noise"][1]  # the page's default level
    cfg = build_config("poison-base", sets=attack_sets("update_noise", [0], "fedavg", high))
    old = RunFolder(Path(shutil.copytree(root / ids["fedavg"], runs_dir / ids["fedavg"])))
    (old.path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    status = json.loads((old.path / "status.json").read_text())
    (old.path / "status.json").write_text(json.dumps(status | {"config_hash": config_hash(cfg)}))
    RunIndex(runs_dir).rebuild()

    at = _page()
    at.multiselect(key="w_poi_rules").set_value(["fedavg"]).run()
    assert any(old.run_id in c.value and "FedAvg" in c.value for c in at.caption)
    at.button(key="poi_start").click().run()
    assert not at.exception, at.exception
    assert at.query_params["poi_run"] == old.run_id
    assert any("nothing had to be trained" in s.value for s in at.success)
    assert len(RunIndex(runs_dir).list()) == 1

    at.multiselect(key="w_poi_rules").set_value(["fedavg", "krum"]).run()
    assert any("Krum can't run this attack" in e.value and "2f+2" in e.value for e in at.error)
    assert at.button(key="poi_start").disabled
    at.multiselect(key="w_poi_rules").set_value(["fedavg"])
    at.multiselect(key="w_poi_malicious").set_value([0, 1, 2, 3]).run()
    assert any("no honest center" in e.value for e in at.error)
    assert at.button(key="poi_start").disabled


def _end(folder: Path, timeout_s: float = 60.0) -> None:
    """Cancel a background sweep and wait until its process has ended (killed at the end)."""
    pid, start = read_job_pid(folder)
    assert pid is not None
    cancel_sweep(folder, grace_s=timeout_s)
    try:
        os.waitpid(pid, 0)  # it is this process's child: reap it
    except ChildProcessError:
        pass
    assert not pid_alive(pid, start)


def test_study_button_starts_and_stops_the_sweep(runs_dir: Path) -> None:
    at = _page()
    folder = sweep_folder("poison-paper")
    model = sweep_folder("poison-model")
    assert not (folder / "sweep.json").exists()
    at.button(key="sweep_start_poison-paper").click().run()
    queued: list[RunFolder] = []
    try:
        assert not at.exception, at.exception
        state = json.loads((folder / "sweep.json").read_text())
        assert state["state"] in ACTIVE
        total = len(sweep_catalogue.SWEEPS["poison-paper"]["cells"])
        assert len(state["cells"]) == total
        assert at.get("progress")
        # The other start buttons stay usable while the study runs; what they start waits in
        # the queue behind it.
        for key in ("poi_start", "sweep_start_poison-model"):
            button = at.button(key=key)
            assert not button.disabled, key
            assert button.help == ("Queued behind the poison-paper study: it starts when that "
                                   "job ends."), (key, button.help)
        at.button(key="sweep_start_poison-model").click().run()
        assert not at.exception, at.exception
        assert json.loads((model / "sweep.json").read_text())["state"] == "queued"
        at.button(key="poi_start").click().run()
        assert not at.exception, at.exception
        jobs_now = queue.jobs(runs_dir)
        queued = [RunFolder(Path(j.folder)) for j in jobs_now if j.kind == "run"]
        assert [(Path(j.folder), j.state) for j in jobs_now] == [
            (folder, "running"), (model, "waiting"), *((r.path, "waiting") for r in queued)]
        assert queued[0].run_id == at.query_params["poi_run"]
        assert [r.config().federation.aggregator for r in queued] == ["fedavg", "fedmedian"]
        assert [r.status().state for r in queued] == ["queued", "queued"]
        for run in queued:
            cancel_job(run, grace_s=0)
            assert run.status().state == "cancelled"
        cancel_sweep(model, grace_s=0)
        assert json.loads((model / "sweep.json").read_text())["state"] == "cancelled"

        pid, start = read_job_pid(folder)
        at.button(key="sweep_stop_poison-paper").click().run()
        assert not at.exception, at.exception
        assert not pid_alive(pid, start)
    finally:
        for run in queued:
            cancel_job(run, grace_s=0)
        if (model / "sweep.json").exists():
            cancel_sweep(model, grace_s=0)
        _end(folder)
    texts = [c.value for c in at.caption] + [e.value for e in at.error]
    assert any(re.search(rf"Stopped after \d+ of {total} ", t) or "ended without finishing" in t
               for t in texts)
    assert queue.jobs(runs_dir) == []
    for key in ("poi_start", "sweep_start_poison-paper"):  # nothing left to queue behind
        button = at.button(key=key)
        assert not button.disabled and "Queued behind" not in button.help, (key, button.help)


def test_model_and_factor_studies_are_drawn_from_their_tables(runs_dir: Path) -> None:
    model = [{"cell": "baseline", "aggregator": "fedavg", "mae_hu": 100.0},
             {"cell": "kind=sign_flip", "aggregator": "fedavg", "poison_kind": "sign_flip",
              "malicious": "center-0", "mae_hu": 400.0, "mae_ratio": 4.0},
             {"cell": "kind=alie", "aggregator": "fedmedian", "poison_kind": "alie",
              "malicious": "center-0", "mae_hu": 130.0, "mae_ratio": 1.3}]
    factors = [{"cell": "loss=l1", "aggregator": "fedavg", "loss": "l1", "optimizer": "adam",
                "mae_hu": 100.0},
               {"cell": "target=ct", "aggregator": "fedavg", "loss": "l1", "optimizer": "adam",
                "poison_kind": "data_noise", "poison_target": "ct", "mae_hu": 250.0,
                "mae_ratio": 2.5},
               {"cell": "target=mri", "aggregator": "fedavg", "loss": "mse", "optimizer": "sgd",
                "poison_kind": "data_noise", "poison_target": "mri", "mae_hu": 110.0,
                "mae_ratio": 1.1}]
    for name, table in (("poison-model", model), ("poison-data-factors", factors)):
        folder = sweep_folder(name)
        folder.mkdir(parents=True)
        (folder / "table.json").write_text(json.dumps(table))
        (folder / "sweep.json").write_text(json.dumps(
            {"state": "cancelled", "cells_done": len(table), "cells": [{}] * 16}))
    at = _page()
    heat_model, heat_factors = _heatmaps(at)
    assert heat_model["y"] == ["reversed update", "A Little Is Enough"]
    assert heat_model["x"] == ["FedAvg", "FedMedian"]
    assert heat_model["z"] == [[4.0, None], [None, 1.3]]
    assert heat_model["text"][0][0] == "400 HU<br>×4.00"
    assert heat_factors["y"] == ["noise on the MRI only", "noise on the CT only"]
    assert heat_factors["x"] == ["L1 loss, Adam", "MSE loss, SGD"]
    assert heat_factors["z"] == [[None, 1.1], [2.5, None]]
    assert sum("3 of 16 experiments finished so far" in c.value for c in at.caption) == 2
    assert at.button(key="sweep_start_poison-model").label == "Continue the study"


def test_verdict_levels_and_detection_sentences() -> None:
    def poison(ratio: float, rule: str) -> PoisoningSummary:
        return PoisoningSummary.model_validate({
            "kind": "update_noise", "malicious_names": ["center-0"],
            "baseline": {rule: {"mae_hu": 100.0, "psnr_db": 20.0, "ssim": 0.5}},
            "cells": [{"mae_hu": 100.0 * ratio, "psnr_db": 18.0, "ssim": 0.4,
                       "mae_ratio": ratio}]})

    useless = verdict(poison(2.0, "fedavg"), "fedavg")
    assert useless.colour == "red"
    assert useless.title.startswith("The federation was made useless")
    v = verdict(poison(2.5, "fedmedian"), "fedmedian")
    assert v.colour == "red" and "even though FedMedian" in v.title
    assert "**250 HU** against **100 HU**" in v.detail and "(+150 %)" in v.detail
    assert set(TITLES) == set(VERDICTS)  # a title for every verdict the engine gives
    # A run made before the FedAvg control: within 25 % is not "protected".
    old = verdict(poison(1.2, "fedmedian"), "fedmedian")
    assert old.colour == "gray" and "no FedAvg control" in old.title
    assert verdict(poison(1.5, "fedprox"), "fedprox").colour == "orange"

    def judged(ratio: float, fedavg: list[float], rule: str = "fedmedian") -> PoisoningSummary:
        p = poison(ratio, rule)
        control = [{"seed": k, "mae_hu": 100.0 * r, "baseline_mae_hu": 100.0, "mae_ratio": r}
                   for k, r in enumerate(fedavg)]
        return p.model_copy(update={
            "verdict": poisoning_verdict([ratio], fedavg), "mae_ratio_mean": ratio,
            "seeds": p.model_validate({"seeds": control[:1]}).seeds,
            "fedavg_control": p.model_validate({"fedavg_control": {
                "seeds": control, "mae_ratio_mean": float(np.mean(fedavg)),
                "hurt": min(fedavg) > PROTECTED}}).fedavg_control})

    held = verdict(judged(1.2, [2.4, 2.6]), "fedmedian")
    assert held.colour == "green" and held.title.startswith("The rule protected")
    assert "against FedAvg (the control), 2 seeds: 2.40×, 2.60×" in held.detail
    weak = verdict(judged(1.2, [1.1]), "fedmedian")
    assert weak.colour == "gray" and weak.title.startswith("Attack too weak")

    def det(flagged: dict[str, bool]) -> Detection:
        clients = {c: {"distance_ratio": 3.0 if f else 1.0, "flagged": f}
                   for c, f in flagged.items()}
        return Detection.model_validate({
            "per_round": [{"round": 1, "clients": clients}],
            "flag_rate": {c: float(f) for c, f in flagged.items()},
            "mean_distance_ratio": {c: v["distance_ratio"] for c, v in clients.items()},
            "detected": [c for c, f in flagged.items() if f], "flag_ratio": 2.0})

    hidden = detection_sentence(det({"center-0": False, "center-1": True, "center-2": False}),
                                ["center-0"])
    assert f"**{hospital_name('center-0')}** hid among the honest hospitals" in hidden
    assert "flagged in 0% of rounds" in hidden
    assert f"{hospital_name('center-1')} was flagged in most rounds too (false alarms)" in hidden
    assert "secure aggregation" in detection_sentence(Detection.model_validate({"per_round": []}),
                                                      ["center-0"])


def test_attack_settings_survive_a_page_switch(runs_dir: Path) -> None:
    at = _page()
    at.selectbox(key="w_poi_kind").select("sign_flip")
    at.multiselect(key="w_poi_malicious").set_value([1, 3])
    at.multiselect(key="w_poi_rules").set_value(["trimmed_mean"]).run()
    assert not any(r.label == "Noise level" for r in at.radio)  # a crafted update: no noise
    at.switch_page("../pages/home.py").run()
    at.switch_page(POISONING).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_poi_kind").value == "sign_flip"
    assert at.multiselect(key="w_poi_malicious").value == [1, 3]
    assert at.multiselect(key="w_poi_rules").value == ["trimmed_mean"]
