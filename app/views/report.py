"""The run report (one self-contained HTML file) and the Home scorecards.

``build_report`` is a plain function of a run folder: it reads what the engine wrote, reuses
the pages' verdicts, tables and charts, and never raises on a missing or damaged file; the
report says which file it could not use instead. Images are embedded as base64 PNG and
plotly.js is inlined once, so the file opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml

from app.views import backdoor as bd_ui
from app.views import breakdown as breakdown_ui
from app.views import dp_audit as audit_ui
from app.views import frontier as frontier_ui
from app.views import inversion as inv_ui
from app.views import membership as membership_ui
from app.views import poisoning as poi_ui
from app.views import whatif as whatif_ui
from app.views.common import (
    UNSEEN_LABEL,
    Verdict,
    computed_with,
    history_figure,
    hospital_name,
)
from engine.analyses.results import (
    BackdoorSummary,
    DPAuditSummary,
    InversionSummary,
    MiaSummary,
    PoisoningSummary,
    RunSummary,
    SummaryError,
    WhatifSummary,
    read_summary,
)
from engine.core.config import ConfigError, ExperimentConfig, validate_config
from engine.core.config.robust import rule_words
from engine.core.run_folder import RunFolder, RunStatus
from engine.orchestration.presets import preset_title

# plotly.js names its map-data server as a default setting; the report draws no maps, so the
# address is blanked out to keep the file free of any network reference.
PLOTLY_CDN = "https://cdn.plot.ly/un/"
QUALITY_FORMATS = (("Average error (MAE)", "mae_hu", "{:.0f} HU"),
                   ("Image quality (PSNR)", "psnr_db", "{:.2f} dB"),
                   ("Structural similarity (SSIM)", "ssim", "{:.3f}"))
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f4f4f4} .verdict{padding:.6em 1em;border-left:6px solid;margin:.8em 0}
.red{border-color:#c0392b;background:#fdecea} .orange{border-color:#e67e22;background:#fef5e7}
.green{border-color:#27ae60;background:#eafaf1} .gray{border-color:#888;background:#f4f4f4}
.missing{color:#a04000} img{max-width:100%;image-rendering:pixelated} pre{background:#f7f7f7;
padding:.6em;overflow-x:auto;font-size:12px}
"""


def fmt_mae(value: float) -> str:
    """The final MAE as the pages show it."""
    return f"{value:.0f} HU"


# --------------------------------------------------------------------------- reading


@dataclass
class RunFiles:
    """What a run folder holds, read defensively; ``problems`` name the unusable files."""

    path: Path
    summary: RunSummary | None = None
    config: dict[str, Any] | None = None
    status: RunStatus = RunStatus(state="unknown")
    metrics: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def cfg(self) -> ExperimentConfig | None:
        """The settings validated (None when they no longer are: the report still shows them
        as written)."""
        try:
            return validate_config(self.config) if self.config else None
        except ConfigError:
            return None


def _json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError):
        return None, "damaged"


