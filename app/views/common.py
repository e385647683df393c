"""Words, tables and charts that several pages share (no Streamlit)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.analyses.results import RunSummary
from engine.clients.dp import LEVEL_WORDS, epsilon_text, planned_epsilon
from engine.core.config import ExperimentConfig
from engine.core.config.robust import rule_key, rule_words
from engine.core.run_folder import RunStatus
from engine.orchestration.timings import Expected


@dataclass
class Verdict:
    """What a page's coloured box says about one result.

    Attributes:
        colour: ``red`` | ``orange`` | ``green`` (safe, with the evidence to say so) |
            ``blue`` (no evidence at this sample size) | ``gray`` (inconclusive or no data).
        title: the verdict in one sentence.
        detail: the numbers it rests on (markdown): sample size, interval, attack, budget.
        figure: the headline number in a few words, for scorecards and comparisons.
        value: that headline number itself (None where the verdict has none), so that a
            comparison of two runs reads the number their verdicts show.
    """

    colour: str
    title: str
    detail: str = ""
    figure: str = ""
    value: float | None = None


def hospital_name(center: str) -> str:
    """The one name a hospital has on every page: ``center-0`` (phantom hospitals, numbered
    from 0) and ``center-A`` (SynthRAD2023 hospitals, by the letter in the patient IDs) are
    both "Hospital A"; ``unseen`` is the hospital that never trains. Files and summaries keep
    the engine's ids."""
    if center == "aggregate":  # engine.attacks.inversion.AGGREGATE
        return "All hospitals (the round's aggregate)"
    kind, _, tag = center.partition("-")
    if kind == "unseen":
        return f"Unseen hospital ({tag})" if tag else "Unseen hospital"
    if kind == "center" and tag.isdigit():
        n = int(tag)
        return f"Hospital {chr(ord('A') + n)}" if n < 26 else f"Hospital {n + 1}"
    if kind == "center" and tag:
        return f"Hospital {tag}"
    return center


def hospital_names(centers: list[str]) -> str:
    return ", ".join(hospital_name(c) for c in centers) or "none"


ROOT = Path(__file__).resolve().parents[2]  # the repository
PAGES_DIR = ROOT / "pages"
_MARKDOWN_SIGNS = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$])")


def plain(text: str, limit: int = 80) -> str:
    """Text a user controls (a URL parameter, a file name) made safe inside Markdown: control
    characters dropped, every Markdown sign escaped (no link, image, code span, colour or
    formula can be injected), cut to ``limit`` characters."""
    text = "".join(ch for ch in str(text) if ch.isprintable())
    if len(text) > limit:
        text = text[:limit] + "…"
    return _MARKDOWN_SIGNS.sub(r"\\\1", text)


def user_allowed(email: str | None, allowed: list[str]) -> bool:
    """Whether a signed-in account may use the dashboard: ``allowed`` holds e-mail addresses
    and ``@domain`` entries (lower case); an empty list allows every account."""
    if not allowed:
        return True
    email = (email or "").strip().lower()
    if "@" not in email:
        return False
    return email in allowed or f"@{email.rsplit('@', 1)[1]}" in allowed


# How often a page redraws a job's progress (s). A round takes seconds to minutes: a faster
# poll shows nothing new and costs the running job CPU (each poll reruns page code).
POLL_S = 3.0
ASSETS_DIR = ROOT / "assets"
UNSEEN_LABEL = "unseen hospital (never trained)"

METRIC_HELP = {
    "mae_hu": "MAE: average error of the synthetic CT in Hounsfield units (lower is better).",
    "psnr_db": "PSNR: signal-to-noise ratio of the synthetic CT in decibels (higher is better).",
    "ssim": "SSIM: how similar the structures look, from 0 to 1 (higher is better).",
}

AGGREGATOR_HELP = {
    "fedavg": "Averages all hospitals' updates, weighted by how much data each has "
              "(the standard rule).",
    "fedprox": "Averages the updates but keeps each hospital close to the shared model; "
               "helps when hospitals' scanners differ.",
    "fedmedian": "Takes the middle value of the updates, so one misbehaving hospital "
                 "cannot drag the model far.",
    "trimmed_mean": "Drops the most extreme updates on both sides, then averages the rest.",
    "krum": "Keeps only the single update most similar to the others and ignores outliers "
            "(needs many hospitals).",
    "multikrum": "Averages the few updates most similar to the others, ignoring outliers.",
    "bulyan": "Combines Krum with trimming for the strongest protection against attackers "
              "(needs the most hospitals).",
    "centered_clipping": "Starts from the current shared model and shortens every update "
                         "that reaches farther than a typical one, so no hospital can pull "
                         "far; repeated three times.",
    "dnc": "Finds the direction in which the updates differ most and drops the hospitals "
           "farthest along it (as many as it is told attackers may be), then averages.",
}

