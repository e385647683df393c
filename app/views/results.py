"""Runs and studies as the pages list them: one listing of every run with its typed summary
(:class:`RunRow`), and the progress and tables of background studies (:class:`Sweep`)."""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.views.common import STATE_TEXT, expected_words
from engine.analyses.results import (
    DPSummary,
    FederationSummary,
    HistoryPoint,
    Metrics,
    RunSummary,
    SummaryError,
    read_summary,
)
from engine.analyses.sweep_table import SweepRow, parse_sweep_rows
from engine.clients.dp import LEVEL_WORDS
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.config.robust import rule_key
from engine.core.processes import pid_alive, read_job_pid
from engine.core.run_folder import ACTIVE, RunFolder
from engine.orchestration.store import RunIndex
from engine.orchestration.sweep_catalogue import sweep_spec
from engine.orchestration.sweeps import SweepProgress, read_sweep_progress, sweep_folder
from engine.orchestration.timings import Expected, expected_study, expected_sweep


@functools.lru_cache(maxsize=256)
def _read_json(path: str, mtime: float) -> Any:
    # mtime is part of the cache key so a rewritten file is read again.
    return json.loads(Path(path).read_text())


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (half-written, old).
    A copy: callers may change it without changing the cache."""
    try:
        return copy.deepcopy(_read_json(str(path), path.stat().st_mtime))
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=256)
def _read_config(folder: str, mtime: float) -> ExperimentConfig:
    # Shared between reruns: callers read it, never change it.
    return RunFolder(Path(folder)).config()


# Summary keys of the attacks, and the config section that enables each.
ATTACK_KEYS = {"mia": "membership", "inversion": "inversion", "poisoning": "poisoning",
               "backdoor": "backdoor", "whatif": None, "dp_audit": "dp_audit"}


@dataclass
class RunRow:
    """One run as every page lists it: its folder, status, config and typed summary.

    ``summary`` is None before the run finished and when its ``summary.json`` is damaged;
    ``problems`` then names the damaged files (one line each).
    """

    run: RunFolder
    created: float | None
    state: str
    cfg: ExperimentConfig | None  # None when config.yaml is missing or damaged
    summary: RunSummary | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def name(self) -> str:
        return (self.cfg.name if self.cfg else None) or (self.summary.name if self.summary
                                                           else "") or ""

    @property
    def federation(self) -> FederationSummary | None:
        return self.summary.federation if self.summary else None

    @property
    def aggregator(self) -> str | None:
        return (self.federation.aggregator if self.federation else
                self.cfg.federation.aggregator if self.cfg else None)

    @property
    def rule(self) -> str:
        """The server's rule with its pre-aggregator (:func:`rule_key`)."""
        return rule_key(self.aggregator or "fedavg",
                        self.cfg.federation.pre_aggregator if self.cfg else None)

    @property
    def rounds(self) -> int | None:
        return (self.federation.rounds if self.federation else
                self.cfg.federation.rounds if self.cfg else None)

    @property
    def secure_aggregation(self) -> bool:
        if self.federation:
            return self.federation.secure_aggregation
        return self.cfg is not None and self.cfg.defenses.secure_aggregation

    @property
    def final(self) -> Metrics | None:
        return self.federation.final if self.federation else None

    @property
    def history(self) -> list[HistoryPoint]:
        return self.federation.history if self.federation else []

    @property
    def attacks(self) -> list[str]:
        """Summary keys of the attacks this run carries results of."""
        return [k for k in ATTACK_KEYS if self.summary and getattr(self.summary, k)]

    @property
    def dp_text(self) -> str:
        """DP in a few words with its ε, or "" without DP."""
        return dp_words(self.federation.dp) if self.federation else ""

    @property
    def defenses(self) -> str:
        parts = ["secure aggregation"] if self.secure_aggregation else []
        if self.dp_text:
            parts.append(self.dp_text)
        if self.federation and self.federation.prune_fraction:
            parts.append(f"pruning {self.federation.prune_fraction:.0%}")
        return ", ".join(parts) or ("none" if self.summary or self.state == "done" else "")

    @property
    def design(self) -> str:
        """What makes two runs the same experiment, in words: hospitals, patients, rounds,
        image size."""
        if self.cfg is None:
            return f"? hospitals × ? patients · {self.rounds or '?'} rounds · ? px"
        data = self.cfg.data
        return (f"{data.centers} hospitals × {data.patients_per_center} patients · "
                f"{self.rounds or '?'} rounds · {data.image_size} px")

    @property
    def label(self) -> str:
        """The run in a picker: when, name, its defenses (if any), state and MAE."""
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        mae = f" · MAE {self.final.mae_hu:.0f} HU" if self.final else ""
        state = STATE_TEXT.get(self.state, self.state)
        defended = f" · {self.defenses}" if self.defenses not in ("", "none") else ""
        return f"{when} · {self.name or 'run'}{defended} · {state}{mae}"

    def enabled(self, attack: str) -> bool:
        """Whether the run's config enabled ``attacks.<attack>``."""
        return self.cfg is not None and getattr(self.cfg.attacks, attack).enabled