def read_run(run_dir: str | Path) -> RunFiles:
    run = RunFiles(Path(run_dir))
    try:
        run.summary = read_summary(run.path / "summary.json")
    except SummaryError:
        run.problems.append("`summary.json` is damaged: no results to report")
    if run.summary is None and "summary.json" not in " ".join(run.problems):
        run.problems.append("`summary.json` is missing: no results to report")
    run.status = RunFolder(run.path).recorded_status()
    try:
        cfg = yaml.safe_load((run.path / "config.yaml").read_text())
        run.config = cfg if isinstance(cfg, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        run.config = None
    if run.config is None:
        run.config = run.summary.config if run.summary else None
        if not run.config:
            run.problems.append("`config.yaml` is missing or damaged: settings unknown")
    metrics_path = run.path / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                run.metrics.append(record)
    else:
        run.problems.append("`metrics.jsonl` is missing: no per-round table")
    return run


def metrics_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per round of ``metrics.jsonl``: round, mae_hu, psnr_db, ssim."""
    rows = [{"round": r.get("round"), **{k: (r.get("global") or {}).get(k)
                                         for k in ("mae_hu", "psnr_db", "ssim")}}
            for r in records if "round" in r]
    return pd.DataFrame(rows, columns=["round", "mae_hu", "psnr_db", "ssim"])


def metrics_csv(run_dir: str | Path) -> str:
    return metrics_frame(read_run(run_dir).metrics).to_csv(index=False)


# --------------------------------------------------------------------------- HTML pieces


def _md(text: str) -> str:
    """Escaped text with the pages' **bold** kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, na_rep="–", float_format=lambda v: f"{v:.3g}")


def _png(path: Path, alt: str) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG"):
        return None
    return (f'<p>{html.escape(alt)}<br><img src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}" alt="{html.escape(alt)}"></p>')


class _Figures:
    """Plotly figures as inline HTML; the first carries plotly.js, the others reuse it."""

    def __init__(self) -> None:
        self.bundled = False

    def __call__(self, fig: go.Figure) -> str:
        # The dashboard's charts use thin margins inside Streamlit's layout; a file read on
        # its own needs room for tick labels and axis titles at any window width.
        fig = go.Figure(fig).update_layout(margin={"l": 70, "r": 30, "t": 60, "b": 70})
        fig.update_xaxes(automargin=True).update_yaxes(automargin=True)
        out = fig.to_html(full_html=False, include_plotlyjs=not self.bundled,
                          config={"displaylogo": False})
        self.bundled = True
        return out.replace(PLOTLY_CDN, "")


def _verdict_box(v: Verdict) -> str:
    colour, title, detail = v.colour, v.title, v.detail
    return (f'<div class="verdict {colour}"><strong>{_md(title)}</strong>'
            f"<br>{_md(detail)}</div>")


def _missing(what: str) -> str:
    return f'<p class="missing">⚠ {_md(what)}</p>'


# --------------------------------------------------------------------------- sections


def _settings(run: RunFiles) -> str:
    cfg = run.config or {}
    s = run.summary or RunSummary()
    timing, versions = s.timing, s.versions
    rows = [("Run id", run.run_id), ("Name", cfg.get("name") or "run"),
            ("Preset", run.status.preset or "custom / not recorded"),
            ("Seed", cfg.get("seed", "–")),
            # The seed alone does not fix the figures: threads and kernels round differently.
            ("Computed with", computed_with(run.summary)), ("Device", s.device or "–"),
            ("Runtime", (cfg.get("federation") or {}).get("runtime", "inprocess")),
            ("State", run.status.state)]
    rows += [(f"Time: {k.removesuffix('_s')}", f"{v:.1f} s") for k, v in timing.items()
             if isinstance(v, int | float)]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    vers = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in versions.items()) or "<tr><td>not recorded</td></tr>"
    config = html.escape(yaml.safe_dump(cfg, sort_keys=False)) if cfg else "not available"
    return (f"<h2>Settings</h2><table>{body}</table><h3>Software versions</h3>"
            f"<table>{vers}</table><details><summary>Full configuration</summary>"
            f"<pre>{config}</pre></details>")


def _quality(run: RunFiles, figure: _Figures) -> str:
    fed = (run.summary or RunSummary()).federation
    final = fed.final
    out = ["<h2>Synthetic CT quality</h2>"]
    if final is None:
        return out[0] + _missing("No final quality: `summary.json` has no results.")
    out.append("<table><tr>" + "".join(f"<th>{label}</th>" for label, _, _ in QUALITY_FORMATS)
               + "</tr><tr>" + "".join(f"<td>{fmt.format(getattr(final, k))}</td>"
                                       for _, k, fmt in QUALITY_FORMATS) + "</tr></table>")
    rows = [{"Hospital": hospital_name(c), **m.model_dump()} for c, m in fed.per_center.items()]
    if fed.unseen_center:
        rows.append({"Hospital": UNSEEN_LABEL, **fed.unseen_center.model_dump()})
    if rows:
        out.append("<h3>Per hospital</h3>" + _table(pd.DataFrame(rows).rename(columns={
            "mae_hu": "MAE (HU) ↓", "psnr_db": "PSNR (dB) ↑", "ssim": "SSIM ↑"})))
    history = [h.model_dump() for h in fed.history]
    if history:
        out.append("<h3>Learning curve</h3>" + figure(
            history_figure(history, fed.rounds or history[-1]["round"])))
    out.append("<h3>Example images (MRI | CT | synthetic CT | error)</h3>")
    art = run.path / "artifacts"
    if not (art / "samples.npz").is_file():
        out.append(_missing("`artifacts/samples.npz` is missing: the sample images may be "
                            "incomplete."))
        run.problems.append("`artifacts/samples.npz` is missing")
    pngs = sorted(art.glob("sample_*.png"))
    for p in pngs:
        img = _png(p, hospital_name(p.stem.removeprefix("sample_")))
        if img:
            out.append(img)
        else:
            out.append(_missing(f"`artifacts/{p.name}` is damaged."))
            run.problems.append(f"`artifacts/{p.name}` is damaged")
    if not pngs:
        out.append(_missing("No `artifacts/sample_<hospital>.png` image in this run."))
        run.problems.append("`artifacts/sample_<hospital>.png` images are missing")
    return "".join(out)


