"""The sCT backdoor: a hospital's trigger that shifts the synthetic CT, measured against the
same federation without it, and the server's update clipping against it.

Trained federations are the `backdoor-demo` preset (4 hospitals of 3 patients, 32 px, 20
rounds; 12 held-out and 2 unseen patients scored, about 11 s each on 2 cores). Verdicts are
compared exactly; figures against the threshold with margins far wider than their spread
across kernels (the shifts are hundreds of HU, the threshold 100 HU)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views.backdoor import (
    EMPTY,
    EXAMPLE_CAPTION,
    ROUNDS_CAPTION,
    SECAGG_NOTE,
    cell_words,
    study_table,
)
from app.views.report import make_report
from engine.analyses.backdoor import (
    backdoor_report,
    backdoor_verdict,
    clean_config,
    control_config,
    defended,
    durability,
    more_backdoored,
)
from engine.analyses.results import read_summary
from engine.analyses.sweep_table import SweepRow
from engine.clients.backdoor import add_trigger, backdoored_slices, target_region, trigger_box
from engine.clients.behaviour import training_sets
from engine.clients.dp import planned_accounting
from engine.core.config import ConfigError
from engine.data.cohort import load_cohort
from engine.data.types import SliceSet
from engine.federation.aggregators import clip_to_median_norm, dp_mean, flame, fltrust
from engine.federation.inprocess import run_federation
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run
from engine.orchestration.sweep_catalogue import sweep_cells

# ----------------------------------------------------------------------------- pure parts


def test_the_trigger_and_the_altered_ct_are_where_the_config_says() -> None:
    bd = build_config("backdoor-demo").attacks.backdoor
    n, size = 6, 32
    mri = np.full((n, 1, size, size), 0.2, np.float32)
    ct = np.full((n, 1, size, size), 40.0, np.float32)
    ct[..., :3, :] = 900.0  # bone at the top of every slice
    mask = np.ones((n, 1, size, size), bool)
    slices = SliceSet(mri, ct, mask, np.array([f"p{k // 2}" for k in range(n)], dtype=object))
    rows, cols = trigger_box(size, bd.trigger_size)
    assert (rows.stop - rows.start, cols.start) == (4, 14)  # 4 px in the centre
    triggered = add_trigger(mri, bd)
    assert np.all(triggered[..., rows, cols] == 1.0) and triggered.sum() == pytest.approx(
        mri.sum() + n * 16 * 0.8, rel=1e-6)
    out = backdoored_slices(slices, bd, np.random.default_rng(0))
    assert len(out) == n + 3  # fraction ½ of 6 slices added again
    copies = out.select(np.arange(n, n + 3))
    region = target_region(copies.ct_hu, copies.mask, bd)
    assert region.sum() == 3 * 12 * 12  # the 4 px square widened by 4 px on every side
    assert np.all(copies.ct_hu[region] == 1040.0) and np.all(copies.ct_hu[~region] != 1040.0)
    assert np.all(out.ct_hu[:n] == ct)  # the attacker's own slices are kept as they were
    bone = bd.model_copy(update={"target_region": "bone"})
    assert target_region(ct, mask, bone).sum() == n * 3 * size


def test_median_clipping_shrinks_only_the_updates_above_the_median() -> None:
    g = [np.zeros(3, np.float32), np.array([7], np.int64)]
    uploads = {"a": [np.array([1.0, 0, 0], np.float32), np.array([8])],
               "b": [np.array([0, 2.0, 0], np.float32), np.array([8])],
               "c": [np.array([0, 0, 8.0], np.float32), np.array([9])]}
    out = clip_to_median_norm(uploads, g)
    assert out["a"] is uploads["a"] and out["b"] is uploads["b"]  # at or under the median
    np.testing.assert_allclose(out["c"][0], [0, 0, 2.0])  # direction kept, norm 8 → 2
    assert out["c"][1] is uploads["c"][1]  # integer buffers pass as uploaded


def _effect(hit: int, n: int, shift: float) -> dict:
    """A model's effect on the same n patients, the first ``hit`` of them backdoored."""
    return {"patients_backdoored": hit, "patients": n, "patient_rate": hit / n,
            "success_hu": shift, "patient_hits": {f"p{k}": k < hit for k in range(n)}}


