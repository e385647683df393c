"""Membership inference: score math on hand-made arrays, vectorised gradients, and the
attack end to end on a small federation (plain, SecAgg, and a control without members)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from engine.attacks.membership import (
    Candidates,
    MembershipAttack,
    MembershipPayload,
    evaluate_membership,
    membership_candidates,
    membership_summary,
    patient_level,
    per_sample_gradients,
    per_sample_gradients_loop,
    reference_scores,
)
from engine.core.attack_metrics import better_than_chance, roc_summary, tpr_at_fpr
from engine.core.config import ConfigError
from engine.data.cohort import load_cohort
from engine.data.types import SliceSet
from engine.federation.inprocess import run_federation
from engine.federation.server_view import ServerView
from engine.learning.model import build_unet
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run


def test_reference_scores_rank_members_above_nonmembers():
    rng = np.random.default_rng(0)
    refs = rng.normal(0.0, 1.0, size=(3, 8, 40))
    target = rng.normal(0.0, 1.0, size=(3, 40))
    target[:, :20] += 3.0  # members: the target's signal stands out from the references
    for score in ("phi", "phi_pooled", "log"):
        s, degenerate = reference_scores(target, refs, score)
        assert not degenerate
        assert s[:20].mean() > s[20:].mean()
        assert roc_summary(s, np.arange(40) < 20, bootstrap=0)["auc"] > 0.95


def test_identical_views_are_degenerate_not_rounding_noise():
    # Every client "uploaded" the same aggregate (SecAgg in Flower): references equal the
    # target up to float32 rounding; the score must tie, never turn an ulp into an AUC.
    base = np.random.default_rng(1).normal(size=(2, 30)).astype(np.float32)
    refs = np.stack([base, base * np.float32(1 + 1e-7), base], axis=1)
    s, degenerate = reference_scores(base, refs, "phi")
    assert degenerate
    assert np.all(s == 0.5)
    assert roc_summary(s, np.arange(30) < 15, bootstrap=0)["auc"] == 0.5


def test_outlying_reference_is_dropped():
    refs = np.zeros((1, 12, 1))
    refs[0, :11, 0] = np.linspace(-1, 1, 11)
    refs[0, 11, 0] = 100.0  # far above μ+3σ of the others
    s_with, _ = reference_scores(np.array([[1.5]]), refs, "phi")
    s_without, _ = reference_scores(np.array([[1.5]]), refs[:, :11], "phi")
    assert s_with[0] == pytest.approx(s_without[0])


def test_tpr_at_fpr_reads_the_curve_without_interpolation():
    fpr = np.array([0.0, 0.0, 0.05, 0.2, 1.0])
    tpr = np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.1) == 0.6
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.3


def test_vectorised_per_sample_gradients_match_a_loop():
    torch.manual_seed(0)
    model = build_unet((4, 8), "instance", 1)
    mri, ct = torch.rand(5, 1, 32, 32), torch.rand(5, 1, 32, 32)
    fast = per_sample_gradients(model, mri, ct, "l1")
    slow = per_sample_gradients_loop(model, mri, ct, "l1")
    assert fast.shape == slow.shape == (5, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- end to end

SMALL = [
    "data.centers=3", "data.patients_per_center=2", "data.heldout_per_center=6",
    "data.slices_per_patient=6", "data.image_size=32", "model.channels=[8,16,32]",
    "model.num_res_units=1", "federation.rounds=6",
    "federation.lr=5e-3", "federation.server_view_rounds=[4,5,6]", "federation.local_epochs=30",
    "attacks.membership.enabled=true",
]


@pytest.fixture(scope="module")
def small_cohort():
    cfg = build_config("mia-paper", sets=SMALL)
    return cfg, load_cohort(cfg.data, cfg.seed)


def attack(run_dir, cfg, candidates, bootstrap=0):
    view = ServerView(run_dir)
    m = cfg.model
    payload = MembershipPayload([view[r] for r in view.rounds], candidates,
                                build_unet(tuple(m.channels), m.norm, m.num_res_units),
                                cfg.federation.loss)
    result = MembershipAttack().run(payload)
    evaluation = evaluate_membership(result, bootstrap=bootstrap)
    return evaluation | {"summary": membership_summary(evaluation, "fedmia-i/phi", "slice",
                                                       result.rounds,
                                                       result.individual_uploads),
                         "result": result}


def stratified_rank_p(result, attack_name: str) -> float:
    """Exact two-sided p-value of "members and non-members score alike" at patient level.

    The statistic is the sum over hospitals of the Mann–Whitney U of the patients' mean
    scores (members above non-members, ties half); its null distribution enumerates every
    relabelling that keeps each hospital's number of members (a stratified permutation test:
    exact whatever shifts one hospital's scores against another's, which pooling the
    hospitals' patients into one rank test would not be).
    """
    null = np.ones(1)  # null[t]: relabellings whose 2·(summed U) is t
    observed = 0
    for center, scores in result.scores[attack_name].items():
        ps, pm = patient_level(scores, result.members[center], result.patient_ids[center])
        diff = ps[:, None] - ps[None, :]
        wins = 2 * (diff > 0) + (diff == 0)  # 2·U contribution of patient i above patient j

        def twice_u(inside: np.ndarray, wins=wins) -> int:
            return int(wins[inside][:, ~inside].sum())

        here = np.zeros(2 * int(pm.sum()) * int((~pm).sum()) + 1)
        for idx in itertools.combinations(range(len(ps)), int(pm.sum())):
            inside = np.zeros(len(ps), dtype=bool)
            inside[list(idx)] = True
            here[twice_u(inside)] += 1
        null = np.convolve(null, here)
        observed += twice_u(pm)
    t = np.arange(len(null))
    mean = float((t * null).sum() / null.sum())
    extreme = np.abs(t - mean) >= abs(observed - mean) - 1e-9
    return float(null[extreme].sum() / null.sum())


def test_stratified_rank_p_on_hand_made_scores():
    from types import SimpleNamespace

    ids = np.repeat(np.arange(6), 2)  # 6 patients of 2 slices per hospital
    members = ids < 3
    perfect = {f"h{k}": np.where(members, 1.0, 0.0) + 0.01 * ids + 5 * k for k in range(3)}
    tied = {f"h{k}": np.zeros(12) for k in range(3)}

    def result(scores):
        return SimpleNamespace(scores={"a": scores}, members=dict.fromkeys(scores, members),
                               patient_ids=dict.fromkeys(scores, ids))

    # Every hospital separates perfectly: 1 of 20³ relabellings, either way round.
    assert stratified_rank_p(result(perfect), "a") == pytest.approx(2 / 20 ** 3)
    # One member/non-member pair swapped in one hospital: 4 relabellings as extreme.
    swapped = dict(perfect, h0=np.where(np.isin(ids, [2]), 0.5, perfect["h0"])
                   - np.where(np.isin(ids, [3]), -0.6, 0.0))
    assert stratified_rank_p(result(swapped), "a") == pytest.approx(8 / 20 ** 3)
    assert stratified_rank_p(result(tied), "a") == 1.0


@pytest.fixture(scope="module")
def plain_and_secure(small_cohort, tmp_path_factory):
    cfg, cohort = small_cohort
    out = {}
    for label, extra in (("plain", []), ("secagg", ["defenses.secure_aggregation=true"])):
        c = build_config("mia-paper", sets=[*SMALL, *extra])
        d = tmp_path_factory.mktemp(label)
        run_federation(c, cohort, run_dir=d)
        out[label] = (d, attack(d, c, membership_candidates(cohort, c.seed)))
    return out


def test_fedmia_finds_members_without_defense(plain_and_secure):
    _, ev = plain_and_secure["plain"]
    assert ev["fedmia-i/phi"]["pooled"]["auc"] > 0.8
    assert ev["fedmia-ii/phi"]["pooled"]["auc"] > 0.7


def test_secure_aggregation_hides_uploads_but_not_the_global_model(plain_and_secure,
                                                                   small_cohort):
    """Under secure aggregation the attacks on individual uploads find nothing: the stratified
    exact test over every candidate (2 members v 6 non-members per hospital) stays above
    1 % / 3 for each of the three attacks, a false alarm in at most 1 % of runs; the same test
    finds the members of the plain run (perfect separation would give p = 9e-5)."""
    cfg, cohort = small_cohort
    _, plain = plain_and_secure["plain"]
    _, secure = plain_and_secure["secagg"]
    everyone = membership_candidates(cohort, cfg.seed, balance=False)
    upload_attacks = ("fedmia-i/phi", "fedmia-ii/phi", "own_loss")
    level = 0.01 / len(upload_attacks)
    unbalanced = {label: attack(plain_and_secure[label][0], cfg, everyone)["result"]
                  for label in ("plain", "secagg")}
    for attack_name in upload_attacks:
        assert secure[attack_name]["pooled"]["auc"] < plain[attack_name]["pooled"]["auc"] - 0.2
        assert stratified_rank_p(unbalanced["secagg"], attack_name) >= level, attack_name
    assert stratified_rank_p(unbalanced["plain"], "fedmia-i/phi") < level
    # The released global model is the same with and without SecAgg (up to quantisation).
    assert secure["global_loss"]["pooled"]["auc"] == pytest.approx(
        plain["global_loss"]["pooled"]["auc"], abs=0.03)


def test_secure_aggregation_verdict_never_rests_on_per_hospital_fedmia(plain_and_secure):
    plain = plain_and_secure["plain"][1]["summary"]
    secure = plain_and_secure["secagg"][1]["summary"]
    assert plain["individual_uploads"] and plain["verdict_attack"] == "fedmia-i/phi"
    assert not secure["individual_uploads"] and secure["verdict_attack"] == "global_loss"
    assert secure["verdict"] == secure["verdicts"]["global_loss"]
    for attack_name in ("fedmia-i/phi", "fedmia-ii/phi", "fedmia-i/log"):
        assert set(secure["verdicts"][attack_name].values()) == {"not_applicable"}


# Family-wise false-alarm rate of the control: 1 %, split over the attacks it checks.
CONTROL_ALPHA = 0.01
CONTROL_ATTACKS = ("fedmia-i/phi", "fedmia-ii/phi", "global_loss", "own_loss")


def test_control_without_members_gives_chance(plain_and_secure, small_cohort):
    """'Members' that nobody trained on must not be found: catches evaluation leaks.

    Each hospital's 6 held-out patients are split 3 "members" / 3 non-members; no model saw
    any of them, so every relabelling is equally likely and the stratified exact test
    (:func:`stratified_rank_p`) is exact. The control passes unless some attack's p-value is
    below 1 % / 4 (Bonferroni over the 4 attacks): a false alarm in at most 1 % of runs, by
    construction. It can fail: members ranked above every non-member in each hospital give
    p = 2.5e-4, with one pair the other way round 1.0e-3
    (:func:`test_stratified_rank_p_on_hand_made_scores`).
    """
    cfg, cohort = small_cohort
    run_dir, _ = plain_and_secure["plain"]
    control = {}
    for c in cohort.centers:
        held = c.test.patients
        parts = [c.test.for_patient(p) for p in held]
        slices = SliceSet.concat(parts)
        fake_members = np.isin(slices.patient_ids, held[: len(held) // 2])
        control[c.name] = Candidates(slices, fake_members)
    ev = attack(run_dir, cfg, control)
    level = CONTROL_ALPHA / len(CONTROL_ATTACKS)
    for name in CONTROL_ATTACKS:
        assert stratified_rank_p(ev["result"], name) >= level, name


def test_run_folder_gets_mia_summary_and_roc_points(runs_dir):


    cfg = build_config("mia-paper", sets=[*SMALL, "federation.local_epochs=2",
                                          "data.heldout_per_center=2",
                                          "attacks.membership.bootstrap=200"])
    run = create_run(cfg)
    summary = execute(run)
    assert summary is not None, (run.path / "log.txt").read_text()
    mia = json.loads((run.path / "summary.json").read_text())["mia"]
    centers = {"center-0", "center-1", "center-2"}
    assert mia["attack"] == "fedmia-i/phi"
    assert set(mia["auc"]) == set(mia["auc_ci"]) == set(mia["degenerate"]) == centers
    for c in centers:
        lo, hi = mia["auc_ci"][c]
        assert lo <= mia["auc"][c] <= hi
        assert set(mia["tpr_at_fpr"][c]) == {"0.1", "0.01", "0.001"}
    assert set(mia["baselines"]) == {"global_loss", "own_loss"}
    assert set(mia["baselines"]["global_loss"]) == centers
    roc = json.loads((run.path / "mia" / "roc.json").read_text())
    assert set(roc["fedmia-i/phi"]) == centers | {"pooled"}
    assert roc["fedmia-i/phi"]["center-0"]["fpr"][-1] == 1.0


def test_membership_config_is_validated():

    with pytest.raises(ConfigError, match="needs a server view"):
        build_config("mia-paper", sets=["federation.server_view_rounds=none"])
    with pytest.raises(ConfigError, match="last:K"):
        build_config("mia-paper", sets=["attacks.membership.rounds=first"])
    with pytest.raises(ConfigError, match="must be one of"):
        build_config("mia-paper", sets=["attacks.membership.variant=fedmia-ii",
                                        "attacks.membership.variants=[fedmia-i]"])


def test_intervals_resample_patients_not_slices():
    """Two patients per side, 20 nearly identical slices each: slices look like evidence, but
    resampling patients shows how little two patients can show."""
    rng = np.random.default_rng(0)
    patient_level_scores = [0.9, 0.3, 0.6, 0.2]  # members: p0, p1; non-members: p2, p3
    scores = np.concatenate([v + 0.01 * rng.normal(size=20) for v in patient_level_scores])
    members = np.repeat([True, True, False, False], 20)
    groups = np.repeat(["p0", "p1", "p2", "p3"], 20)
    by_slice = roc_summary(scores, members, bootstrap=2000)
    by_patient = roc_summary(scores, members, groups=groups, bootstrap=2000)
    assert by_slice["auc"] == by_patient["auc"] == pytest.approx(0.75)
    width = by_patient["auc_ci"][1] - by_patient["auc_ci"][0]
    assert width > 3 * (by_slice["auc_ci"][1] - by_slice["auc_ci"][0])
    assert by_patient["auc_ci"][0] <= 0.5 <= by_patient["auc_ci"][1]
    assert by_patient["n_member_groups"] == by_patient["n_nonmember_groups"] == 2


def test_tpr_is_given_only_where_the_nonmember_patients_resolve_it():
    rng = np.random.default_rng(1)
    s = rng.normal(size=36)
    r = roc_summary(s, np.arange(36) < 20, bootstrap=0)  # 16 non-members
    assert r["tpr_at_fpr"]["0.1"] is not None
    assert r["tpr_at_fpr"]["0.01"] is None and r["tpr_at_fpr"]["0.001"] is None
    assert r["tpr_min_nonmembers"] == {"0.1": 10, "0.01": 100, "0.001": 1000}
    # 40 non-member slices from 8 patients: an FPR of 10 % is not one patient in ten.
    s = rng.normal(size=80)
    patients = np.repeat(np.arange(16), 5)
    grouped = roc_summary(s, patients < 8, groups=patients, bootstrap=0)
    assert grouped["n_nonmembers"] == 40 and grouped["tpr_at_fpr"]["0.1"] is None
    ten = roc_summary(np.repeat(s[:20], 5), np.repeat(np.arange(20) < 10, 5),
                      groups=np.repeat(np.arange(20), 5), bootstrap=0)
    assert ten["tpr_at_fpr"]["0.1"] is not None  # 10 non-member patients resolve 10 %


def test_perfect_separation_of_two_patients_is_no_evidence():
    """2 against 2 patients, perfectly separated: the bootstrap interval is [1, 1], but the
    exact rank test knows that 1 in 6 labellings does that by chance."""

    two = roc_summary(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0], bool),
                      bootstrap=500)
    assert two["auc"] == 1.0 and two["auc_ci"] == [1.0, 1.0]
    assert two["p_value"] == pytest.approx(1 / 6) and not better_than_chance(two)
    eight = roc_summary(np.arange(16.0), np.arange(16) >= 8, bootstrap=500, family=5)
    assert eight["p_value"] < 0.01 / 5 and better_than_chance(eight)
