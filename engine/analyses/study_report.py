"""The study report: each analysis of a ``fedsct study`` beside the figure the FedSynthCT-Brain
security analysis published, with the sample it rests on, its interval and the attack's
budget. Written as Markdown (``report.md``) and a self-contained HTML page (``report.html``).

Pure functions of the runs' summaries (``summary.json`` dicts); the runs themselves are made
by :mod:`engine.orchestration.study`.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.analyses.backdoor import defense_name
from engine.analyses.breakdown import breakdown, worst_cases
from engine.analyses.frontier import (
    USEFUL,
    epsilon_label,
    frontier,
    smallest_useful_epsilon,
)
from engine.analyses.poisoning import mean_interval
from engine.analyses.results import (
    BackdoorSummary,
    InversionSummary,
    MiaSummary,
    RunSummary,
    parse_summary,
)
from engine.analyses.sweep_table import SweepRow
from engine.clients.dp import MEANINGFUL_EPSILON
from engine.core.config.robust import rule_words

# What the study published (abstract of the FedSynthCT-Brain security analysis; sCT quality
# from FedSynthCT-Brain itself, on real brain MRI/CT).
STUDY = {
    "quality": "MAE 102 HU, PSNR 26.6 dB, SSIM 0.89 (real patients, volumetric)",
    "quality-unseen": "not in the abstract",
    "membership": "FedMIA AUC 0.92–0.99 across centers",
    "membership-secagg": "AUC 0.23–0.56 with SecAgg, synthesis quality unchanged",
    "membership-evidence": "— (the study's sample)",
    "dlg": "coarse anatomy only: SSIM ≤ 0.16, PSNR ≤ 11 dB across clients",
    "strongest-inversion": "— (only DLG was evaluated)",
    "poisoning-high": "FedAvg inoperative; FedMedian close to the clean baseline in most "
                      "configurations, with residual harm in some",
    "poisoning-low": "FedMedian's advantage less consistent; low noise can pass for natural "
                     "differences between centers",
}
BEYOND = "— (beyond the published study)"
BACKDOOR_ATTACKS = {"model_replacement": "model replacement", "data": "backdoored data only",
                    "constrain_scale": "constrain-and-scale"}
ANALYSES = {
    "quality": "sCT quality, held-out patients of the training hospitals",
    "quality-unseen": "sCT quality, an unseen hospital",
    "membership": "Membership inference (FedMIA), no defense",
    "membership-secagg": "Membership inference with secure aggregation",
    "membership-evidence": "Membership inference, enough patients for a verdict",
    "dlg": "Gradient inversion: the study's DLG",
    "strongest-inversion": "Gradient inversion: the strongest attack",
    "poisoning-high": "Poisoning, high noise on one upload or two",
    "poisoning-low": "Poisoning, low noise",
    "breakdown": "Poisoning, the strongest adaptive attacker against each rule, up to its "
                 "breakdown point",
    "frontier": "Server-side differential privacy with many hospitals: error and membership "
                "against ε",
    "frontier-patients": "Patient-level DP-SGD with many patients per hospital: error and "
                         "membership against ε",
    **{f"backdoor-{a}-{n}": f"Backdoor (a trigger that shifts the sCT), {words}, {n} "
                            f"attacker{'s' if n > 1 else ''} of 4"
       for a, words in BACKDOOR_ATTACKS.items() for n in (1, 2)},
}
BOOTSTRAP = 2000
VERDICT_WORDS = {"leak": "leak", "no_leak": "no leak", "inconclusive": "inconclusive",
                 "risk": "risk", "no_evidence": "no evidence at this sample size",
                 "not_applicable": "not applicable"}


@dataclass
class StudyRow:
    """One line of the report."""

    key: str
    ours: str
    study: str
    sample: str
    attack: str
    runs: list[str]

    @property
    def analysis(self) -> str:
        return ANALYSES[self.key]

    @property
    def published(self) -> str:
        return self.study or BEYOND


def bootstrap_mean_ci(values: list[float], seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of the mean, resampling the values (patients)."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=float)
    means = data[rng.integers(0, len(data), (BOOTSTRAP, len(data)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _interval(ci: Any, digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "no interval"


def _quality(s: RunSummary, run_id: str) -> list[StudyRow]:
    fed = s.federation
    rows = []
    for key, sliced, volume in (("quality", fed.final, fed.final_volumetric),
                                ("quality-unseen", fed.unseen_center,
                                 fed.unseen_center_volumetric)):
        if sliced is None:
            continue
        ours = (f"per slice: MAE {sliced.mae_hu:.0f} HU, PSNR {sliced.psnr_db:.1f} dB, "
                f"SSIM {sliced.ssim:.2f}")
        sample = "held-out slices"
        if volume is not None:
            ours += (f"; volumetric (challenge's convention): MAE {volume.mae_hu:.0f} HU, "
                     f"PSNR {volume.psnr_db:.1f} dB, SSIM {volume.ssim:.2f}")
            maes = [m.mae_hu for m in volume.patients.values()]
            if not maes and hasattr(volume, "per_center"):
                maes = [m.mae_hu for g in volume.per_center.values()
                        for m in g.patients.values()]
            ci = bootstrap_mean_ci(maes)
            sample = (f"{len(maes)} patients; volumetric MAE 95 % interval "
                      f"{_interval(ci, 0)} HU (patients resampled)")
        rows.append(StudyRow(key, ours, STUDY[key], sample, "—", [run_id]))
    return rows


def _membership(key: str, mia: MiaSummary, run_id: str) -> StudyRow:
    attack = mia.verdict_attack or mia.attack
    figures = mia.figures(attack)
    slice_aucs = mia.variants[attack].auc if attack in mia.variants else mia.auc
    pooled = figures.pooled
    ours = (f"slice-level AUC {min(slice_aucs.values()):.2f}–{max(slice_aucs.values()):.2f} "
            "across hospitals" if slice_aucs else "no slice-level AUC")
    if pooled.auc is not None:
        ours += f"; patient-level AUC {pooled.auc:.2f} (all hospitals)"
    verdict = (mia.verdict or {}).get("overall")
    ours += f"; verdict: {VERDICT_WORDS.get(verdict or '', verdict or 'none')}"
    n = pooled.n
    sample = (f"{n.members} member vs {n.nonmembers} non-member patients; patient-level "
              f"95 % interval {_interval(pooled.auc_ci)} (patients resampled)"
              + (f", p = {pooled.p_value:.2g}" if pooled.p_value is not None else ""))
    budget = (f"{attack} on rounds {mia.rounds[0]}–{mia.rounds[-1]}" if mia.rounds
              else attack)
    if not mia.individual_uploads:
        budget += " (individual uploads masked: the attack uses the global model)"
    return StudyRow(key, ours, STUDY[key], sample, budget, [run_id])


def _inversion(key: str, inv: InversionSummary, run_id: str) -> StudyRow:
    per = inv.per_client
    best_ssim = max((c.ssim for c in per.values()), default=inv.ssim)
    best_psnr = max((c.psnr_db for c in per.values()), default=inv.psnr_db)
    gains = {c: v.ssim_body - v.floor_ssim_body for c, v in per.items()}
    worst = max(gains, key=gains.__getitem__) if gains else None
    ours = f"whole image SSIM ≤ {best_ssim:.2f}, PSNR ≤ {best_psnr:.1f} dB across hospitals"
    if worst:
        ours += (f"; best body SSIM {per[worst].ssim_body:.2f} vs {per[worst].floor_ssim_body:.2f}"
                 " for the attacker's average brain")
    ours += f"; verdict: {VERDICT_WORDS.get(inv.verdict or '', inv.verdict or 'none')}"
    cal = inv.calibration
    if cal is not None:
        ours += (f" (calibration control {'rebuilt' if cal.recovered else 'not rebuilt'}: "
                 f"{cal.ssim_body:.2f} vs {cal.floor_ssim_body:.2f})")
    slices = sum(c.n for c in per.values())
    sample = f"{len(per)} hospitals, {slices} slices"
    inner = f" × {inv.inner_iterations}" if inv.inner_iterations else ""
    budget = (f"{inv.method.upper()}, {inv.iterations}{inner} iterations, {inv.restarts} "
              f"restart{'s' if inv.restarts != 1 else ''}")
    if inv.observed == "aggregate":
        sample = f"every hospital's slices at once ({slices})"
        budget += " (individual uploads masked: the attack inverts the round's aggregate)"
    return StudyRow(key, ours, STUDY[key], sample, budget, [run_id])


def _poisoning(cells: list[tuple[str, RunSummary]]) -> list[StudyRow]:
    """High and low noise: the error ratio (attacked ÷ clean MAE) per rule, as a range over
    malicious-center configurations and both noise kinds."""
    by_level: dict[str, dict[str, list[tuple[float, str]]]] = {"high": {}, "low": {}}
    stds: dict[str, set[float]] = {}
    for _, s in cells:
        poison = s.poisoning
        if poison is None or not poison.cells:
            continue
        stds.setdefault(poison.kind, set()).add(poison.noise_std)
    for run_id, s in cells:
        poison = s.poisoning
        if poison is None or not poison.cells:
            continue
        level = "high" if poison.noise_std == max(stds[poison.kind]) else "low"
        by_level[level].setdefault(s.rule, []).append((poison.cells[0].mae_ratio, run_id))
    rows = []
    for level, rules in by_level.items():
        if not rules:
            continue
        parts, runs, n = [], [], 0
        for rule, ratios in rules.items():
            values = [r for r, _ in ratios]
            parts.append(f"{rule}: {min(values):.2f}–{max(values):.2f}× the clean error "
                         f"(median {float(np.median(values)):.2f}×)")
            runs += [rid for _, rid in ratios]
            n = max(n, len(values))
        rows.append(StudyRow(
            f"poisoning-{level}", "; ".join(parts), STUDY[f"poisoning-{level}"],
            f"{n} configurations per rule (malicious centers × noise on data or upload); "
            "range over configurations", "noise σ " + ", ".join(
                f"{max(v) if level == 'high' else min(v):g} ({k})" for k, v in stds.items()),
            runs))
    return rows


def _backdoor(cells: list[tuple[str, RunSummary]]) -> list[StudyRow]:
    """Per attack and number of attackers: each defense's mean shift under the trigger over
    seeds (Student-t interval), the patients backdoored over all seeds and the verdicts."""
    groups: dict[tuple[str, int], dict[str, list[tuple[str, BackdoorSummary]]]] = {}
    for run_id, s in cells:
        bd = s.backdoor
        if bd is None or bd.attack not in BACKDOOR_ATTACKS:
            continue
        d = s.config.get("defenses", {})
        dp = d.get("dp", {})
        defense = defense_name(s.rule, d.get("update_clip"), d.get("flame"),
                               fltrust=d.get("fltrust"),
                               dp_level=dp.get("level") if dp.get("enabled") else None)
        groups.setdefault((bd.attack, len(bd.malicious)), {}).setdefault(
            defense, []).append((run_id, bd))
    rows = []
    for (attack, attackers), defenses in groups.items():
        parts, runs, seeds, example = [], [], 0, None
        for defense, group in defenses.items():
            shifts = [bd.success_hu for _, bd in group if bd.success_hu is not None]
            ci = mean_interval(shifts)
            verdicts = Counter(bd.verdict for _, bd in group)
            parts.append(
                f"{defense}: {np.mean(shifts):.0f} HU" + (f" ({ci[0]:.0f}–{ci[1]:.0f})" if ci
                                                          else "")
                + f", {sum(bd.patients_backdoored for _, bd in group)} of "
                f"{sum(bd.patients for _, bd in group)} patients backdoored ("
                + ", ".join(f"{k} ×{v}" for k, v in verdicts.items()) + ")")
            runs += [rid for rid, _ in group]
            seeds, example = max(seeds, len(group)), group[0][1]
        rows.append(StudyRow(
            f"backdoor-{attack}-{attackers}", "; ".join(parts), "",
            f"{seeds} seed{'s' if seeds > 1 else ''} per defense × {example.patients} "
            "held-out and unseen patients; mean shift with a 95 % t-interval over seeds; each "
            "run against its clean federation (exact sign test over patients) and, defended, "
            "the same attack against FedAvg",
            f"a {example.trigger.get('kind', 'patch')} trigger, CT {example.shift_hu:+.0f} HU "
            f"in the {example.target_region} region, {BACKDOOR_ATTACKS[attack]}"
            + (f" ×{example.boost:g}" if example.boost else "")
            + f"; backdoored = region moved ≥ {example.threshold_hu:.0f} HU", runs))
    return rows


def _breakdown(cells: list[tuple[str, RunSummary]]) -> list[StudyRow]:
    """Each rule against its worst attack over the attackers tried (ratio over seeds)."""
    rows = [SweepRow(aggregator=s.federation.aggregator, poison_kind=s.poisoning.kind,
                     pre_aggregator=s.config.get("federation", {}).get("pre_aggregator"),
                     malicious=" ".join(s.poisoning.malicious_names),
                     mae_ratio=s.poisoning.cells[0].mae_ratio)
            for _, s in cells if s.poisoning is not None and s.poisoning.cells]
    found = breakdown(rows)
    if not found:
        return []
    worst = worst_cases(found)
    seeds = max(len(c.strongest.ratios) for c in found)
    hospitals = max(len(s.federation.per_center) for _, s in cells) or "?"
    ours = "; ".join(
        f"{rule_words(rule)}: ×{c.strongest.mean:.2f}"
        + (f" [{c.strongest.interval[0]:.2f}, {c.strongest.interval[1]:.2f}]"
           if c.strongest.interval else "")
        + f" with {c.attackers} attacker{'s' if c.attackers > 1 else ''} ({c.strongest.kind}):"
        f" {c.verdict.replace('_', ' ')}" for rule, c in worst.items())
    kinds = sorted({a.kind for c in found for a in c.attacks})
    return [StudyRow(
        "breakdown", ours, "",
        f"{hospitals} hospitals; up to {seeds} seed{'s' if seeds > 1 else ''} per cell; final "
        "error ÷ the same federation's without attackers, 95 % t-interval over seeds; a rule "
        "holds only where an attack it stopped hurt FedAvg beyond 1.25× at every seed",
        "attackers who see the round's honest updates: " + ", ".join(kinds)
        + "; the strongest per rule and number of attackers",
        [rid for rid, _ in cells])]


# What each DP level's frontier runs, as the report's "attack and budget" says it.
_FRONTIER_DP = {
    "server": "DP-FedAvg at the server (clip, average, Gaussian noise)",
    "sample": "DP-SGD in each hospital (each patient's gradient clipped, a share of the "
              "patients each step, Gaussian noise; ε ∞: the same without noise)",
}


def _frontier(part: str, cells: list[tuple[str, RunSummary]]) -> list[StudyRow]:
    """The error ratio and membership AUCs per ε, and the smallest useful ε, of the frontier
    study ``part`` (``frontier``: server-side DP; ``frontier-patients``: DP-SGD)."""
    rows = []
    for _, s in cells:
        dp, mia = s.federation.dp, s.mia
        glob = mia.variants.get("global_loss") if mia else None
        main = mia.variants.get(mia.verdict_attack or mia.attack) if mia else None
        rows.append(SweepRow(
            cell=f"seed={s.config.get('seed', 0)}",
            dp_enabled=dp.enabled, epsilon=dp.epsilon if dp.enabled else None,
            mae_hu=s.federation.final.mae_hu if s.federation.final else None,
            patient_auc_pooled=main.patient.pooled.auc if main else None,
            global_patient_auc_pooled=glob.patient.pooled.auc if glob else None))
    points = frontier(rows)
    if not points:
        return []
    best = smallest_useful_epsilon(points)
    hospitals = max(len(s.federation.per_center) for _, s in cells) or "?"
    patients = max(s.config.get("data", {}).get("patients_per_center", 0) for _, s in cells)
    level = next((s.federation.dp.level for _, s in cells if s.federation.dp.enabled),
                 "server")
    ours = "; ".join(
        epsilon_label(p.epsilon)
        + (f": error ×{p.ratio:.2f}" if p.ratio is not None else "")
        + (f" [{p.ratio_ci[0]:.2f}, {p.ratio_ci[1]:.2f}]" if p.ratio_ci else "")
        + (f", AUC on the uploads {p.server_auc:.2f}"
           if level == "sample" and p.server_auc is not None else "")
        + (f", AUC on released models {p.global_auc:.2f}" if p.global_auc is not None else "")
        for p in points)
    ours += (f". Smallest ε within {USEFUL:g}× the error without DP: "
             + (f"{best.epsilon:.3g}" if best else "none at this scale")
             + (f" (above ε {MEANINGFUL_EPSILON:g}: no meaningful guarantee)"
                if best and best.epsilon > MEANINGFUL_EPSILON else ""))
    seeds = max(len(p.mae_hu) for p in points)
    return [StudyRow(
        part, ours, "",
        f"{hospitals} hospitals of {patients} patients; {seeds} seed{'s' if seeds > 1 else ''}"
        " per ε; each run's error ÷ the same seed's without DP, mean over seeds with its 95 % "
        "t-interval (the smallest useful ε judged on the mean); patient-level AUCs pooled over "
        "hospitals",
        f"{_FRONTIER_DP[level]}; RDP accountant, δ 1e-5; FedMIA on the uploads and the loss "
        "attack on the released global models",
        [rid for rid, _ in cells])]


def study_rows(summaries: list[tuple[str, list[str], str, dict[str, Any]]]) -> list[StudyRow]:
    """The report's rows from ``(part, cell overrides, run id, summary)`` of every cell."""
    rows: list[StudyRow] = []
    poisoning: list[tuple[str, RunSummary]] = []
    backdoor: list[tuple[str, RunSummary]] = []
    beyond: dict[str, list[tuple[str, RunSummary]]] = {"breakdown": [], "frontier": [],
                                                       "frontier-patients": []}
    for part, _own, run_id, raw in summaries:
        s = parse_summary(raw, f"run {run_id}")
        if part == "quality":
            rows += _quality(s, run_id)
        elif part.startswith("membership") and s.mia is not None:
            rows.append(_membership(part, s.mia, run_id))
        elif part in ("dlg", "strongest-inversion") and s.inversion is not None:
            rows.append(_inversion(part, s.inversion, run_id))
        elif part == "poisoning":
            poisoning.append((run_id, s))
        elif part == "backdoor":
            backdoor.append((run_id, s))
        elif part in beyond:
            beyond[part].append((run_id, s))
    return (rows + _poisoning(poisoning) + _breakdown(beyond["breakdown"])
            + _backdoor(backdoor) + _frontier("frontier", beyond["frontier"])
            + _frontier("frontier-patients", beyond["frontier-patients"]))


