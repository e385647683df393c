"""The sweep table as types: one row per experiment of a sweep (``table.json`` /
``table.csv``), the contract between the sweeps that write it and the pages' study views
that read it."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from engine.analyses.results import Interval, SummaryError, _Block, _first_problem


def cell_parts(label: str | None) -> dict[str, str]:
    """A sweep cell's label (``aggregator=fedmedian, kind=min_max, seed=2``) as its settings,
    by the last part of each key (a value may itself hold ", ", as a list does)."""
    return dict(p.split("=", 1) for p in re.split(r", (?=\w+=)", label or "") if "=" in p)


class SweepRow(_Block):
    """One row of a sweep's table (``table.json`` / ``table.csv``): one experiment's
    settings, final sCT quality and attack results (``None`` where the experiment did not
    run that attack, or the table was written before the column existed).

    Columns per hospital or attack are extra keys, read with :meth:`column`:
    ``auc[<attack>][<hospital>]``, ``auc_pooled[<attack>]`` and
    ``inversion_ssim_body[<hospital>]``.
    """

    cell: str = ""
    overrides: str = ""
    run_id: str = ""
    preset: str | None = None
    # The settings that sweeps vary, from the run's config.
    dp_enabled: bool = False
    dp_level: str | None = None
    noise_multiplier: float | None = None
    epsilon: float | None = None  # reached ε; None: ∞ or no DP
    clip_norm: float | None = None
    secure_aggregation: bool = False
    aggregator: str | None = None
    pre_aggregator: str | None = None  # None: none, or a table from before the column
    prune_fraction: float | None = None
    loss: str | None = None
    norm: str | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    image_size: int | None = None
    # Final sCT quality: MAE (HU), PSNR (dB), SSIM.
    mae_hu: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    # Membership inference (the verdict's attack, patient level, pooled over hospitals).
    mia_attack: str | None = None
    patient_auc_pooled: float | None = None
    patient_auc_ci_pooled: Interval | None = None
    mia_verdict: str | None = None
    mia_verdict_attack: str | None = None
    # The global-model attack (what anyone who sees the released models can run), likewise.
    global_patient_auc_pooled: float | None = None
    global_patient_auc_ci_pooled: Interval | None = None
    # Poisoning: ``malicious`` and ``detected`` are hospital names separated by spaces.
    poison_kind: str | None = None
    malicious: str | None = None
    noise_std: float | None = None
    poison_target: str | None = None
    baseline_mae_hu: float | None = None
    mae_ratio: float | None = None
    detected: str | None = None
    # Gradient inversion: means over the attacked hospitals, and its controls.
    inversion_round: int | None = None
    inversion_ssim_body: float | None = None
    inversion_floor_ssim_body: float | None = None
    inversion_ssim: float | None = None
    inversion_psnr_db: float | None = None
    inversion_ssim_ct: float | None = None
    inversion_psnr_db_ct: float | None = None
    inversion_ssim_coarse: float | None = None
    inversion_verdict: str | None = None
    inversion_final_loss: float | None = None
    inversion_tv_weight: float | None = None
    inversion_adam: str | bool | None = None  # decode | simulate (a bool in older tables)
    inversion_iterations: int | None = None
    inversion_restarts: int | None = None
    calibration_ssim_body: float | None = None
    calibration_floor_ssim_body: float | None = None
    calibration_rate: float | None = None
    inversion_null_ssim_body: float | None = None
    # Backdoor: the attack, the server's update clipping, its effect and verdict.
    update_clip: str | None = None
    flame: bool | None = None
    fltrust: bool | None = None
    backdoor_attack: str | None = None
    backdoor_trigger: str | None = None
    backdoor_success_hu: float | None = None
    backdoor_success_rate: float | None = None
    backdoor_patients: int | None = None
    backdoor_patients_backdoored: int | None = None
    backdoor_null_success_hu: float | None = None
    backdoor_control_success_hu: float | None = None
    backdoor_clean_mae_ratio: float | None = None
    backdoor_defense_mae_ratio: float | None = None  # ÷ plain FedAvg's without the attacker
    backdoor_verdict: str | None = None
    # Privacy audit.
    audit_kind: str | None = None
    audit_bound: float | None = None
    audit_cap: float | None = None
    audit_canaries: int | None = None
    audit_confidence: float | None = None
    audit_verdict: str | None = None

    def column(self, name: str) -> Any:
        """The value of column ``name`` (a field or a per-hospital/attack column); None
        when the row has no such column."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)

    def table(self) -> dict[str, Any]:
        """The row as written to ``table.json``: the columns it was given, in their order."""
        return self.model_dump(exclude_unset=True)


def parse_sweep_rows(data: Any, source: str = "table.json") -> list[SweepRow]:
    """A sweep table (a list of row objects) → rows; :class:`SummaryError` naming the first
    row that is not one (a damaged file, or a column of another type)."""
    if not isinstance(data, list):
        raise SummaryError(f"{source} holds {type(data).__name__}, not a list of rows")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise SummaryError(f"{source}: row {i + 1} is {type(item).__name__}, not a row")
        try:
            rows.append(SweepRow.model_validate(item))
        except ValidationError as err:
            raise SummaryError(f"{source}: row {i + 1}: {_first_problem(err)}") from None
    return rows