def _membership(run: RunFiles, mia: MiaSummary, figure: _Figures) -> str:
    v = membership_ui.verdict(mia)
    out = ["<h2>Attack: membership inference</h2>", _verdict_box(v),
           "<h3>AUC per attack and hospital</h3>", _table(membership_ui.auc_table(mia)),
           "<h3>Members caught at fixed false-alarm rates</h3>",
           _table(membership_ui.tpr_table(mia))]
    roc, why = _json(run.path / "mia" / "roc.json")
    attack = mia.attack
    if isinstance(roc, dict) and isinstance(roc.get(attack), dict):
        panels = list(roc[attack])
        entry = membership_ui.MiaRun(RunFolder(run.path), run.status.created or 0.0,
                              "done", run.cfg, run.summary)
        try:
            out.append("<h3>ROC curves</h3>" + figure(
                membership_ui.roc_figure(panels, [(entry, roc, "solid")], attack)))
        except (KeyError, TypeError, ValueError):
            out.append(_missing("`mia/roc.json` is damaged: no ROC chart."))
            run.problems.append("`mia/roc.json` is damaged")
    else:
        out.append(_missing(f"`mia/roc.json` is {why or 'damaged'}: no ROC chart."))
        run.problems.append(f"`mia/roc.json` is {why or 'damaged'}")
    return "".join(out)


def _inversion(run: RunFiles, inv: InversionSummary) -> str:
    out = ["<h2>Attack: gradient inversion</h2>", _verdict_box(inv_ui.verdict(inv)),
           f"<p>Attack: {_md(inv_ui.budget_text(inv))}.</p>"]
    table, columns = inv_ui.client_table(inv)
    out.append("<h3>Per hospital</h3>" + _table(table.rename(
        columns={k: label for k, (label, _, _) in columns.items()})))
    out.append(f"<h3>{inv_ui.STRIP_CAPTION}</h3>")
    for center in inv.per_client:
        img = _png(run.path / "inversion" / f"{center}.png", hospital_name(center))
        if img:
            out.append(img)
        else:
            out.append(_missing(f"`inversion/{center}.png` is missing or damaged."))
            run.problems.append(f"`inversion/{center}.png` is missing or damaged")
    return "".join(out)


def _poisoning(run: RunFiles, poison: PoisoningSummary, figure: _Figures) -> str:
    fed = (run.summary or RunSummary()).federation
    rule = fed.aggregator
    out = ["<h2>Attack: poisoning</h2>"]
    try:
        out.append(_verdict_box(poi_ui.verdict(poison, rule)))
    except (KeyError, IndexError):
        out.append(_missing("The poisoning results in `summary.json` are incomplete."))
    if poison.cells:
        out.append("<h3>Result against the clean federation</h3>"
                   + _table(poi_ui.cells_table(poison)))
    out.append("<h3>Average error per round</h3>" + figure(poi_ui.curves_figure(
        [(rule, fed.history, poison.baseline_history)], "mae_hu")))
    detection = poison.detection
    if detection.per_round:
        names = poison.malicious_names
        out.append("<h3>Did the server spot the attackers?</h3><p>"
                   + _md(poi_ui.detection_sentence(detection, names)) + "</p>"
                   + figure(poi_ui.detection_figure(detection, names)))
    return "".join(out)


def _backdoor(run: RunFiles, bd: BackdoorSummary, figure: _Figures) -> str:
    defense = bd_ui.config_defense(run.cfg, (run.summary or RunSummary()).federation.aggregator)
    out = ["<h2>Attack: backdoor</h2>",
           _verdict_box(bd_ui.summary_verdict(run.summary or RunSummary(backdoor=bd), defense))]
    if bd.example:
        img = _png(run.path / bd.example["png"], "a triggered slice")
        if img:
            out.append(f"<h3>{_md(bd_ui.EXAMPLE_CAPTION)}</h3>{img}")
        else:
            out.append(_missing(f"`{bd.example['png']}` is missing or damaged."))
            run.problems.append(f"`{bd.example['png']}` is missing or damaged")
    if (fig := bd_ui.rounds_figure(bd, defense)) is not None:
        out.append(f"<h3>Round by round</h3><p>{_md(bd_ui.ROUNDS_CAPTION)}</p>" + figure(fig))
    table, columns = bd_ui.hospital_table(bd)
    out.append("<h3>Per hospital</h3>" + _table(table.rename(
        columns={k: label for k, (label, _, _) in columns.items()})))
    return "".join(out)