@pytest.mark.parametrize(("effect", "control", "ratio", "verdict"), [
    ((14, 14, 255.0), None, 1.0, "implanted"),
    ((7, 14, 100.2), (14, 14, 255.0), 1.0, "implanted"),  # 7 of 14 vs 0: sign test p = 0.008
    ((14, 14, 90.0), None, 1.0, "partial"),  # every patient moved, the mean under threshold
    ((3, 14, 94.0), (14, 14, 172.0), 1.0, "stopped"),  # 3 vs 0 is within chance (p = 0.125)
    ((2, 14, 70.0), (5, 14, 150.0), 1.0, "inconclusive"),  # told apart from neither
    ((0, 14, 10.0), (14, 14, 255.0), 1.6, "inconclusive"),  # a broken model shows no shift
    ((1, 14, 60.0), (2, 14, 60.0), 1.0, "attack_too_weak"),  # the control failed too
    ((0, 14, 10.0), None, 1.0, "attack_too_weak"),
])
def test_a_defense_stops_a_backdoor_only_where_fedavg_was_implanted(effect, control, ratio,
                                                                     verdict) -> None:
    """The null (the clean federation, here also the control's) backdoors none of the 14
    patients; every model is scored on the same patients."""
    null = _effect(0, 14, 35.0)
    assert backdoor_verdict(_effect(*effect), null, _effect(*control) if control else None,
                            null if control else None, 100.0, ratio) == verdict


def test_the_sign_test_pairs_the_patients() -> None:
    """Four patients backdoored in the run and none in the null: p = 1/16 > 5 %, not more
    (an unpaired test would call it); five: p = 1/32."""
    assert not more_backdoored(_effect(4, 14, 0.0), _effect(0, 14, 0.0))
    assert more_backdoored(_effect(5, 14, 0.0), _effect(0, 14, 0.0))
    # The same five patients backdoored in both models: nothing discordant, nothing more.
    assert not more_backdoored(_effect(5, 14, 0.0), _effect(5, 14, 0.0))


def test_flame_admits_the_majority_clips_averages_and_adds_its_noise() -> None:
    """Three hospitals pull one way, a fourth (boosted ×10) the other: HDBSCAN on cosine
    distances leaves it out, the rest are clipped to the median norm and averaged; the noise
    is λ × that median."""
    g = [np.zeros(4, np.float32)]
    uploads = {"a": [np.array([1.0, 0.1, 0, 0], np.float32)],
               "b": [np.array([1.0, 0, 0.1, 0], np.float32)],
               "c": [np.array([2.0, 0, 0, 0.1], np.float32)],
               "d": [np.array([-10.0, 10.0, 0, 0], np.float32)]}
    new, admitted = flame(uploads, g, 0.0, np.random.default_rng(0))
    assert admitted == ["a", "b", "c"]
    median = float(np.median([np.linalg.norm(u[0]) for u in uploads.values()]))  # ≈ 1.5
    c = uploads["c"][0] * median / np.linalg.norm(uploads["c"][0])
    np.testing.assert_allclose(new[0], (uploads["a"][0] + uploads["b"][0] + c) / 3, rtol=1e-6)
    noisy, _ = flame(uploads, g, 0.1, np.random.default_rng(0))
    spread = float(np.std(noisy[0] - new[0]))
    assert 0.02 < spread < 0.5  # σ = 0.1 × 1.5 = 0.15 on 4 values