def dp_words(dp: DPSummary) -> str:
    """A run's DP in a few words: level and ε ("" without DP)."""
    if not dp.enabled:
        return ""
    unit = LEVEL_WORDS.get(dp.level, "DP")
    if not dp.accounted:  # an older run: σ only, no accountant
        return f"DP σ {dp.noise_multiplier:g} (no ε computed)"
    if dp.epsilon is None:
        return f"{unit}, ε = ∞"
    words = f"{unit}, ε = {dp.epsilon:.3g}"
    if dp.epsilon_substitution is not None:
        words += f" (replacing a hospital's data: ε = {dp.epsilon_substitution:.3g})"
    return words + ("" if dp.meaningful else " (no meaningful guarantee)")


def _row(root: Path, rec: dict[str, Any]) -> RunRow:
    run = RunFolder(root / rec["run_id"])
    problems = []
    try:
        cfg = _read_config(str(run.path), (run.path / "config.yaml").stat().st_mtime)
    except (OSError, ConfigError):
        cfg = None
        problems.append(f"`config.yaml` of run `{run.run_id}` is missing or damaged")
    summary = None
    try:
        summary = _read_summary(str(run.path / "summary.json"),
                                (run.path / "summary.json").stat().st_mtime)
    except FileNotFoundError:
        pass
    except (OSError, SummaryError) as err:
        problems.append(f"`summary.json` of run `{run.run_id}` is damaged ({err})")
    return RunRow(run, rec["created"], rec["state"] or "failed", cfg, summary, problems)


@functools.lru_cache(maxsize=512)
def _read_summary(path: str, mtime: float) -> RunSummary | None:
    return read_summary(Path(path))


def list_runs(root: Path | None = None) -> list[RunRow]:
    """Every run under the runs root, newest first, with its typed summary (damage noted):
    the one listing the pages use."""
    index = RunIndex(root)
    return [_row(index.root, rec) for rec in index.list()]


def finished_with(rows: list[RunRow], key: str) -> tuple[list[RunRow], list[Path]]:
    """Finished runs whose summary has the ``key`` block (e.g. ``mia``); and the summary
    files of finished runs that enabled that attack but whose results can't be read."""
    attack = ATTACK_KEYS.get(key)
    done = [r for r in rows if r.state == "done"]
    ok = [r for r in done if r.summary is not None and getattr(r.summary, key, None)]
    damaged = [r.path / "summary.json" for r in done
               if r not in ok and attack and r.enabled(attack)]
    return ok, damaged


