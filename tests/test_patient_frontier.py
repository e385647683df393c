"""The frontier of patient-level DP-SGD: its preset's accounting, the point ε ∞ (DP's
clipping and sampling without noise), the cells in words, and the Membership page."""

from __future__ import annotations

import math

import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from app.views.frontier import attack_sentence, caption, cell_words, frontier_sentence
from app.views.report import study_cell_words
from engine.analyses.frontier import epsilon_label, frontier, smallest_useful_epsilon
from engine.analyses.sweep_table import SweepRow
from engine.clients.dp import planned_accounting
from engine.core.config import ConfigError
from engine.orchestration.presets import build_config
from engine.orchestration.sweep_catalogue import sweep_cells


def test_the_preset_samples_a_quarter_of_many_patients_each_step() -> None:
    cfg = build_config("dp-frontier-patients")
    acc = planned_accounting(cfg)
    assert (cfg.data.centers, cfg.data.patients_per_center) == (8, 256)
    assert acc.level == "sample" and acc.sample_rate == 0.25 and acc.steps_per_round == 4
    # 64 patients a step in expectation: the noise's weight on each is what the preset buys.
    assert acc.sample_rate * cfg.data.patients_per_center == 64
    # Opacus's RDP analysis, called directly on the preset's σ, q and steps, gives ε 8.
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=0.25, noise_multiplier=acc.noise_multiplier, steps=80, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert eps == pytest.approx(8.0, rel=0.01)
    assert acc.epsilon(cfg.federation.rounds) == pytest.approx(eps, rel=1e-6)


def test_more_patients_than_the_limit_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="data.patients_per_center = 257"):
        build_config("dp-frontier-patients", sets=["data.patients_per_center=257"])


def _rows() -> list[SweepRow]:
    """No DP: 300, 200, 100 HU; ε ∞ ×1.2; ε 16 ×1.4 (ratios 1.3, 1.4, 1.5); ε 1 ×3.
    Membership AUC 0.8 on the uploads and 0.7 on the released models without DP, 0.5 with."""
    rows = []
    for eps, factors in ((None, (1.0,) * 3), (math.nan, (1.2,) * 3),
                         (16.0, (1.3, 1.4, 1.5)), (1.0, (3.0,) * 3)):
        for seed, (mae, factor) in enumerate(zip((300.0, 200.0, 100.0), factors, strict=True)):
            plain, free = eps is None, eps is not None and math.isnan(eps)
            cell = ("enabled=false" if plain else
                    "level=sample, target_epsilon=null, noise_multiplier=0" if free
                    else f"level=sample, target_epsilon={eps}")
            rows.append(SweepRow(
                cell=f"{cell}, seed={seed}", dp_enabled=not plain, dp_level="sample",
                epsilon=None if plain or free else eps, mae_hu=mae * factor,
                patient_auc_pooled=0.8 if plain else 0.5,
                global_patient_auc_pooled=0.7 if plain else 0.5))
    return rows


def test_dp_without_noise_is_its_own_point_and_never_the_smallest_useful_epsilon() -> None:
    points = frontier(_rows())
    assert [epsilon_label(p.epsilon) for p in points] == ["no DP", "ε ∞", "ε 16", "ε 1"]
    assert points[1].ratio == pytest.approx(1.2) and points[2].ratio == pytest.approx(1.4)
    assert smallest_useful_epsilon(points).epsilon == 16.0
    # Only ε ∞ within 1.5×: no finite ε is useful.
    assert smallest_useful_epsilon([points[0], points[1], points[3]]) is None


def test_the_sweep_cells_and_the_study_cells_read_in_words() -> None:
    words = [cell_words(c.label) for c in sweep_cells("dp-frontier-patients")]
    assert words[:4] == ["without DP, seed 0", "without DP, seed 1", "without DP, seed 2",
                         "patient-level DP-SGD without noise (ε ∞), seed 0"]
    assert words[-1] == "patient-level DP-SGD at ε 1.0, seed 2" and len(words) == 21
    assert study_cell_words("level=sample, target_epsilon=8.0, seed=0") == (
        "patient-level DP-SGD at ε 8.0, seed 0")
    assert cell_words(sweep_cells("dp-frontier")[3].label) == "server-side DP at ε 1024.0, seed 0"


def test_the_sentences_say_the_noise_covers_the_uploads_at_patient_level() -> None:
    points = frontier(_rows())
    said = attack_sentence(points, "sample")
    assert said == ("FedMIA on the uploads: AUC 0.80 without DP, 0.50 at ε ∞, 0.50 at ε 16, "
                    "0.50 at ε 1. The attack on the released models: AUC 0.70 without DP, "
                    "0.50 at ε ∞, 0.50 at ε 16, 0.50 at ε 1.")
    assert "does not protect patients from the server" in attack_sentence(points, "server")
    # Without DP both attacks near guessing: the study cannot show what the noise protects.
    blind = [SweepRow(cell=r.cell, dp_enabled=r.dp_enabled, epsilon=r.epsilon, mae_hu=r.mae_hu,
                      patient_auc_pooled=0.55, global_patient_auc_pooled=0.52) for r in _rows()]
    assert "cannot show what the noise protects" in attack_sentence(frontier(blind), "sample")
    assert frontier_sentence(points, "8 hospitals of 256 patients").startswith(
        "With 8 hospitals of 256 patients, the smallest ε that keeps the model within 1.5× of "
        "its error without DP is **16**")
    # ε ∞ within 1.5× and no finite ε: it is not an ε tried, and its cost is said apart.
    only_free = frontier([r for r in _rows() if r.epsilon != 16.0])
    assert frontier_sentence(only_free, "8 hospitals of 256 patients") == (
        "With 8 hospitals of 256 patients, no ε tried (ε 1) keeps the model within 1.5× of its "
        "error without DP (3 seeds each). Without noise (ε ∞: the clipping and sampling alone) "
        "the error is ×1.20.")


def test_the_membership_page_draws_the_patient_level_frontier(finished_study) -> None:
    at = finished_study("dp-frontier-patients", _rows(), "membership.py")
    assert any(caption("sample") == c.value for c in at.caption)
    markdown = [m.value for m in at.markdown]
    assert any(m.startswith("With 8 hospitals of 256 patients, the smallest ε") for m in markdown)
    assert any(m.startswith("FedMIA on the uploads: AUC 0.80 without DP") for m in markdown)