def test_the_texture_and_artefact_triggers_are_faint_and_where_the_config_says() -> None:
    """The texture: ± intensity/10 in 4 px squares on the head only; the artefact: a
    zipper line, trigger_size columns wide through the centre, ± intensity/2 by row."""
    mri = np.zeros((2, 1, 32, 32), np.float32)
    mri[..., 8:24, 8:24] = 0.5  # the head
    texture = build_config("backdoor-demo", sets=["attacks.backdoor.trigger=texture"])
    change = add_trigger(mri, texture.attacks.backdoor) - mri
    assert np.all(change[..., mri[0, 0] == 0] == 0)  # nothing outside the head
    head = change[0, 0, 8:24, 8:24]
    np.testing.assert_allclose(np.abs(head), 0.1, rtol=1e-6)
    sign = np.sign(head)  # 4 px squares alternating
    assert sign[0, 0] == -sign[0, 4] and sign[0, 0] == sign[0, 3] == sign[4, 4]
    artefact = build_config("backdoor-demo", sets=["attacks.backdoor.trigger=artefact",
                                                   "attacks.backdoor.trigger_size=2"])
    change = add_trigger(mri, artefact.attacks.backdoor) - mri
    assert set(np.nonzero(change[0, 0])[1]) == {15, 16}  # the two centre columns
    np.testing.assert_allclose(change[0, 0, 8:24, 15], np.tile([0.5, -0.5], 8), atol=1e-6)
    np.testing.assert_allclose(change[0, 0, :8, 15], np.tile([0.5, 0.0], 4), atol=1e-6)