def _whatif(run: RunFiles, whatif: WhatifSummary, figure: _Figures) -> str:
    out = [f"<h2>What-if: patient {html.escape(whatif.patient)} at "
           f"{html.escape(hospital_name(whatif.center))}</h2>"]
    if whatif.membership is not None:
        out += [_verdict_box(whatif_ui.membership_verdict(whatif.membership)),
                figure(whatif_ui.score_figure(whatif.membership))]
    out.append(_verdict_box(whatif_ui.reconstruction_verdict(whatif.reconstruction)))
    return "".join(out)


def _dp_audit(audit: DPAuditSummary) -> str:
    return "<h2>Privacy audit</h2>" + _verdict_box(audit_ui.audit_verdict(audit))


@dataclass
class Report:
    html: str
    problems: list[str]
    attacks: list[str]


def make_report(run_dir: str | Path) -> Report:
    """The report of one run folder, and the files it could not use."""
    run = read_run(run_dir)
    figure = _Figures()
    name = (run.config or {}).get("name") or "run"
    parts = [f"<h1>FedSCT run report: {html.escape(name)}</h1>",
             f"<p>Run id <code>{html.escape(run.run_id)}</code></p>",
             _settings(run), _quality(run, figure)]
    attacks = []
    s = run.summary or RunSummary()
    sections = (("mia", "membership inference", lambda b: _membership(run, b, figure)),
                ("inversion", "gradient inversion", lambda b: _inversion(run, b)),
                ("poisoning", "poisoning", lambda b: _poisoning(run, b, figure)),
                ("backdoor", "backdoor", lambda b: _backdoor(run, b, figure)),
                ("whatif", "what-if for one patient", lambda b: _whatif(run, b, figure)),
                ("dp_audit", "privacy audit", _dp_audit))
    for key, label, section in sections:
        block = getattr(s, key)
        if block is not None:
            attacks.append(label)
            parts.append(section(block))
    if not attacks and run.summary is not None:
        parts.append("<h2>Attacks</h2><p>No attack ran in this run.</p>")
    if run.problems:
        parts.insert(2, "<h2>Missing or damaged files</h2><ul>" + "".join(
            f"<li>{_md(p)}</li>" for p in run.problems) + "</ul>")
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
           f"<title>FedSCT report {html.escape(run.run_id)}</title><style>{CSS}</style>"
           f"</head><body>{''.join(parts)}</body></html>")
    return Report(doc, list(run.problems), attacks)


def build_report(run_dir: str | Path) -> str:
    """One self-contained HTML report of the run in ``run_dir`` (works offline)."""
    return make_report(run_dir).html


# --------------------------------------------------------------------------- Home scorecards


@dataclass
class Scorecard:
    """One traffic light: a title, the headline value (None: nothing measured yet, with the
    ``page`` that starts it), its colour and how to read it."""

    title: str
    value: str | None  # None: no run yet
    colour: str  # green / orange / red / gray
    detail: str
    page: str = ""  # where to start one, when missing


def _light(value: float, green: float, orange: float, green_inclusive: bool = False) -> str:
    if value < green or (green_inclusive and value <= green):
        return "green"
    return "orange" if value < orange else "red"


def _card(title: str, v: Verdict, detail: str) -> Scorecard:
    # Green only where the page's verdict shows safety with evidence; blue (no evidence)
    # and grey (inconclusive) stay grey on a scorecard.
    colour = v.colour if v.colour in ("red", "orange", "green") else "gray"
    return Scorecard(title, v.figure or v.title, colour, detail)


