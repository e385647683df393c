import functools
import itertools

import numpy as np
import pytest

from engine.core.metrics import mae_hu, psnr_db, sct_metrics, ssim


def head(n=2, size=48):
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    rng = np.random.default_rng(0)
    ct = np.where(mask, 40 + 30 * rng.normal(size=(size, size)), -1024).astype(np.float32)
    return (np.repeat(ct[None, None], n, 0), np.repeat(mask[None, None], n, 0))


def test_perfect_prediction():
    ct, mask = head()
    assert mae_hu(ct, ct, mask) == 0
    assert psnr_db(ct, ct, mask) == float("inf")
    assert ssim(ct, ct, mask) == pytest.approx(1.0)


def test_offset_gives_known_mae_and_psnr_and_ignores_outside_mask():
    ct, mask = head()
    sct = ct + 100.0
    sct[~mask] = 3000.0  # outside the mask must not count
    assert mae_hu(ct, sct, mask) == pytest.approx(100.0)
    assert psnr_db(ct, sct, mask) == pytest.approx(20 * np.log10(4024 / 100.0))
    assert ssim(ct, sct, mask) < 1.0


def test_clipping_to_synthrad_range_for_psnr():
    ct, mask = head()
    sct = ct.copy()
    sct[mask] = 10_000.0  # clipped to 3000 for PSNR, not for MAE
    mse = ((np.clip(ct[mask], -1024, 3000) - 3000.0) ** 2).mean()
    assert psnr_db(ct, sct, mask) == pytest.approx(10 * np.log10(4024**2 / mse))


def test_patient_average():
    ct, mask = head(n=2)
    sct = ct.copy()
    sct[1] += 200.0
    ids = np.array(["a", "b"], dtype=object)
    m = sct_metrics(ct, sct, mask, ids)
    assert m["mae_hu"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- leak test


@functools.cache
def _null_hospitals(seed: int, size: int = 48, spp: int = 12):
    """4 phantom hospitals (2 training patients of 12 slices each) and each one's reference
    patients (held-out and generated, of its scanner profile)."""
    from engine.core.config import DataConfig
    from engine.data.cohort import load_cohort, reference_patients
    data = DataConfig(source="phantom", centers=4, patients_per_center=2, heldout_per_center=2,
                      slices_per_patient=spp, image_size=size)
    cohort = load_cohort(data, seed)
    return cohort, [reference_patients(data, seed, cohort, a, None) for a in range(4)]


def _null_pairs(seed: int, n: int, spp: int = 12):
    """Every ordered pair (a, b) of the hospitals: hospital b's first n real slices offered as
    the "reconstruction" of hospital a's first n (they carry no information about a)."""
    cohort, refs = _null_hospitals(seed)
    levels = np.tile((np.arange(spp) + 0.5) / spp, 2)[:n]
    for a, b in itertools.permutations(range(4), 2):
        yield cohort.centers[a].train, cohort.centers[b].train, refs[a], levels


def _leak(recon_mri, truth, reference, levels, n: int, **kw) -> dict:
    from engine.core.units import hu_to_unit
    from engine.metrics import leak_test
    return leak_test(recon_mri, np.zeros_like(recon_mri), truth.mri[:n],
                     hu_to_unit(truth.ct_hu[:n]), truth.mask[:n], reference.mri,
                     hu_to_unit(reference.ct_hu), reference.mask,
                     truth_patients=truth.patient_ids[:n], truth_levels=levels,
                     attacker_patients=reference.patient_ids, **kw)


@pytest.mark.parametrize("n", [1, 4, 8, 24])
def test_another_hospitals_slices_are_not_a_leak(n):
    """The wrong-patient null: real slices of another hospital, offered as the
    reconstruction of an upload of n slices, are a leak in at most 5 % of the 12 ordered
    hospital pairs (here: none; the permutation test's level is 1 %). Matching the truth
    against the attacker's average brain called 2, 2, 1 and 5 of these 12 a leak."""
    got = [_leak(other.mri[:n], truth, reference, levels, n)
           for truth, other, reference, levels in _null_pairs(0, n)]
    assert all(g["n"] == n and g["reference_patients"] == 2 + 119 for g in got)
    assert sum(g["leak"] for g in got) <= 0.05 * len(got), [g["p_value"] for g in got]


def test_a_blurred_noisy_copy_of_the_upload_is_a_leak():
    """The same test is not blind: the originals blurred (σ 1.5 px) and noised (σ 0.15) are
    a leak at one and at eight slices per upload, by a gain well above the margin."""
    from scipy.ndimage import gaussian_filter
    for n in (1, 8):
        truth, _, reference, levels = next(_null_pairs(0, n))
        rng = np.random.default_rng(n)
        copy = np.clip(gaussian_filter(truth.mri[:n], (0, 0, 1.5, 1.5))
                       + rng.normal(0, 0.15, truth.mri[:n].shape), 0, 1)
        got = _leak(copy, truth, reference, levels, n)
        assert got["leak"] and got["p_value"] <= 0.01 and got["gain"] > 0.05, got


def test_batched_ssim_equals_skimages():
    """The leak test's many-pairs SSIM is skimage's map, pair by pair."""
    from skimage.metrics import structural_similarity

    from engine.core.reconstruction_metrics import _similarities
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 20, 24)), rng.random((4, 20, 24))
    mask = rng.random((4, 20, 24)) > 0.4
    whole, body = _similarities(a, b, mask)
    for i, j in itertools.product(range(3), range(4)):
        _, smap = structural_similarity(a[i], b[j], data_range=1.0, full=True)
        assert whole[i, j] == pytest.approx(smap.mean(), rel=1e-12, abs=1e-15)
        assert body[i, j] == pytest.approx(smap[mask[j]].mean(), rel=1e-12, abs=1e-15)


def test_leak_test_names_a_shape_that_does_not_match():
    from engine.metrics import leak_test
    a = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match=r"truth_mask has shape \(3, 8, 8\), expected"):
        leak_test(a, a, a, a, np.zeros((3, 8, 8)), a, a)