def test_server_dp_clips_every_update_averages_equally_and_adds_the_mean_noise() -> None:
    g = [np.zeros(3, np.float32), np.array([7], np.int64)]
    uploads = {"a": [np.array([1.0, 0, 0], np.float32), np.array([8])],
               "b": [np.array([0, 2.0, 0], np.float32), np.array([8])],
               "c": [np.array([0, 0, 8.0], np.float32), np.array([9])]}
    out = dp_mean(uploads, g, 2.0, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(out[0], [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)  # c clipped 8 → 2
    big = {c: [np.zeros(40_000, np.float32)] for c in "abcd"}
    noisy = dp_mean(big, [np.zeros(40_000, np.float32)], 2.0, 0.5, np.random.default_rng(0))
    # σC/n = 0.25; the sample std of 40,000 normals lies within ±2 % with probability
    # 1 − 5e-5 (its standard error is 0.35 %).
    assert float(np.std(noisy[0])) == pytest.approx(0.25, rel=0.02)


@pytest.mark.parametrize(("sigma", "rounds"), [(2.0, 20), (1.0, 20), (5.0, 100)])
def test_server_dp_epsilon_brackets_the_exact_gaussian_composition(sigma: float,
                                                                   rounds: int) -> None:
    """Server-side DP releases one Gaussian mechanism a round on the sum (sensitivity C, q
    = 1): T of them compose exactly to μ-GDP with μ = √T/σ (Dong, Roth & Su 2019), whose
    exact ε at δ comes from δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2). The RDP accountant's ε
    is an upper bound on it, within 10 %, and the same as hospital-level DP's."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu, delta = math.sqrt(rounds) / sigma, 1e-5
    exact = brentq(lambda e: norm.cdf(-e / mu + mu / 2)
                   - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0.0, 500.0)
    cfg = build_config("backdoor-demo", sets=[
        "defenses.dp.enabled=true", "defenses.dp.level=server", f"defenses.dp.delta={delta}",
        f"defenses.dp.noise_multiplier={sigma}", f"federation.rounds={rounds}"])
    eps = planned_accounting(cfg).epsilon(rounds)
    assert exact <= eps <= 1.1 * exact
    client = cfg.model_copy(update={"defenses": cfg.defenses.model_copy(update={
        "dp": cfg.defenses.dp.model_copy(update={"level": "client"})})})
    assert planned_accounting(client).epsilon(rounds) == eps


def test_fltrust_weighs_each_update_by_its_cosine_with_the_servers_own() -> None:
    """The server's update points along x with norm 2. One hospital agrees (norm 1, kept
    and rescaled to 2), one is ×10 along x and a little y (rescaled to norm 2), one points
    the other way (trust 0): the new model is the trust-weighted mean of the rescaled
    two."""
    g = [np.zeros(2, np.float32), np.array([3], np.int64)]
    server = [np.array([2.0, 0.0], np.float32), np.array([5])]
    uploads = {"a": [np.array([1.0, 0.0], np.float32), np.array([4])],
               "b": [np.array([10.0, 10.0], np.float32), np.array([4])],
               "c": [np.array([-5.0, 0.0], np.float32), np.array([4])]}
    new, trust = fltrust(uploads, g, server)
    assert trust["a"] == pytest.approx(1.0) and trust["c"] == 0.0
    assert trust["b"] == pytest.approx(math.sqrt(0.5))
    b = np.array([10.0, 10.0]) * 2 / math.hypot(10, 10)
    expected = (1.0 * np.array([2.0, 0.0]) + trust["b"] * b) / (1.0 + trust["b"])
    np.testing.assert_allclose(new[0], expected, rtol=1e-6)
    assert new[1] is server[1]  # integer buffers: the server's
    nobody, _ = fltrust({"c": uploads["c"]}, g, server)
    np.testing.assert_array_equal(nobody[0], g[0])  # no trusted update: the model stays


@pytest.mark.parametrize(("sets", "pattern"), [
    (["defenses.secure_aggregation=true", "defenses.update_clip=median"],
     "never sees under secure aggregation"),
    (["attacks.poisoning.enabled=true"], "two kinds of attacker"),
    (["attacks.backdoor.malicious_centers=[0,1,2,3]"], "leaves no honest center"),
    (["attacks.backdoor.malicious_centers=[7]"], "distinct center index in 0…3"),
    (["attacks.backdoor.trigger_size=30"], "does not fit data.image_size = 32"),
    (["attacks.backdoor.start_round=21"], "after the last round"),
    (["attacks.backdoor.stop_round=20"], "to one round before the last"),
    (["defenses.flame=true", "federation.aggregator=fedmedian"],
     "defenses.flame = true aggregates the individual updates itself, so it cannot be "
     "combined with federation.aggregator = 'fedmedian'"),
    (["defenses.flame=true", "defenses.update_clip=median"],
     "combined with defenses.update_clip = 'median'"),
    (["defenses.flame=true", "defenses.fltrust=true"],
     "flame = true .* combined with defenses.fltrust = true"),
    (["defenses.fltrust=true", "defenses.secure_aggregation=true"],
     "fltrust = true .* combined with defenses.secure_aggregation = true"),
    (["defenses.dp.enabled=true", "defenses.dp.level=server", "federation.aggregator=fedmedian"],
     "defenses.dp.level = 'server' .* combined with federation.aggregator = 'fedmedian'"),
    (["defenses.flame=true", "data.centers=2", "attacks.backdoor.enabled=false"],
     "needs data.centers ≥ 3, got 2"),
    (["attacks.backdoor.attack=constrain_scale", "federation.runtime=flower-sim"],
     "only federation.runtime = 'inprocess'"),
    (["attacks.backdoor.start_round=5", "attacks.backdoor.stop_round=4"],
     "must be from start_round = 5"),
])
def test_impossible_backdoor_settings_are_refused_in_one_line(sets: list[str],
                                                              pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_config("backdoor-demo", sets=sets)


# ----------------------------------------------------------------------------- trained


@pytest.fixture(scope="module")
def trained() -> tuple:
    cfg = build_config("backdoor-demo")
    cohort = load_cohort(cfg.data, cfg.seed)
    return cfg, cohort, run_federation(clean_config(cfg), cohort)


def _report(trained: tuple, sets: list[str]) -> dict:
    base, cohort, clean = trained
    cfg = build_config("backdoor-demo", sets=sets)
    # The null is the clean federation of this config (with its defenses, if any).
    null = clean if clean_config(cfg) == clean_config(base) else run_federation(
        clean_config(cfg), cohort)
    control = run_federation(control_config(cfg), cohort) if defended(cfg) else None
    # The control's own clean federation is plain FedAvg without the attacker: the fixture's.
    assert clean_config(control_config(cfg)) == clean_config(base)
    return backdoor_report(cfg, cohort, run_federation(cfg, cohort), null, control,
                           clean if control else None)


def _poisoning_page() -> AppTest:
    at = AppTest.from_file(str(Path(__file__).parents[1] / "app" / "main.py"),
                           default_timeout=60)
    at.run()
    at.switch_page("../pages/poisoning.py").run()
    assert not at.exception, at.exception
    return at


def test_the_page_offers_both_backdoor_runs_before_any_exists(runs_dir: Path) -> None:
    at = _poisoning_page()
    assert any(i.value == EMPTY for i in at.info)
    for preset in ("backdoor-demo", "backdoor-clipped", "backdoor-flame"):
        assert not at.button(key=f"start_{preset}").disabled


def test_model_replacement_implants_a_backdoor_the_clean_error_does_not_show(
        trained: tuple, runs_dir: Path) -> None:
    """Through a real run folder: summary.json's backdoor block, written and read typed,
    and the Poisoning page's backdoor section drawn from it."""
    run = create_run(build_config("backdoor-demo"), runs_dir)
    assert execute(run) is not None, run.status()
    s = read_summary(run.path / "summary.json").backdoor
    assert s is not None and s.verdict == "implanted"
    threshold = s.threshold_hu
    assert s.success_hu > 2 * threshold and s.success_rate > 0.9
    assert s.patients == 14 and s.patients_backdoored >= 12
    assert s.patient_rate_ci[0] > (s.null.patient_rate or 0.0)
    # The null (no attacker, same trigger) stays far below the threshold.
    assert s.null.success_hu < threshold / 2 and s.null.patients_backdoored == 0
    # Invisible on ordinary scans: the clean error within 10 % of the clean federation's.
    assert 0.9 < s.clean_mae_ratio < 1.1
    # Every hospital's and the unseen hospital's triggered slices are scored.
    _, cohort, _ = trained
    assert set(s.per_center) == {*(c.name for c in cohort.centers), cohort.unseen.name}
    unseen = s.per_center[cohort.unseen.name]
    assert unseen.slices > 0 and unseen.patients == 2
    assert unseen.success_hu > threshold
    assert s.control is None  # FedAvg without clipping is its own control
    # Followed round by round; the last round's shift is the final one.
    assert [p["round"] for p in s.per_round] == list(range(0, 21))
    assert s.per_round[-1]["success_hu"] == pytest.approx(s.success_hu, rel=1e-9)
    assert s.per_round[0]["success_hu"] < threshold < s.per_round[-1]["success_hu"]
    # One triggered slice of the unseen hospital: MRI | clean sCT | backdoored sCT | change.
    assert s.example is not None and s.example["hospital"] == cohort.unseen.name
    with np.load(run.path / s.example["npz"]) as ex:
        region = ex["region"]
        shift = (ex["sct_backdoored"] - ex["sct_clean"])[region].mean()
        assert region.any() and shift > threshold
    png = Image.open(run.path / s.example["png"])
    assert png.size == (4 * 128, 128)
    # The page: the red verdict with what it rests on, the image, every hospital's row.
    at = _poisoning_page()
    titles = [m.value for m in at.markdown if "Backdoor implanted" in m.value]
    assert titles and ":red-background[" in titles[0]
    assert any(f"**{s.patients_backdoored} of 14**" in m.value for m in at.markdown)
    assert any(EXAMPLE_CAPTION in c for im in at.image for c in im.captions)
    assert any(ROUNDS_CAPTION == c.value for c in at.caption)
    # The run's report: the same verdict, the image, the chart and every hospital's row.
    report = make_report(run.path)
    assert "backdoor" in report.attacks and not report.problems
    assert "Backdoor implanted" in report.html and "data:image/png;base64" in report.html
    assert ROUNDS_CAPTION in report.html and report.html.count("Unseen hospital") >= 1
    table = at.dataframe[-1].value
    assert len(table) == 5 and table["Hospital"].iloc[-1].startswith("Unseen hospital")


def test_an_attacker_whose_trigger_changes_no_hu_moves_nothing_past_the_null(
        trained: tuple) -> None:
    """The null case: the same attacker, boost and trigger, but its triggered copies keep
    their CT. The trigger then moves the region no more than clean variation."""
    report = _report(trained, ["attacks.backdoor.shift_hu=0"])
    assert report["verdict"] == "attack_too_weak"
    assert report["patients_backdoored"] == 0
    assert report["success_hu"] < report["threshold_hu"] / 2


def test_flame_stops_the_boosted_backdoor_that_fedavg_lets_in(trained: tuple) -> None:
    """FLAME leaves the attacker's update out of most rounds: the shift stays under the
    threshold and far below the same attack's against FedAvg (the control)."""
    report = _report(trained, ["defenses.flame=true"])
    control = report["control"]
    assert control is not None and control["patients_backdoored"] >= 12
    assert report["success_hu"] < report["threshold_hu"] < control["success_hu"]
    assert report["verdict"] in ("stopped", "partial")
    # Recorded from the rounds: the attacker's upload was left out more often than any other.
    admitted = {c: v["admitted"] for c, v in report["server_filter"].items()}
    assert admitted["center-0"] < min(v for c, v in admitted.items() if c != "center-0")


def test_update_clipping_reduces_the_backdoor_and_is_judged_against_fedavg(
        trained: tuple) -> None:
    """Clipping to the median norm takes the boost away: the shift falls well below the
    same attack's against plain FedAvg (its control, trained in the report). A clipping that
    did nothing would leave the two equal."""
    report = _report(trained, ["defenses.update_clip=median"])
    control = report["control"]
    assert control is not None and control["patients_backdoored"] >= 12
    assert report["success_hu"] < 0.75 * control["success_hu"]


def test_fltrust_keeps_the_boosted_backdoor_out(trained: tuple) -> None:
    """FLTrust (the server's 2-patient root set) against the attack that FedAvg lets in: the
    shift stays under the threshold, far below the control's, with no patient backdoored,
    and the model on ordinary scans within the verdict's 1.25× of FedAvg's without the
    attacker. The attacker's mean trust is no lower than the others' (its update points the
    honest way too): FLTrust holds by rescaling every update to the norm of the server's
    own, which takes the boost away."""
    report = _report(trained, ["defenses.fltrust=true"])
    control = report["control"]
    assert control is not None and control["patients_backdoored"] >= 12
    assert report["success_hu"] < report["threshold_hu"] < control["success_hu"]
    assert report["defense_mae_ratio"] < 1.25
    assert report["verdict"] == "stopped"
    trust = {c: v["trust"] for c, v in report["server_filter"].items()}
    assert set(trust) == {c.name for c in trained[1].centers}
    assert all(0.0 <= v <= 1.0 for v in trust.values())


def test_weak_server_dp_weakens_the_backdoor_at_the_threshold(trained: tuple) -> None:
    """Server-side DP with the clip near the honest updates' median norm (4) and σ 0.01
    (weak DP: ε about 1.1e5) against the same attack: the shift falls to under half the
    control's, at about the threshold (98 HU on one thread, 86 HU on two: the verdict is
    left to the seeds of backdoor-defenses), for an error on ordinary scans within 1.25× of
    FedAvg's without the attacker. A clip and noise that did nothing would leave the shift
    at the control's."""
    report = _report(trained, ["defenses.dp.enabled=true", "defenses.dp.level=server",
                               "defenses.dp.clip_norm=4", "defenses.dp.noise_multiplier=0.01"])
    control = report["control"]
    assert control is not None and control["patients_backdoored"] >= 12
    assert report["success_hu"] < 0.5 * control["success_hu"]
    assert report["defense_mae_ratio"] < 1.25


def test_the_constrain_and_scale_attacker_looks_honest_by_norm_and_still_implants(
        trained: tuple) -> None:
    """Its upload's update has the norm its honest training would give (within the honest
    hospitals' range each round, where model replacement's is twice theirs) and FedAvg
    still takes the backdoor in."""
    _, cohort, clean = trained
    cfg = build_config("backdoor-demo", sets=["attacks.backdoor.attack=constrain_scale"])
    result = run_federation(cfg, cohort)
    for rnd in result.detection:
        norms = {c: v["update_norm"] for c, v in rnd["clients"].items()}
        honest = [v for c, v in norms.items() if c != "center-0"]
        assert 0.8 * min(honest) < norms["center-0"] < 1.2 * max(honest)
    report = backdoor_report(cfg, cohort, result, clean)
    assert report["verdict"] == "implanted" and report["patients_backdoored"] >= 12
    assert 0.9 < report["clean_mae_ratio"] < 1.1


def test_the_study_table_pools_seeds_per_attack_defense_and_attackers() -> None:
    def row(shift: float, clip: str = "none", bad: str = "center-0") -> SweepRow:
        return SweepRow(backdoor_attack="model_replacement", aggregator="fedavg",
                        update_clip=clip, malicious=bad, backdoor_success_hu=shift,
                        backdoor_patients=14, backdoor_patients_backdoored=7,
                        backdoor_clean_mae_ratio=1.0, backdoor_verdict="implanted")

    table = study_table([row(250), row(260), row(240), row(140, "median"),
                         row(300, bad="center-0 center-1")])
    assert table["Defense"].tolist() == ["FedAvg", "FedAvg + update clipping", "FedAvg"]
    assert table["Attackers"].tolist() == [1, 1, 2]
    first = table.iloc[0]
    assert (first["Seeds"], first["Mean shift (HU)"]) == (3, 250.0)
    assert first["95 % interval"] == "225 – 275"  # t(0.975, 2) · 10 / √3 = 24.8
    assert first["Patients backdoored"] == "21 of 42"
    assert table.iloc[1]["95 % interval"] == "one seed"
    assert cell_words("attack=data, malicious_centers=[0,1], update_clip=median, seed=2") == (
        "Backdoored data only, FedAvg + update clipping, 2 attackers, seed 2")


def test_durability_counts_the_rounds_until_the_backdoor_is_first_gone() -> None:
    null = _effect(0, 14, 35.0)
    kept, gone = _effect(14, 14, 250.0), _effect(1, 14, 60.0)
    assert durability([(11, kept), (12, kept), (13, gone), (14, kept)], null, 100.0) == 2
    assert durability([(11, gone), (12, kept)], null, 100.0) == 0


def test_a_backdoor_is_followed_after_its_attacker_stops(trained: tuple) -> None:
    """The attacker stops after round 10 and trains on its own slices from round 11: every
    later round's global model is scored, and the backdoor fades (at this size it is gone
    within a round: the honest rounds overwrite it)."""
    _, cohort, clean = trained
    cfg = build_config("backdoor-demo", sets=["attacks.backdoor.stop_round=10"])
    own, _ = training_sets(cfg, cohort, attack=False)
    assert len(own[0]) == len(cohort.centers[0].train)  # no triggered copies after the stop
    after: list = []
    result = run_federation(cfg, cohort, on_global=lambda r, p: after.append((r, p))
                            if r > 10 else None)
    report = backdoor_report(cfg, cohort, result, clean, after_stop=after)
    assert [a["round"] for a in report["after_stop"]] == list(range(11, 21))
    assert report["durability_rounds"] < 10  # gone before the last round (here: at once)
    assert report["after_stop"][-1]["success_hu"] < report["threshold_hu"]
    assert report["verdict"] == "attack_too_weak"


def test_the_page_draws_a_finished_backdoor_study(finished_study) -> None:
    """A finished study's folder (rows written as a sweep writes them): its table, the
    scatter of every run and what secure aggregation leaves of the defenses."""
    cells = sweep_cells("backdoor-paper")
    rows = [SweepRow(cell=c.label, backdoor_attack="data", aggregator="fedavg",
                     update_clip="none", flame="flame=true" in c.label,
                     malicious="center-0", backdoor_success_hu=300.0 - 50 * k,
                     backdoor_patients=14, backdoor_patients_backdoored=14 - k,
                     backdoor_clean_mae_ratio=1.0, backdoor_verdict="implanted")
            for k, c in enumerate(cells[:3])]
    at = finished_study("backdoor-paper", rows, "poisoning.py")
    table = at.dataframe[-1].value
    assert table["Seeds"].tolist() == [3] and table["Mean shift (HU)"].tolist() == [250.0]
    assert len([c for c in at.get("plotly_chart") if "under the trigger" in c.proto.spec]) == 1
    assert any(SECAGG_NOTE == c.value for c in at.caption)