HOME_INTRO = (
    "Several hospitals want a shared AI model that turns a brain **MRI** into a **synthetic "
    "CT** (sCT), so patients can skip the CT scan for radiotherapy planning. With *federated "
    "learning* no hospital sends its images anywhere: each one trains the model on its own "
    "patients and only sends the model's **updates** to a central server, which combines them. "
    "This lab simulates such a federation on artificial patients so you can see how good the "
    "shared model gets and what the protections cost.\n\n"
    "**What can go wrong (the threat model).** A curious server could study a hospital's "
    "updates to guess whether a given patient was used, or even rebuild their images; a "
    "dishonest hospital could send harmful updates to spoil the shared model. The defenses "
    "here — secure aggregation (the server only sees the sum of updates), privacy noise "
    "(differential privacy) and robust aggregation rules — each block some of these attacks.")


def scorecards(summary: RunSummary | None) -> list[Scorecard]:
    """Traffic lights of one finished run's summary: its model's quality and every attack it
    ran (an attack it did not run says where to start one; no summary: every card does).
    Never a mix of runs."""
    s = summary or RunSummary()
    cards = []
    mae = s.federation.final.mae_hu if s.federation.final else None
    cards.append(Scorecard(
        "Synthetic CT quality", f"MAE {fmt_mae(mae)}" if mae is not None else None,
        _light(mae, 100, 200) if mae is not None else "gray",
        "Average error of the synthetic CT inside the head (lower is better). Green below "
        "100 HU, orange below 200 HU, red from 200 HU; published deep-learning sCT for brain "
        "radiotherapy reach 50–100 HU.", page="federation.py" if mae is None else ""))
    if s.mia is None:
        cards.append(Scorecard("Privacy risk (membership inference)", None, "gray",
                               "Not attacked in this run: start an attack on the Membership "
                               "inference page.", page="membership.py"))
    else:
        cards.append(_card("Privacy risk (membership inference)", membership_ui.verdict(s.mia),
                           "The worst hospital's patient-level AUC (0.5 = guessing) with its "
                           "95% interval. Red or orange: better than chance; grey: no "
                           "evidence at this sample size, which is not the same as safe."))
    if s.inversion is None:
        cards.append(Scorecard("Reconstruction risk (gradient inversion)", None, "gray",
                               "Not attacked in this run: start an attack on the Gradient "
                               "inversion page.", page="inversion.py"))
    else:
        cards.append(_card("Reconstruction risk (gradient inversion)",
                           inv_ui.verdict(s.inversion),
                           "SSIM of the rebuilt images inside the head against the "
                           "attacker's average brain (the floor). Green only when the same "
                           "attack rebuilt a slice of a design known to leak; grey: "
                           "inconclusive."))
    if s.poisoning is None:
        cards.append(Scorecard("Poisoning robustness", None, "gray",
                               "No malicious hospital in this run: try one on the Poisoning "
                               "page.", page="poisoning.py"))
    else:
        cards.append(_card("Poisoning robustness",
                           poi_ui.verdict(s.poisoning, s.rule),
                           f"Final MAE under attack ÷ MAE without attackers. Green up to "
                           f"{poi_ui.PROTECTED}× where the same attack hurt FedAvg beyond "
                           f"that, grey where it did not (too weak to judge), orange below "
                           f"{poi_ui.BROKEN:g}×, red from {poi_ui.BROKEN:g}×."
                           + _control_words(s)))
    return cards


def _control_words(s: RunSummary) -> str:
    """The FedAvg control beside a robust rule's card: a green rule is only as telling as the
    damage the same attack did without it."""
    control = s.poisoning.fedavg_control if s.poisoning else None
    if control is None or control.self_ or not control.seeds:
        return ""
    rule = rule_words(s.rule)
    n = len(control.seeds)
    return (f" This run used {rule}; the same attack against FedAvg gave "
            f"{control.mae_ratio_mean:.2f}× over {n} seed{'' if n == 1 else 's'}.")


# --------------------------------------------------------------------------- the study

SCALE_WORDS = {"demo": "Demo (minutes)", "paper": "Paper (the presets as they are)",
               "full": "Full (256 px, needs a GPU)"}


def study_cell_words(label: str | None) -> str:
    """A running study cell in words: a preset's title, a backdoor experiment (its label
    names the backdoor's attack), a breakdown experiment (it names the rule's f), a DP
    frontier experiment (it starts with DP on or off) or a poisoning experiment."""
    label = label or ""
    if label.startswith("name="):
        return preset_title(label.removeprefix("name="))
    if label.startswith("attack="):
        return bd_ui.cell_words(label)
    if "num_malicious=" in label:
        return breakdown_ui.cell_words(label)
    if label.startswith(("enabled=", "level=")):
        return frontier_ui.cell_words(label)
    return poi_ui.cell_words(label)
