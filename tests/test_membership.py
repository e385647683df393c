"""Membership inference: score math on hand-made arrays, vectorised gradients, and the
attack end to end on a small federation (plain, SecAgg, and a control without members)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attacks.membership import (
    Candidates,
    MembershipAttack,
    MembershipPayload,
    evaluate_membership,
    membership_candidates,
    per_sample_gradients,
    per_sample_gradients_loop,
    reference_scores,
)
from engine.config import build_config
from engine.data.cohort import load_cohort
from engine.data.types import SliceSet
from engine.federation.inprocess import run_federation
from engine.federation.server_view import ServerView
from engine.metrics import roc_summary, tpr_at_fpr
from engine.model import build_unet


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
    "federation.lr=5e-3", "federation.server_view_rounds=[4,5,6]", "federation.local_epochs=20",
    "attacks.membership.enabled=true",
]


@pytest.fixture(scope="module")
def small_cohort():
    cfg = build_config("mia-paper", sets=SMALL)
    return cfg, load_cohort(cfg.data, cfg.seed)


def attack(run_dir, cfg, candidates):
    view = ServerView(run_dir)
    m = cfg.model
    payload = MembershipPayload([view[r] for r in view.rounds], candidates,
                                build_unet(tuple(m.channels), m.norm, m.num_res_units),
                                cfg.federation.loss)
    return evaluate_membership(MembershipAttack().run(payload), bootstrap=0)


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


def test_secure_aggregation_hides_uploads_but_not_the_global_model(plain_and_secure):
    _, plain = plain_and_secure["plain"]
    _, secure = plain_and_secure["secagg"]
    for attack_name in ("fedmia-i/phi", "fedmia-ii/phi", "own_loss"):
        assert secure[attack_name]["pooled"]["auc"] < plain[attack_name]["pooled"]["auc"] - 0.2
        assert abs(secure[attack_name]["pooled"]["auc"] - 0.5) < 0.3
    # The released global model is the same with and without SecAgg (up to quantisation).
    assert secure["global_loss"]["pooled"]["auc"] == pytest.approx(
        plain["global_loss"]["pooled"]["auc"], abs=0.03)


def test_control_without_members_gives_chance(plain_and_secure, small_cohort):
    """'Members' that nobody trained on must not be found: catches evaluation leaks."""
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
    for name in ("fedmia-i/phi", "fedmia-ii/phi", "global_loss", "own_loss"):
        assert abs(ev[name]["pooled"]["auc"] - 0.5) < 0.2, (name, ev[name]["pooled"]["auc"])


def test_run_folder_gets_mia_summary_and_roc_points(runs_dir):
    import json

    from engine.experiment import execute
    from engine.runs import create_run

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
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="needs a server view"):
        build_config("mia-paper", sets=["federation.server_view_rounds=none"])
    with pytest.raises(ConfigError, match="last:K"):
        build_config("mia-paper", sets=["attacks.membership.rounds=first"])
    with pytest.raises(ConfigError, match="must be one of"):
        build_config("mia-paper", sets=["attacks.membership.variant=fedmia-ii",
                                        "attacks.membership.variants=[fedmia-i]"])
