"""How long a preset, a sweep or the study will take on this machine, before it starts.

The catalogues give each experiment's wall time on the reference machine (2 quiet CPU cores,
``benchmarks/README.md``). This machine's speed is measured from the runs it finished: the
median, over its newest finished catalogue experiments, of their wall time
(``summary.json`` → ``timing.wall_s``) over the reference figure; a slower or busier
machine has a ratio above 1, and estimates scale with it. A preset that ran here before is
estimated from its own newest times. An experiment that already finished with the same
config costs nothing: sweeps and the study reuse it.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import Any

from engine.core.config import ConfigError, ExperimentConfig, config_hash
from engine.orchestration.presets import PRESETS, build_config
from engine.orchestration.study_catalogue import STUDY_MINUTES, study_cells
from engine.orchestration.sweep_catalogue import SWEEPS, Cell, sweep_cells, sweep_spec

# The newest finished runs whose times are pooled (older ones may have run on another machine
# or under another load).
NEWEST = 5


@dataclass(frozen=True)
class Expected:
    """The expected wall time of ``cells`` experiments: ``seconds`` for those still to run;
    ``reused`` already finished (no time). ``basis``: how many finished runs of this machine
    the figure rests on (0: the reference machine's figure as it is)."""

    seconds: float
    cells: int = 1
    reused: int = 0
    basis: int = 0

    @property
    def to_run(self) -> int:
        return self.cells - self.reused


@functools.lru_cache(maxsize=4096)
def _hash(preset: str, sets: tuple[str, ...]) -> str:
    # Validating a config takes a few ms; pages ask for the same cells on every rerun.
    return config_hash(build_config(preset, sets=list(sets)))


def _cell_hash(cell: Cell) -> str:
    return _hash(cell.preset, tuple(cell.sets))


@functools.lru_cache(maxsize=1)
def reference_seconds() -> dict[str, float]:
    """Config hash → wall time on the reference machine, of every experiment the catalogues
    name: a preset as it is, and each cell of a sweep (its share of the sweep's time).
    Computed once per process."""
    refs: dict[str, float] = {}
    for name, spec in SWEEPS.items():
        try:
            cells = sweep_cells(name)
            hashes = [_cell_hash(c) for c in cells]
        except ConfigError:  # a sweep that needs a value from the user (the what-if patient)
            continue
        for h in hashes:
            refs.setdefault(h, 60.0 * spec["minutes"] / len(cells))
    for name, preset in PRESETS.items():
        refs[_hash(name, ())] = 60.0 * preset["minutes"]
    return refs


def _done(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["state"] == "done" and r["config_hash"] and r["wall_s"]]


def speed_ratio(runs: list[dict[str, Any]]) -> tuple[float, int]:
    """(this machine's time ÷ the reference machine's, over the newest finished catalogue
    experiments of ``runs``: their median; how many it rests on). (1, 0) before any."""
    refs = reference_seconds()
    ratios = [float(r["wall_s"]) / refs[r["config_hash"]] for r in _done(runs)
              if r["config_hash"] in refs][:NEWEST]
    return (statistics.median(ratios), len(ratios)) if ratios else (1.0, 0)


def expected_configs(hashes: list[str], reference_s: list[float],
                     runs: list[dict[str, Any]]) -> Expected:
    """The expected time of the experiments whose config hashes are ``hashes`` and whose
    times on the reference machine are ``reference_s``, given the run index ``runs``
    (:meth:`engine.orchestration.store.RunIndex.list`, newest first): those not finished
    yet, times this machine's :func:`speed_ratio`."""
    finished = {r["config_hash"] for r in _done(runs)}
    todo = [s for h, s in zip(hashes, reference_s, strict=True) if h not in finished]
    ratio, basis = speed_ratio(runs)
    return Expected(ratio * sum(todo), len(hashes), len(hashes) - len(todo), basis)


def expected_cells(cells: list[Cell], reference_s: float,
                   runs: list[dict[str, Any]]) -> Expected:
    """:func:`expected_configs` of a sweep's or the study's ``cells``, whose time on the
    reference machine was measured as a whole (``reference_s``): each an equal share."""
    return expected_configs([_cell_hash(c) for c in cells],
                            [reference_s / len(cells)] * len(cells), runs)


def expected_preset(name: str, runs: list[dict[str, Any]]) -> Expected:
    """A new run of preset ``name`` as it is (a run starts anew, nothing is reused): the
    median time of the newest finished runs of the same config here, else the reference
    figure times this machine's :func:`speed_ratio`."""
    want = _hash(name, ())
    times = [float(r["wall_s"]) for r in _done(runs) if r["config_hash"] == want][:NEWEST]
    if times:
        return Expected(statistics.median(times), basis=len(times))
    ratio, basis = speed_ratio(runs)
    return Expected(ratio * 60.0 * PRESETS[name]["minutes"], basis=basis)


def expected_runs(configs: list[ExperimentConfig], base_preset: str,
                  runs: list[dict[str, Any]]) -> Expected:
    """New runs of ``configs``, each ``base_preset`` with overrides (a page's form): each at
    its catalogue figure where the catalogues name it, else at the base preset's."""
    refs, hashes = reference_seconds(), [config_hash(c) for c in configs]
    base = 60.0 * PRESETS[base_preset]["minutes"]
    return expected_configs(hashes, [refs.get(h, base) for h in hashes], runs)


def expected_sweep(name: str, runs: list[dict[str, Any]],
                   sets: list[str] | tuple = ()) -> Expected:
    """Sweep ``name`` with ``sets``: its cells not finished yet."""
    return expected_cells(sweep_cells(name, sets), 60.0 * sweep_spec(name)["minutes"], runs)


def expected_study(scale: str, runs: list[dict[str, Any]]) -> Expected:
    """The study at ``scale``: its experiments not finished yet."""
    return expected_cells([c for _, c in study_cells(scale)], 60.0 * STUDY_MINUTES[scale],
                          runs)
