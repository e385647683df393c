"""``fedsct study``: every cell valid at every scale, and a small study (one cell per kind of
analysis, real runs) that writes the report from the runs' own numbers and resumes by
reusing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.analyses.results import parse_summary
from engine.analyses.study_report import ANALYSES, STUDY, bootstrap_mean_ci
from engine.core.config import ConfigError
from engine.orchestration import study
from engine.orchestration.cli import main as cli_main
from engine.orchestration.presets import build_config
from engine.orchestration.study_catalogue import STUDY_SCALES, study_cells
from engine.orchestration.sweep_catalogue import Cell

pytestmark = pytest.mark.timeout(900)

TINY = [
    ("quality", Cell("smoke", ["name=quality"], [
        "name=quality", "data.unseen_center=true", "data.unseen_patients=2",
        "data.heldout_per_center=2", "data.slices_per_patient=8", "federation.rounds=2",
        "evaluation.volumetric=true"])),
    ("membership", Cell("smoke", ["name=mia"], [
        "name=mia", "federation.rounds=2", "attacks.membership.enabled=true"])),
    ("dlg", Cell("dlg-paper", ["name=dlg"], [
        "name=dlg", "data.image_size=32", "model.channels=[8,16,32]",
        "model.num_res_units=1", "attacks.inversion.iterations=2",
        "attacks.inversion.target_center=0"])),
    *[("poisoning", Cell("poison-base", own, [*own, "federation.rounds=2"])) for own in (
        ["federation.aggregator=fedavg"], ["federation.aggregator=fedmedian"],
        *[[f"federation.aggregator={rule}", "attacks.poisoning.enabled=true",
           "attacks.poisoning.kind=update_noise", f"attacks.poisoning.noise_std={std}",
           f"attacks.poisoning.malicious_centers=[{bad}]"]
          for rule in ("fedavg", "fedmedian") for std in (0.03, 0.3) for bad in (0, 1)])],
    *[("backdoor", Cell("backdoor-demo", own, [*own, "federation.rounds=4"]))
      for own in ([f"seed={seed}"] for seed in (0, 1))],
    ("backdoor", Cell("backdoor-demo", ["defenses.flame=true"],
                      ["defenses.flame=true", "federation.rounds=4"])),
    *[("breakdown", Cell("hospitals-8", own, [*own, "federation.rounds=2"])) for own in (
        ["federation.aggregator=fedmedian"], ["federation.aggregator=fedavg"],
        *[[f"federation.aggregator={rule}", "attacks.poisoning.enabled=true",
           "attacks.poisoning.kind=min_max", "attacks.poisoning.malicious_centers=[0]"]
          for rule in ("fedavg", "fedmedian")])],
    *[("frontier", Cell("dp-frontier", own, [*own, "federation.rounds=2",
                                             "federation.server_view_rounds=all"]))
      for own in (["defenses.dp.enabled=false"], ["defenses.dp.target_epsilon=8.0"])],
    *[("frontier-patients", Cell("dp-frontier-patients", own, [
        *own, "federation.rounds=2", "data.centers=2", "data.heldout_per_center=2",
        "federation.batch_size=4", "federation.server_view_rounds=all"]))
      for own in (["data.patients_per_center=8", "defenses.dp.enabled=false"],
                  ["data.patients_per_center=8", "defenses.dp.target_epsilon=8.0"])],
]


@pytest.mark.parametrize("scale", STUDY_SCALES)
def test_every_cell_of_every_scale_is_a_valid_experiment(scale: str) -> None:
    cells = study_cells(scale)
    parts = [p for p, _ in cells]
    assert parts[:6] == ["quality", "membership", "membership-secagg", "membership-evidence",
                         "dlg", "strongest-inversion"]
    beyond = {"breakdown": (6, 480), "backdoor": (3, 60), "frontier": (2, 27),
              "frontier-patients": (2, 21)}
    for part, (demo, other) in beyond.items():
        assert parts.count(part) == (demo if scale == "demo" else other)
    assert parts.count("poisoning") == 140
    assert len(cells) == 6 + 140 + sum(parts.count(p) for p in beyond)
    configs = [build_config(c.preset, sets=c.sets) for _, c in cells]
    assert configs[0].evaluation.volumetric
    assert configs[2].defenses.secure_aggregation and configs[4].attacks.inversion.method == "dlg"
    assert all(c.attacks.backdoor.enabled for c, p in zip(configs, parts, strict=True)
               if p == "backdoor")
    assert all(c.data.centers == 8 for c, p in zip(configs, parts, strict=True)
               if p == "breakdown")
    assert all(c.data.centers == 16 and c.defenses.dp.level == "server"
               for c, p in zip(configs, parts, strict=True) if p == "frontier")
    assert all(c.data.centers == 8 and c.defenses.dp.level == "sample"
               for c, p in zip(configs, parts, strict=True) if p == "frontier-patients")
    if scale == "full":  # the parts beyond the study keep their sweeps' own size
        assert {c.data.image_size for c, p in zip(configs, parts, strict=True)
                if p not in beyond} == {256}


@pytest.mark.parametrize("scale", STUDY_SCALES)
def test_the_study_folder_is_the_same_in_every_process(scale: str, tmp_path: Path) -> None:
    """``fedsct study`` resumes by finding its folder again, from a new process: the name
    must not depend on anything a process draws at start (string hashing, set order)."""
    code = ("import sys; from engine.orchestration.study import study_folder; "
            "print(study_folder(sys.argv[1], sys.argv[2]))")
    seen = {subprocess.run([sys.executable, "-c", code, scale, str(tmp_path)], check=True,
                           capture_output=True, text=True,
                           env=os.environ | {"PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("0", "random")}
    assert seen == {str(study.study_folder(scale, tmp_path))}


def test_an_unknown_scale_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown study scale 'huge'"):
        study_cells("huge")


def test_a_small_study_reports_its_runs_numbers_and_resumes(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(study, "study_cells", lambda scale: TINY)
    assert cli_main(["study", "--scale", "demo"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    state = json.loads((folder / "sweep.json").read_text())
    assert state["state"] == "done" and state["trained"] == len(TINY)
    summaries = {c["label"]: parse_summary(json.loads(
        (runs_dir / c["run_id"] / "summary.json").read_text())) for c in state["cells"]}
    report = (folder / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| Analysis")}

    quality = summaries["name=quality"].federation
    row = rows["sCT quality, held-out patients of the training hospitals"]
    assert f"MAE {quality.final.mae_hu:.0f} HU" in row
    assert f"volumetric (challenge's convention): MAE {quality.final_volumetric.mae_hu:.0f}" in row
    assert STUDY["quality"] in row and "patients resampled" in row
    assert f"MAE {quality.unseen_center.mae_hu:.0f} HU" in rows[
        "sCT quality, an unseen hospital"]

    mia = summaries["name=mia"].mia
    row = rows["Membership inference (FedMIA), no defense"]
    slice_aucs = mia.variants[mia.verdict_attack or mia.attack].auc
    assert f"{min(slice_aucs.values()):.2f}–{max(slice_aucs.values()):.2f}" in row
    assert STUDY["membership"] in row and "95 % interval" in row

    inv = summaries["name=dlg"].inversion
    row = rows["Gradient inversion: the study's DLG"]
    assert f"SSIM ≤ {max(c.ssim for c in inv.per_client.values()):.2f}" in row
    assert "DLG, 2 × 20 iterations" in row and "calibration control" in row

    high = rows["Poisoning, high noise on one upload or two"]
    low = rows["Poisoning, low noise"]
    for rule in ("fedavg", "fedmedian"):
        ratios = [s.poisoning.cells[0].mae_ratio for label, s in summaries.items()
                  if s.poisoning and s.federation.aggregator == rule
                  and s.poisoning.noise_std == 0.3]
        assert f"{rule}: {min(ratios):.2f}–{max(ratios):.2f}×" in high
    assert "2 configurations per rule" in high and "σ 0.03" in low

    # Beyond the study: the backdoor per defense, pooled over seeds.
    row = rows["Backdoor (a trigger that shifts the sCT), model replacement, 1 attacker of 4"]
    fedavg = [summaries[f"seed={seed}"].backdoor for seed in (0, 1)]
    shifts = [b.success_hu for b in fedavg]
    assert f"FedAvg: {sum(shifts) / 2:.0f} HU (" in row
    assert (f"{sum(b.patients_backdoored for b in fedavg)} of "
            f"{sum(b.patients for b in fedavg)} patients backdoored") in row
    flame = summaries["flame=true"].backdoor
    assert f"FLAME: {flame.success_hu:.0f} HU, " in row and "2 seeds per defense" in row
    assert "beyond the published study" in row and "+1000 HU in the trigger region" in row

    # The strongest attacker per rule, and DP with 16 hospitals.
    row = rows[ANALYSES["breakdown"]]
    median = summaries["aggregator=fedmedian, enabled=true, kind=min_max, "
                       "malicious_centers=[0]"].poisoning
    assert f"FedMedian: ×{median.cells[0].mae_ratio:.2f} with 1 attacker (min_max)" in row
    assert "8 hospitals" in row
    row = rows[ANALYSES["frontier"]]
    eps = summaries["target_epsilon=8.0"].federation.dp.epsilon
    assert f"ε {eps:.3g}: error ×" in row and "16 hospitals" in row
    assert "Smallest ε within 1.5× the error without DP: " in row
    row = rows[ANALYSES["frontier-patients"]]
    eps = summaries["patients_per_center=8, target_epsilon=8.0"].federation.dp.epsilon
    assert f"ε {eps:.3g}: error ×" in row and "2 hospitals of 8 patients" in row
    assert "DP-SGD in each hospital" in row and "AUC on the uploads" in row
    assert (folder / "report.html").read_text().count("<tr>") == len(rows) + 1

    # Run again: nothing is trained, the same runs are used.
    assert cli_main(["study", "--scale", "demo"]) == 0
    again = json.loads((folder / "sweep.json").read_text())
    assert again["trained"] == 0
    assert [c["run_id"] for c in again["cells"]] == [c["run_id"] for c in state["cells"]]


def test_the_bootstrap_interval_resamples_the_values() -> None:
    lo, hi = bootstrap_mean_ci([100.0, 110.0, 120.0, 130.0])
    assert 100.0 <= lo < 115.0 < hi <= 130.0
    assert bootstrap_mean_ci([100.0]) is None