@dataclass
class Sweep:
    """What a sweep folder holds: progress (``sweep.json``), rows (``table.json``) and
    curves (``curves.json``); unreadable files are listed in ``damaged``."""

    name: str
    folder: Path
    sets: tuple[str, ...] = ()  # the overrides it runs with (the what-if's patient)
    state: str | None = None  # None: never started
    cells_done: int = 0
    total: int = 0
    current: str | None = None
    rows: list[SweepRow] | None = None
    damaged: list[Path] = field(default_factory=list)
    progress: SweepProgress | None = None  # sweep.json as read

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def process(self) -> tuple[int | None, int | None]:
        """(pid, start time) of the background sweep's process."""
        return read_job_pid(self.folder)

    def curves(self) -> dict[str, Any] | None:
        """``curves.json`` ({run id: history}), or None when missing or damaged."""
        data = read_json(self.folder / "curves.json")
        return data if isinstance(data, dict) else None


def read_sweep(name: str, sets: tuple[str, ...] = ()) -> Sweep:
    """The state of sweep ``name`` run with ``sets`` in the runs root (its
    :func:`engine.orchestration.sweeps.sweep_folder`)."""
    sweep = read_sweep_folder(sweep_folder(name, sets), name,
                              total=len(sweep_spec(name)["cells"]))
    sweep.sets = tuple(sets)
    return sweep


def read_sweep_folder(folder: Path, name: str | None = None, total: int = 0) -> Sweep:
    """The state of the sweep in ``folder`` (``name`` defaults to the folder's name without
    its hash; ``total`` is the cell count until ``sweep.json`` says otherwise)."""
    sweep = Sweep(name or folder.name.rsplit("-", 1)[0], folder, total=total)
    table_path = folder / "table.json"
    try:
        sweep.progress = progress = read_sweep_progress(folder)
    except ValueError:
        sweep.damaged.append(folder / "sweep.json")
        progress = None
    if progress is not None:
        sweep.state, sweep.cells_done = progress.state, progress.cells_done
        if progress.labels:
            sweep.total = len(progress.labels)
            if sweep.cells_done < sweep.total:
                sweep.current = progress.labels[sweep.cells_done]
        # A background sweep whose process ended without saying so was killed.
        if sweep.active and sweep.process[0] and not pid_alive(*sweep.process):
            sweep.state = "ended"
    if table_path.exists():
        try:
            sweep.rows = parse_sweep_rows(read_json(table_path), str(table_path))
        except SummaryError:  # half-written, damaged, or a column of another type
            sweep.damaged.append(table_path)
    return sweep


def sweep_expected(sweep: Sweep) -> Expected:
    """How long ``sweep`` (or the study, ``study-<scale>``) will take on this machine."""
    runs = RunIndex().list()
    if sweep.name.startswith("study-"):
        return expected_study(sweep.name.removeprefix("study-"), runs)
    return expected_sweep(sweep.name, runs, sweep.sets)


def sweep_state_text(sweep: Sweep) -> str:
    """One line on a study that is not running: finished, stopped, failed or not run yet."""
    n, done = sweep.total, sweep.cells_done
    if sweep.state == "done":
        return f"Finished: all {n} experiments are in the charts below."
    if sweep.state == "cancelled":
        return (f"Stopped after {done} of {n} experiments. Starting it again continues where it "
                "stopped (finished experiments are kept).")
    if sweep.state == "failed":
        return (f"Failed after {done} of {n} experiments; `{sweep.folder / 'log.txt'}` says "
                "why. Starting it again continues where it stopped.")
    if sweep.state == "ended":
        return (f"Its process ended without finishing, after {done} of {n} experiments (it was "
                "killed or ran out of memory). Starting it again continues where it stopped.")
    return f"Not run yet: {n} experiments, {expected_words(sweep_expected(sweep))}."


def sweep_progress_text(sweep: Sweep, cell_words: Callable[[str | None], str]) -> str:
    """The progress line of a running study; ``cell_words`` puts a cell's label in words."""
    if sweep.state == "queued":
        return "Waiting for its turn in the job queue…"
    return (f"{sweep.cells_done} of {sweep.total} experiments finished. Now: "
            f"{cell_words(sweep.current)}.")