HEADER = ("Analysis", "This study run", "FedSynthCT-Brain study", "Sample and interval",
          "Attack and budget", "Runs")


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def study_markdown(rows: list[StudyRow], scale: str) -> str:
    lines = [f"# FedSCT study report ({scale} scale)", "",
             "Each analysis of the FedSynthCT-Brain security analysis, run on this lab's "
             "artificial patients, beside the figure the study published. The data differ "
             "(phantoms, not the study's patients), so the comparison is between designs and "
             "attacks, not hospitals.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        runs = ", ".join(r.runs[:3]) + (f" and {len(r.runs) - 3} more" if len(r.runs) > 3
                                         else "")
        lines.append("| " + " | ".join(_cell_md(x) for x in (
            r.analysis, r.ours, r.published, r.sample, r.attack, runs)) + " |")
    return "\n".join(lines) + "\n"


def study_html(rows: list[StudyRow], scale: str) -> str:
    def esc(x: str) -> str:
        return html.escape(x)

    body = "".join(
        "<tr>" + "".join(f"<td>{esc(x)}</td>" for x in (
            r.analysis, r.ours, r.published, r.sample, r.attack,
            ", ".join(r.runs[:3]) + (f" and {len(r.runs) - 3} more" if len(r.runs) > 3
                                     else ""))) + "</tr>"
        for r in rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>FedSCT study report ({esc(scale)})</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
        "padding:0 1em;color:#222}table{border-collapse:collapse;width:100%}"
        "th,td{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left;"
        "font-size:.92em}th{background:#f3f3f3}</style></head><body>"
        f"<h1>FedSCT study report ({esc(scale)} scale)</h1>"
        f"<p>Written {esc(time.strftime('%Y-%m-%d %H:%M'))}. Each analysis of the "
        "FedSynthCT-Brain security analysis, run on this lab's artificial patients, beside "
        "the figure the study published. The data differ (phantoms, not the study's "
        "patients), so the comparison is between designs and attacks, not hospitals.</p>"
        f"<table><tr>{head}</tr>{body}</table></body></html>")


def write_study_report(folder: Path, scale: str,
                       summaries: list[tuple[str, list[str], str, dict[str, Any]]]) -> None:
    """``report.md`` and ``report.html`` in the study's folder."""
    rows = study_rows(summaries)
    (folder / "report.md").write_text(study_markdown(rows, scale))
    (folder / "report.html").write_text(study_html(rows, scale))
