"""Breakdown curves: each rule against its strongest attacker, as the attackers grow.

From a breakdown sweep's table (one row per run: rule, attack, attackers, seed, final error
÷ the same federation's clean error), for every rule and number of attackers f: each attack's
mean error ratio over seeds (95 % Student-t interval), the strongest attack (the highest
mean), and a verdict on the rule at that f, judged against that attack's interval (its mean
where there is one seed):

* ``broken``: the mean reaches ``BROKEN`` (the error doubled) and the interval lies above
  ``PROTECTED``;
* ``damaged``: the interval lies above ``PROTECTED`` (25 % worse);
* ``holds``: the interval lies within ``PROTECTED`` (every other attack tried had a lower
  mean), and one of the attacks tried, with the same attackers, hurt FedAvg beyond
  ``PROTECTED`` at every seed (the control: a rule "holds" only against an attack that
  works);
* ``attack_too_weak``: within ``PROTECTED``, but no attack tried hurt FedAvg at every seed
  either, so the cell says nothing of the rule (FedAvg itself: its own control);
* ``inconclusive``: the interval straddles ``PROTECTED``: the seeds disagree, more are
  needed.

The worst case of a rule is its cell with the highest ratio. Pure functions of
:class:`~engine.analyses.sweep_table.SweepRow` lists, so the page, the study report and the
tests share them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.analyses.poisoning import BROKEN, PROTECTED, mean_interval
from engine.analyses.sweep_table import SweepRow
from engine.core.config.robust import rule_key

VERDICTS = ("broken", "damaged", "holds", "attack_too_weak", "inconclusive")


@dataclass(frozen=True)
class AttackCell:
    """One attack against one rule with f attackers, over seeds."""

    kind: str
    ratios: tuple[float, ...]  # final MAE ÷ clean MAE, one per seed

    @property
    def mean(self) -> float:
        return float(np.mean(self.ratios))

    @property
    def interval(self) -> list[float] | None:
        return mean_interval(list(self.ratios))


@dataclass(frozen=True)
class BreakdownCell:
    """A rule with f attackers: every attack tried, the strongest, the verdict."""

    rule: str  # its rule_key: the aggregator, with its pre-aggregator (``nnm+fedmedian``)
    attackers: int
    attacks: tuple[AttackCell, ...]
    strongest: AttackCell
    fedavg: AttackCell | None  # the strongest attack's ratios against FedAvg, same f
    # Of the attacks tried here, the one that hurt FedAvg most (its ratios against FedAvg,
    # same f): what a "holds" rests on.
    control: AttackCell | None
    verdict: str


def attackers_of(row: SweepRow) -> int:
    """How many hospitals attacked in a sweep row (``malicious``: names, space-separated)."""
    return len((row.malicious or "").split())


def _cells(rows: list[SweepRow]) -> dict[tuple[str, int], dict[str, list[float]]]:
    out: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in rows:
        if r.poison_kind is None or r.mae_ratio is None or r.aggregator is None:
            continue
        out.setdefault((rule_key(r.aggregator, r.pre_aggregator), attackers_of(r)),
                       {}).setdefault(
            r.poison_kind, []).append(float(r.mae_ratio))
    return out


def verdict(strongest: AttackCell, control: AttackCell | None, rule: str) -> str:
    """The rule's verdict at one f against its strongest attack, with ``control`` the
    attack tried here that hurt FedAvg most (see the module)."""
    low, high = strongest.interval or (strongest.mean, strongest.mean)
    if low > PROTECTED:
        return "broken" if strongest.mean >= BROKEN else "damaged"
    if high > PROTECTED:
        return "inconclusive"
    hurt = (control is not None and rule != "fedavg"
            and min(control.ratios) > PROTECTED)
    return "holds" if hurt else "attack_too_weak"


def breakdown(rows: list[SweepRow]) -> list[BreakdownCell]:
    """Every (rule, f) of the sweep, rules in the order they first appear, f ascending."""
    cells = _cells(rows)
    out = []
    for (rule, f), attacks in sorted(cells.items(), key=lambda kv: (
            list(dict.fromkeys(k[0] for k in cells)).index(kv[0][0]), kv[0][1])):
        tried = tuple(AttackCell(kind, tuple(r)) for kind, r in attacks.items())
        strongest = max(tried, key=lambda a: a.mean)
        on_fedavg = {kind: AttackCell(kind, tuple(r))
                     for kind, r in cells.get(("fedavg", f), {}).items() if kind in attacks}
        control = max(on_fedavg.values(), key=lambda a: min(a.ratios), default=None)
        out.append(BreakdownCell(rule, f, tried, strongest, on_fedavg.get(strongest.kind),
                                 control, verdict(strongest, control, rule)))
    return out


def worst_cases(cells: list[BreakdownCell]) -> dict[str, BreakdownCell]:
    """Each rule's worst cell: the f and attack that hurt it most."""
    worst: dict[str, BreakdownCell] = {}
    for c in cells:
        if c.rule not in worst or c.strongest.mean > worst[c.rule].strongest.mean:
            worst[c.rule] = c
    return worst