STATE_TEXT = {"queued": "waiting to start", "running": "running", "done": "finished",
              "failed": "failed", "cancelled": "stopped",
              "interrupted": "interrupted (can be resumed)"}

PHASE_TEXT = {"data": "Preparing the hospitals' images…",
              "training": "Hospitals are training the shared model…",
              "membership inference": "Training done; the curious server is now testing "
                                      "which patients each hospital trained on…",
              "gradient inversion": "Training done; the curious server is now rebuilding "
                                    "hospitals' images from their uploads…",
              "poisoning baseline": "Training done; now training the same federation "
                                    "without attackers, for comparison…",
              "backdoor": "Training done; now training the same federation without the "
                          "attacker (and, for a defended run, the attack against FedAvg) and "
                          "testing the trigger on every held-out slice…",
              "what-if": "Attacks done; now reading the what-if patient's results…",
              "resuming": "Resuming from the last checkpoint…"}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def expected_words(e: Expected, start: bool = False) -> str:
    """How long a preset, sweep or study will take, and what the figure rests on; ``start``:
    as the start of a sentence."""
    words = _expected_words(e)
    return words[0].upper() + words[1:] if start else words


def _expected_words(e: Expected) -> str:
    if e.to_run == 0:
        return ("already finished: the results show at once if they ran on this machine's "
                "thread count (else they are trained again)")
    basis = (f"at this machine's speed, measured over its last {e.basis} finished "
             f"run{'s' if e.basis > 1 else ''}" if e.basis else
             "on 2 quiet CPU cores; nothing has finished here yet to measure this machine")
    reused = (f"; {e.reused} of {e.cells} experiments already finished, reused if they ran "
              "on this machine's thread count"
              if e.reused else "")
    return f"about {_duration(e.seconds)} ({basis}{reused})"


def progress_text(status: RunStatus, records: list[dict[str, Any]],
                  total_rounds: int, started: bool = False) -> tuple[float, str]:
    """(share done of the current phase, the line under the bar) of a run's status: the
    phase, how far it is (round, hospital and iteration of an attack) and the time left at
    the speed measured so far. ``started``: the queue has launched the run's process, which
    has not marked the run running yet."""
    if status.state == "queued":
        return 0.0, "Starting…" if started else "Waiting for its turn in the job queue…"
    text = PHASE_TEXT.get(status.phase or "", "Working…")
    if (step := status.step_progress) is not None:
        text += f" {step.unit.capitalize()} {step.done:,} of {step.total:,}"
        text += f" ({step.detail})." if step.detail else "."
        if step.eta_s is not None and step.done < step.total:
            text += f" About {_duration(step.eta_s)} left in this step."
        return min(step.done / step.total, 1.0), text
    done = records[-1]["round"] if records else 0
    return min(done / max(total_rounds, 1), 1.0), f"{text} Round {done} of {total_rounds}."


def describe_config(cfg: ExperimentConfig) -> str:
    """One plain sentence summarising a run's settings."""
    fed, dp = cfg.federation, cfg.defenses.dp
    unseen = " + 1 unseen hospital" if cfg.data.unseen_center else ""
    privacy = (f"{LEVEL_WORDS[dp.level]}, {epsilon_text(planned_epsilon(cfg))}"
               if dp.enabled else "no differential privacy")
    secagg = f"secure aggregation {'on' if cfg.defenses.secure_aggregation else 'off'}"
    where = "" if fed.runtime == "inprocess" else f" · on {fed.runtime}"
    return (f"{cfg.data.centers} hospitals{unseen} · {fed.rounds} rounds · "
            f"{rule_words(rule_key(fed.aggregator, fed.pre_aggregator))} · {secagg} · "
            f"{privacy} · "
            f"{cfg.data.image_size} px images{where}")


