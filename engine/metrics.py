"""The public metric functions (implemented in :mod:`engine.core.metrics` for sCT quality,
:mod:`engine.core.attack_metrics` and :mod:`engine.core.reconstruction_metrics` for attacks).

sCT quality with the SynthRAD2023 conventions: :func:`volume_metrics` scores one patient's
``(Z, Y, X)`` volume as the challenge does (3-D SSIM); :func:`sct_metrics`,
:func:`patient_metrics`, :func:`mae_hu`, :func:`psnr_db` and :func:`ssim` score 2-D slice
stacks. Attack figures: :func:`roc_summary`, :func:`auc_score`, :func:`tpr_at_fpr`,
:func:`reconstruction_metrics`, :func:`template_metrics`, and the leak decision every
inversion verdict uses, :func:`leak_test` (a reconstruction against a permutation null that
gets the same matching advantage).
"""

from engine.core.attack_metrics import auc_score, roc_summary, tpr_at_fpr
from engine.core.metrics import (
    METRIC_KEYS,
    mae_hu,
    mean_over_patients,
    patient_metrics,
    psnr_db,
    sct_metrics,
    ssim,
    volume_metrics,
)
from engine.core.reconstruction_metrics import (
    LEAK_MARGIN,
    leak_test,
    reconstruction_metrics,
    template_metrics,
)

__all__ = [
    "LEAK_MARGIN",
    "METRIC_KEYS",
    "auc_score",
    "leak_test",
    "mae_hu",
    "mean_over_patients",
    "patient_metrics",
    "psnr_db",
    "reconstruction_metrics",
    "roc_summary",
    "sct_metrics",
    "ssim",
    "template_metrics",
    "tpr_at_fpr",
    "volume_metrics",
]
