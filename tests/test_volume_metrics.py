"""Volumetric sCT metrics with the SynthRAD2023 conventions, and the volumetric evaluation of
a run (``evaluation.volumetric``).

The reference is the challenge's ``functions/image_metrics.py`` (github.com/SynthRAD2023/
metrics, ``ImageMetrics``), re-computed here directly with scikit-image.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

import engine.core.metrics as core_metrics
from engine.analyses.results import parse_summary
from engine.analyses.summary import build_summary
from engine.core.config import ConfigError
from engine.core.units import unit_to_hu
from engine.data.nifti import save_patient_folder
from engine.data.phantom import example_patient_volume
from engine.data.preprocess import normalise_mri
from engine.data.types import Cohort, PatientVolume
from engine.federation.protocol import FederationResult
from engine.learning.inference import native_sct_hu
from engine.metrics import volume_metrics
from engine.orchestration.experiment import execute
from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run

LO, HI = -1024.0, 3000.0


def challenge_metrics(ct, sct, mask):
    """The challenge's scoring of one patient: arrays cast to float32 (its SimpleITK loader),
    mask binarised with > 0; MAE over the mask unclipped; PSNR over the mask after clipping
    to [−1024, 3000], data range 4024; SSIM of the clipped volumes with −1024 outside the
    mask, shifted by +1024, mean of the map inside the mask after ``crop(map, 3)``."""
    gt, pred = ct.astype(np.float32), sct.astype(np.float32)
    m = np.where(mask.astype(np.float32) > 0, 1.0, 0.0)
    mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    gt_c, pred_c = np.clip(gt, LO, HI), np.clip(pred, LO, HI)
    psnr = peak_signal_noise_ratio(gt_c[m == 1], pred_c[m == 1], data_range=HI - LO)
    gt_s = np.where(m == 0, LO, gt_c).astype(np.float32) - LO
    pred_s = np.where(m == 0, LO, pred_c).astype(np.float32) - LO
    _, ssim_map = structural_similarity(gt_s, pred_s, data_range=HI - LO, full=True)
    ssim = crop(ssim_map, 3)[crop(m, 3).astype(bool)].mean(dtype=np.float64)
    return {"mae_hu": float(mae), "psnr_db": float(psnr), "ssim": float(ssim)}


def head(shape=(20, 40, 36), seed=0):
    """A head-like ellipsoid: integer HU (as a stored CT), bone above 3000 and air below
    −1024 inside the body, an sCT that differs everywhere (inside and outside the mask)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    r2 = sum(((a - ci) / (0.45 * s)) ** 2 for a, ci, s in zip((z, y, x), c, shape, strict=True))
    mask = r2 < 1.0
    ct = np.where(mask, 40 + 25 * rng.normal(size=shape), -1000.0)
    ct[mask & (r2 > 0.7)] = 1700.0
    ct[mask & (rng.random(shape) < 0.03)] = 3400.0  # above the dynamic range
    ct[mask & (rng.random(shape) < 0.03)] = -1500.0  # below it
    ct = np.round(ct).astype(np.float32)
    sct = ct + rng.normal(0, 80, shape) + 30 * np.sin(x / 4)
    sct[~mask] = rng.normal(-900, 150, (~mask).sum())
    sct[mask & (rng.random(shape) < 0.02)] = 3600.0
    return ct, sct.astype(np.float32), mask


# --------------------------------------------------------------------------- (a) the reference


@pytest.mark.parametrize("shape", [(20, 40, 36), (7, 30, 9), (11, 7, 25)])
def test_matches_the_challenge_code(shape):
    ct, sct, mask = head(shape)
    assert (ct > HI).any() and (ct < LO).any() and (sct > HI).any()
    got, want = volume_metrics(ct, sct, mask), challenge_metrics(ct, sct, mask)
    assert set(got) == {"mae_hu", "psnr_db", "ssim"}
    for key in got:
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
    assert 0 < got["ssim"] < 1 and got["mae_hu"] > 0