def runs_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({
        "Started": [time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
                    for r in records],
        "Name": [r["name"] or "run" for r in records],
        "State": [STATE_TEXT.get(r["state"], r["state"]) for r in records],
        "Aggregation rule": [rule_words(r["aggregator"]) if r["aggregator"] else "–"
                             for r in records],
        "Rounds": [r["rounds"] for r in records],
        "Secure aggregation": [bool(r["secure_aggregation"]) for r in records],
        "Final MAE (HU)": [r["final_mae_hu"] for r in records],
        "Run id": [r["run_id"] for r in records],
    })


def history_from_metrics(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-round metric records → the summary's history format (rounds with an evaluation)."""
    return [{"round": r["round"], **r["global"]} for r in records if r.get("global")]


def history_figure(history: list[dict[str, Any]], total_rounds: int) -> go.Figure:
    """MAE, PSNR and SSIM per round side by side (their scales differ too much to share).

    The axes are fixed from the first round: rounds 0 … total, MAE and PSNR from 0 to above
    the largest value so far, SSIM 0 … 1, so that a lone first point is not drawn on an axis
    a few HU wide and the chart does not jump as rounds come in.
    """
    titles = ("Average error, MAE (HU) — lower is better", "PSNR (dB) — higher is better",
              "SSIM (0–1) — higher is better")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    rounds = [h["round"] for h in history]
    for col, key in enumerate(("mae_hu", "psnr_db", "ssim"), start=1):
        values = [h[key] for h in history]
        fig.add_trace(go.Scatter(x=rounds, y=values, mode="lines+markers",
                                 name=key, showlegend=False,
                                 hovertemplate="round %{x}: %{y:.3g}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="round (0 = untrained)", range=[-0.3, total_rounds + 0.3],
                         dtick=max(1, -(-total_rounds // 10)), row=1, col=col)
        top = 1.0 if key == "ssim" else max(values) * 1.15 if values else 1.0
        fig.update_yaxes(range=[0, top], row=1, col=col,
                         tickformat=".0f" if key == "mae_hu" else None)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    fig.update_annotations(font_size=13)
    return fig


def upscale(img: np.ndarray, target: int = 192) -> np.ndarray:
    # Nearest-neighbour so each pixel stays a visible block instead of a blur.
    k = max(1, target // img.shape[0])
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def log_ticks(values: Iterable[float | None]) -> dict[str, list]:
    """Tick values and labels for a log axis over ``values``: 1, 2, 5 × powers of ten, each
    written out in full (plotly's own log ticks write 20 and 50 as a small "2" and "5")."""
    positive = [float(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not positive:
        return {}
    lo, hi = min(positive), max(positive)
    vals = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1,
                                        math.ceil(math.log10(hi)) + 2) for m in (1, 2, 5)]
    lower = max((v for v in vals if v <= lo), default=vals[0])
    upper = min((v for v in vals if v >= hi), default=vals[-1])
    shown = [v for v in vals if lower <= v <= upper]
    if len(shown) > 9:  # a wide range: decades only
        shown = [v for v in shown if math.isclose(10 ** round(math.log10(v)), v)] or shown
    return {"tickvals": shown, "ticktext": [f"{v:g}" for v in shown]}


def log_line_label(fig: go.Figure, y: float, text: str) -> None:
    """A label just above the horizontal line ``y`` on a log y axis: ``add_hline``'s own
    annotation is placed as if the axis were linear, far from its line."""
    fig.add_annotation(x=0, xref="paper", y=math.log10(y), yref="y", text=text,
                       showarrow=False, xanchor="left", yanchor="bottom", font={"size": 12})


TRAINING_WORDS = {"batched": "hospitals trained together",
                  "partly batched": "some hospitals trained together",
                  "sequential": "hospitals trained one after another",
                  "flower": "on Flower"}


def computed_with(summary: RunSummary | None) -> str:
    """How a run computed its figures, in words: what decides them besides the settings and
    the seed (``summary.json`` → ``environment``)."""
    env = summary.environment if summary else None
    if env is None:
        return "not recorded"
    kernels = ", ".join([env.cpu_capability, *env.kernel_limits.values()])
    return (f"{env.threads} thread{'' if env.threads == 1 else 's'} on {env.device} "
            f"({kernels} kernels), {TRAINING_WORDS.get(env.training, env.training)}, "
            f"{env.precision}, torch {env.torch}, MONAI {env.monai}")