def test_block_by_block_equals_the_whole_volume(monkeypatch):
    """The SSIM map is computed in blocks of planes with a 3-plane halo: tiny blocks (two
    planes each) must give the challenge's value too, and so must a non-binary float mask
    and a float64 or int16 input."""
    ct, sct, mask = head((17, 24, 20), seed=3)
    want = challenge_metrics(ct, sct, mask)
    monkeypatch.setattr(core_metrics, "_BLOCK_VOXELS", 2 * 24 * 20)
    got = volume_metrics(ct.astype(np.int16), sct.astype(np.float64), mask * 0.5)
    for key in got:
        assert got[key] == pytest.approx(want[key], abs=1e-4), key


def test_axis_order_does_not_matter():
    ct, sct, mask = head((9, 16, 12), seed=4)
    base = volume_metrics(ct, sct, mask)
    moved = volume_metrics(*(np.flip(a.transpose(2, 0, 1), 1) for a in (ct, sct, mask)))
    for key in base:
        assert moved[key] == pytest.approx(base[key], abs=1e-9), key


# --------------------------------------------------------------------------- (b) by hand


def test_identical_volumes():
    ct, _, mask = head()
    got = volume_metrics(ct, ct.copy(), mask)
    assert got["mae_hu"] == 0.0
    assert got["psnr_db"] == math.inf  # the challenge's skimage call divides by zero: inf
    assert got["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_inside_the_mask():
    ct, _, mask = head()
    ct = np.clip(ct, -1000, 2900)  # the offset stays inside the dynamic range
    sct = np.where(mask, ct + 10, 500.0)  # outside the mask: far off, must not count
    got = volume_metrics(ct, sct, mask)
    assert got["mae_hu"] == 10.0
    assert got["psnr_db"] == pytest.approx(20 * math.log10(4024 / 10))
    assert 0.99 < got["ssim"] < 1.0  # outside values are replaced by −1024 for SSIM


# --------------------------------------------------------------------------- (c) bad inputs


def _bad_inputs():
    ct, sct, mask = head((9, 10, 11))
    nan, inf = sct.copy(), ct.copy()
    nan[4, 5, 5], inf[0, 0, 0] = np.nan, np.inf
    border = np.zeros_like(mask)
    border[:, :2] = True
    return [
        ((ct[0], sct[0], mask[0]), "3-D"),
        ((ct, sct[:, :, :10], mask), "shapes differ"),
        ((ct[:6], sct[:6], mask[:6]), "at least 7 voxels per axis"),
        ((ct, sct, np.zeros_like(mask)), "mask is empty"),
        ((ct, nan, mask), "sct_hu holds NaN"),
        ((inf, sct, mask), "ct_hu holds NaN or infinite"),
        ((ct, sct, border), "inside the volume's border"),
        ((ct.astype(str), sct, mask), "real numbers"),
        ((ct, sct.astype(complex), mask), "real numbers"),
    ]


@pytest.mark.parametrize("args,needle", _bad_inputs())
def test_invalid_inputs_are_one_line_value_errors(args, needle):
    with pytest.raises(ValueError) as err:
        volume_metrics(*args)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_phantom_volume_needs_seven_slices():
    with pytest.raises(ConfigError, match="slices_per_patient ≥ 7"):
        build_config("smoke", sets=["evaluation.volumetric=true"])


# --------------------------------------------------------------------------- native grid


class _Identity(torch.nn.Module):
    """A "model" whose sCT (normalised units) is its MRI input."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.zero


def test_native_sct_undoes_padding_resampling_and_flips():
    """Folder data: every slice is cut like the training slices (square padding, resampling,
    anterior up) and put back: an identity model returns the normalised MRI on the native
    (X, Y, Z) grid, not flipped or shifted (differences are interpolation only)."""
    nx, ny, nz = 50, 70, 12
    x, y, z = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    r2 = ((x - 25) / 22) ** 2 + ((y - 35) / 30) ** 2
    mask = r2 < 1
    mri = np.where(mask, 100 + 50 * np.sin(x / 6) + 30 * np.cos(y / 9) + x + 2 * z, 0)
    volume = PatientVolume("p", mri.astype(np.float32), np.zeros(mri.shape, np.float32),
                           mask, (1.0, 1.0, 1.0))
    sct = native_sct_hu(_Identity(), volume, 64)
    want = unit_to_hu(normalise_mri(volume.mri, mask))
    assert sct.shape == (nx, ny, nz) and (sct[~mask] == LO).all()
    inner = r2 < 0.7
    assert np.abs(sct - want)[inner].mean() < 10
    assert np.abs(np.flip(sct, 1) - want)[inner].mean() > 300


# --------------------------------------------------------------------------- (d) a real run


def test_smoke_run_writes_volumetric_figures(runs_dir):
    cfg = build_config("smoke", sets=["evaluation.volumetric=true",
                                      "data.slices_per_patient=8", "data.unseen_center=true",
                                      "data.unseen_patients=1"])
    summary = execute(create_run(cfg, runs_dir))
    assert summary is not None
    fed = summary["federation"]
    vol, unseen = fed["final_volumetric"], fed["unseen_center_volumetric"]
    centers = [f"center-{c}" for c in range(cfg.data.centers)]
    assert sorted(vol["per_center"]) == centers
    groups = [vol, unseen, *vol["per_center"].values()]
    for group in groups:
        patients = group["patients"]
        assert group["n"] == len(patients) >= 1
        for figures in (group, *patients.values()):
            assert all(math.isfinite(figures[k]) for k in ("mae_hu", "psnr_db", "ssim"))
            assert 0 < figures["ssim"] <= 1 and figures["mae_hu"] > 0
    assert vol["n"] == cfg.data.centers * cfg.data.heldout_per_center
    assert unseen["n"] == 1
    # Phantom slices are the native grid: the pooled MAE is the 2-D one (same voxels).
    assert vol["mae_hu"] == pytest.approx(fed["final"]["mae_hu"], rel=1e-5)
    assert summary["timing"]["volumetric_s"] > 0
    typed = parse_summary(summary)
    assert typed.federation.final_volumetric.per_center["center-0"].n == 1
    assert typed.federation.unseen_center_volumetric.n == 1


def test_volumetric_off_writes_null():
    summary = build_summary(build_config("smoke"), Cohort([]), FederationResult([]), 1.0, 0.5,
                            10, {})
    fed = summary["federation"]
    assert fed["final_volumetric"] is None and fed["unseen_center_volumetric"] is None
    assert "volumetric_s" not in summary["timing"]
    typed = parse_summary(summary)
    assert typed.federation.final_volumetric is None
    assert typed.federation.unseen_center_volumetric is None


def test_folder_run_scores_native_volumes(tmp_path, runs_dir):
    """SynthRAD2023-layout data: held-out and unseen patients are read again and scored on
    their own (non-square, not resampled) grid, CT not clipped."""
    root = tmp_path / "brain"
    for letter in "ABCD":
        for k in range(3 if letter != "D" else 1):
            v = example_patient_volume(1, ord(letter) - ord("A"), k, image_size=40, n_slices=9)
            ct = v.ct_hu.copy()
            ct[v.mask & (ct > 1500)] += 1600  # bone above 3000 HU: counts for MAE unclipped
            v = replace(v, patient_id=f"1B{letter}00{k}", mri=v.mri[:, 3:37], ct_hu=ct[:, 3:37],
                        mask=v.mask[:, 3:37])
            save_patient_folder(v, root / v.patient_id)
    cfg = build_config("smoke", sets=["evaluation.volumetric=true", "data.source=nifti",
                                      f"data.path={root}", "data.unseen_center=true",
                                      "data.unseen_patients=1", "federation.rounds=2"])
    summary = execute(create_run(cfg, runs_dir))
    assert summary is not None
    typed = parse_summary(summary).federation
    vol, unseen = typed.final_volumetric, typed.unseen_center_volumetric
    assert sorted(vol.patients) == ["1BA002", "1BB002", "1BC002"]
    assert list(unseen.patients) == ["1BD000"] and unseen.n == 1
    for m in (*vol.patients.values(), *unseen.patients.values()):
        assert all(math.isfinite(x) for x in (m.mae_hu, m.psnr_db, m.ssim)) and 0 < m.ssim < 1
