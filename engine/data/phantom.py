"""Multi-center brain MRI/CT phantoms with real anatomy.

Anatomy comes from the MNI152 2009a maps bundled inside the nilearn wheel (GM, WM; no
download). The template is skull-stripped, so the head around the brain is derived: the
intracranial volume (ICV) is the brain closed and hole-filled; CSF fills the ICV where there
is no GM/WM; skull tables, diploë, fat and skin are shells at a signed distance from the ICV
surface. MNI152 template: Copyright (C) 1993–2009 Louis Collins, McConnell Brain Imaging
Centre, Montreal Neurological Institute, McGill University (permissive notice in README.md).

Each patient is the template under a random affine, a smooth elastic deformation,
ventricle enlargement, cortical atrophy, skull/scalp thickness changes, a per-patient tissue
texture shared by MRI and CT, a bone-marrow density pattern and small calcifications that are
strong on CT and faint on T1 MRI, and an optional lesion. Each center applies its own scanner
profile: MRI gain, gamma, GM/WM contrast, bias field, Rician noise, blur, field of view and
MR/CT misregistration; CT offset, noise and kernel blur. Everything is deterministic for a
seed: a patient depends only on ``(seed, center, patient index)``.

Units: MRI is normalised per patient to [0, 1] (robust min-max, as in FedSynthCT-Brain); CT
is in HU with −1024 outside the body.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.units import HU_MAX, HU_MIN
from engine.data.preprocess import normalise_mri
from engine.data.types import CenterData, Cohort, PatientVolume, SliceSet

# Valid axial range of the template without a skull base (MNI z, mm).
Z_RANGE_MM = (-20.0, 70.0)
# Brain centre in MNI space (mm), used for the ventricle warp and the field of view.
BRAIN_CENTER_MM = np.array([0.0, -18.0, 18.0])

# T1-weighted intensity (before the center profile) and CT value (HU) per tissue.
TISSUES = ("air", "csf", "gm", "wm", "lesion", "cortical", "diploe", "fat", "skin")
T1_VALUE = {
    "air": 0.0, "csf": 0.18, "gm": 0.55, "wm": 0.85, "lesion": 0.35,
    "cortical": 0.05, "diploe": 0.75, "fat": 1.0, "skin": 0.6,
}
CT_HU_VALUE = {
    "air": -1000.0, "csf": 8.0, "gm": 38.0, "wm": 27.0, "lesion": 30.0,
    "cortical": 1700.0, "diploe": 650.0, "fat": -95.0, "skin": 45.0,
}
# Shell thicknesses outside the ICV surface, inner to outer (mm).
SHELLS_MM = (("cortical", 1.8), ("diploe", 2.8), ("cortical", 1.8), ("fat", 3.5), ("skin", 2.0))
_CACHE_VERSION = "v1"


# --------------------------------------------------------------------------- template


@dataclass(frozen=True)
class Template:
    """Template fields on the 1 mm MNI grid, stored as ``(C, Z, Y, X)`` float32.

    Channels: GM fraction, WM fraction, ICV fraction, signed distance to the ICV surface
    (mm, positive outside). ``origin_mm`` is the MNI coordinate of voxel (0, 0, 0) in x, y, z.
    """

    fields: torch.Tensor
    origin_mm: tuple[float, float, float]
    shape_xyz: tuple[int, int, int]


def _cache_dir() -> Path:
    root = os.environ.get("FEDSCT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fedsct"
    )
    return Path(root)


def _build_template_arrays() -> dict[str, np.ndarray]:
    # Deliberately lazy: nilearn is only needed once, to build the cached template.
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template
    from scipy import ndimage as ndi

    gm_img = load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = (gm + wm) > 0.2
    ball = ndi.iterate_structure(ndi.generate_binary_structure(3, 1), 6)
    icv = ndi.binary_fill_holes(ndi.binary_closing(brain, structure=ball))
    signed = ndi.distance_transform_edt(~icv) - ndi.distance_transform_edt(icv)
    return {
        "gm": gm.astype(np.float16),
        "wm": wm.astype(np.float16),
        "icv": icv.astype(np.float16),
        "signed_mm": signed.astype(np.float16),
        "origin_mm": gm_img.affine[:3, 3].astype(np.float64),
    }


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Derived MNI152 tissue fields; built once (~8 s) and cached on disk (``FEDSCT_CACHE``)."""
    path = _cache_dir() / f"mni152_tissues_{_CACHE_VERSION}.npz"
    arrays: dict[str, np.ndarray] | None = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            arrays = None  # a damaged cache is rebuilt, never trusted
    if arrays is None:
        arrays = _build_template_arrays()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    stack = np.stack([arrays[k] for k in ("gm", "wm", "icv", "signed_mm")]).astype(np.float32)
    # (C, X, Y, Z) → (C, Z, Y, X): grid_sample's (D, H, W) with grid (x, y, z) order.
    fields = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 2, 1)))
    origin = tuple(float(v) for v in arrays["origin_mm"])
    shape_xyz = tuple(int(s) for s in stack.shape[1:])
    return Template(fields, origin, shape_xyz)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class CenterProfile:
    """A hospital's scanner characteristics (what makes the federation heterogeneous)."""

    mri_gain: float
    mri_gamma: float
    gm_wm_contrast: float
    bias_amplitude: float
    rician_sigma: float
    mri_blur_mm: float
    fov_mm: float
    misregistration_mm: float
    ct_offset_hu: float
    ct_noise_hu: float
    ct_blur_mm: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def center_profile(seed: int, center: int) -> CenterProfile:
    """Deterministic scanner profile of ``center`` (0-based) for ``seed``."""
    rng = np.random.default_rng([seed, 7919, center])
    u = rng.uniform
    return CenterProfile(
        mri_gain=u(0.8, 1.2),
        mri_gamma=u(0.85, 1.15),
        gm_wm_contrast=u(0.8, 1.2),
        bias_amplitude=u(0.0, 0.2),
        rician_sigma=u(0.01, 0.04),
        mri_blur_mm=u(0.0, 0.8),
        fov_mm=u(220.0, 250.0),
        misregistration_mm=u(0.0, 1.5),
        ct_offset_hu=u(-15.0, 15.0),
        ct_noise_hu=u(3.0, 12.0),
        ct_blur_mm=u(0.0, 0.7),
    )


# --------------------------------------------------------------------------- one patient


def _smooth_field(
    gen: torch.Generator, channels: int, control: int, points_norm: torch.Tensor
) -> torch.Tensor:
    """Random smooth field sampled at ``points_norm`` ``(1, D, H, W, 3)`` in [-1, 1].

    Returns ``(channels, D, H, W)`` with unit-ish amplitude; ``control`` sets the smoothness
    (control points per axis, cubic-like via trilinear sampling of a blurred lattice).
    """
    lattice = torch.randn(1, channels, control, control, control, generator=gen)
    lattice = F.avg_pool3d(F.pad(lattice, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    lattice = lattice / lattice.std().clamp_min(1e-6)
    return F.grid_sample(lattice, points_norm, align_corners=True, padding_mode="border")[0]


def _gaussian_blur2d(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Blur ``(N, 1, H, W)`` with an isotropic Gaussian of ``sigma_px`` pixels."""
    if sigma_px < 0.15:
        return x
    radius = max(1, int(math.ceil(3 * sigma_px)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma_px**2))
    k = (k / k.sum()).to(x.dtype)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def _shell(distance_mm: torch.Tensor, inner: float, outer: float, soft: float) -> torch.Tensor:
    return torch.sigmoid((distance_mm - inner) / soft) - torch.sigmoid((distance_mm - outer) / soft)


@dataclass(frozen=True)
class _Anatomy:
    """A patient's random anatomy and tissue detail, drawn once and shared by MRI and CT.

    ``texture`` is ``(2, D, H, W)`` (MRI, CT detail), ``bone_texture`` ``(D, H, W)`` clamped
    to ±2.5; ``calcifications`` are ``(centre mm, radius mm, HU)``; ``lesion`` is
    ``(centre mm, radius mm)`` or ``None``. ``thickness``/``bone_density`` are factors,
    ``atrophy`` the fraction of GM lost.
    """

    texture: torch.Tensor
    thickness: float
    atrophy: float
    bone_density: float
    bone_texture: torch.Tensor
    calcifications: list[tuple[torch.Tensor, float, float]]
    lesion: tuple[torch.Tensor, float] | None


def _slice_points(
    rng: np.random.Generator, fov_mm: float, size: int, n_slices: int
) -> torch.Tensor:
    """Output sampling points in patient space: axial slices, anterior at the top.

    Returns ``(D, S, S, 3)`` coordinates (x, y, z) in mm, ``D`` = ``n_slices``.
    """
    z_lo, z_hi = Z_RANGE_MM
    zs = np.linspace(z_lo, z_hi, n_slices + 2)[1:-1] if n_slices > 1 else np.array([25.0])
    zs = zs + rng.uniform(-2.0, 2.0)
    half = fov_mm / 2
    px = (np.arange(size) + 0.5) / size * fov_mm - half
    gx = torch.tensor(px, dtype=torch.float32).view(1, 1, -1).expand(len(zs), size, size)
    gy = (BRAIN_CENTER_MM[1] - torch.tensor(px, dtype=torch.float32)).view(1, -1, 1)
    gy = gy.expand(len(zs), size, size)
    gz = torch.tensor(zs, dtype=torch.float32).view(-1, 1, 1).expand(len(zs), size, size)
    return torch.stack([gx, gy, gz], dim=-1)  # (D, H, W, 3) mm, patient space


def _patient_to_template(rng: np.random.Generator, pts: torch.Tensor) -> torch.Tensor:
    """Map patient-space points ``(D, H, W, 3)`` mm to template space (mm, same shape).

    A random rotation and scaling about the brain centre, a ventricle-enlarging radial
    warp and a random translation.
    """
    c = torch.tensor(BRAIN_CENTER_MM, dtype=torch.float32)
    ax, ay, az = np.deg2rad(rng.uniform([-4, -4, -8], [4, 4, 8]))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    scale = np.diag(1.0 / rng.uniform(0.9, 1.1, size=3))
    a = torch.tensor(rz @ ry @ rx @ scale, dtype=torch.float32)
    rel = pts - c
    r2 = (rel**2).sum(-1, keepdim=True)
    ventricle = float(rng.uniform(0.0, 0.25))
    rel = rel * (1 - ventricle * torch.exp(-r2 / (2 * 25.0**2)))
    return rel @ a.T + c + torch.tensor(rng.uniform(-3, 3, size=3), dtype=torch.float32)


def _template_grid(tpl: Template, p: torch.Tensor) -> torch.Tensor:
    """Template-space points ``(D, H, W, 3)`` mm → grid_sample coordinates ``(1, D, H, W, 3)``."""
    extent = torch.tensor(
        [tpl.shape_xyz[0] - 1, tpl.shape_xyz[1] - 1, tpl.shape_xyz[2] - 1], dtype=torch.float32
    )
    origin = torch.tensor(tpl.origin_mm, dtype=torch.float32)
    return ((p - origin) / extent * 2 - 1)[None]  # (1, D, H, W, 3)


def _deformed_points(
    rng: np.random.Generator,
    gen: torch.Generator,
    tpl: Template,
    tpl_pts: torch.Tensor,
    misregistration_mm: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the elastic deformation (MRI) and the MR/CT misregistration shift (CT).

    Returns ``(mri_pts, ct_pts, norm)``: MRI and CT sampling points ``(D, H, W, 3)`` in
    template mm, and the undeformed points on the grid_sample scale ``(1, D, H, W, 3)``.
    """
    norm = _template_grid(tpl, tpl_pts)
    elastic = _smooth_field(gen, 3, 6, norm).permute(1, 2, 3, 0) * float(rng.uniform(1.0, 3.0))
    mri_pts = tpl_pts + elastic
    shift_dir = rng.normal(size=3)
    shift = shift_dir / np.linalg.norm(shift_dir) * misregistration_mm
    ct_pts = mri_pts + torch.tensor(shift, dtype=torch.float32)
    return mri_pts, ct_pts, norm


def _sample_template(tpl: Template, mri_pts: torch.Tensor, ct_pts: torch.Tensor) -> torch.Tensor:
    """Template fields at the MRI then the CT points: ``(4, 2D, H, W)`` (GM, WM, ICV, mm)."""
    both = torch.cat([_template_grid(tpl, mri_pts), _template_grid(tpl, ct_pts)], dim=1)
    return F.grid_sample(
        tpl.fields[None], both, mode="bilinear", padding_mode="border", align_corners=True
    )[0]  # (4, 2D, H, W)


def _draw_anatomy(
    rng: np.random.Generator, gen: torch.Generator, norm: torch.Tensor, lesion_probability: float
) -> _Anatomy:
    """Draw the patient's texture, skull/atrophy factors, calcifications and lesion."""
    texture = _smooth_field(gen, 2, 14, norm)  # per-patient tissue detail, shared by MRI/CT
    thickness = float(rng.uniform(0.8, 1.25))
    atrophy = float(rng.uniform(0.0, 0.2))
    bone_density = float(rng.uniform(0.9, 1.1))
    # Marrow/trabecular density and small calcifications differ between patients and barely
    # show on T1: the part of a CT a network can only get right for patients it has seen.
    bone_texture = _smooth_field(gen, 1, 28, norm)[0].clamp(-2.5, 2.5)
    calcifications = [
        (torch.tensor(rng.uniform([-35, -50, 0], [35, 35, 45]), dtype=torch.float32),
         float(rng.uniform(1.5, 3.0)), float(rng.uniform(150.0, 600.0)))
        for _ in range(int(rng.poisson(3)))
    ]
    lesion = None
    if rng.uniform() < lesion_probability:
        lesion_center = torch.tensor(
            rng.uniform([-40, -60, 0], [40, 40, 50]), dtype=torch.float32
        )
        lesion = (lesion_center, float(rng.uniform(6.0, 15.0)))
    return _Anatomy(texture, thickness, atrophy, bone_density, bone_texture, calcifications,
                    lesion)


def _tissue_fractions(
    fields: torch.Tensor, at: torch.Tensor, anatomy: _Anatomy
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-tissue fractions ``(D, H, W)`` from sampled template ``fields`` ``(4, D, H, W)``.

    ``at`` are the sampling points ``(D, H, W, 3)`` mm (for the lesion). Returns the
    fractions by tissue name and the soft body mask ``(D, H, W)`` in [0, 1].
    """
    gm, wm, icv, signed = fields
    gm = gm * (1 - anatomy.atrophy)
    frac = {"gm": gm, "wm": wm, "csf": (icv - gm - wm).clamp_min(0)}
    if anatomy.lesion is not None:
        lesion_center, lesion_radius = anatomy.lesion
        dist = (at - lesion_center).norm(dim=-1)
        lesion = torch.sigmoid((lesion_radius - dist) / 1.5) * (gm + wm)
        frac["gm"] = gm * (1 - lesion / (gm + wm).clamp_min(1e-6))
        frac["wm"] = wm * (1 - lesion / (gm + wm).clamp_min(1e-6))
        frac["lesion"] = lesion
    outside = 1 - icv.clamp(0, 1)
    edge = 0.0
    for name, width in SHELLS_MM:
        w = width * anatomy.thickness
        frac[name] = frac.get(name, 0) + _shell(signed, edge, edge + w, 0.4) * outside
        edge += w
    body = torch.sigmoid((edge - signed) / 0.4)
    frac["air"] = (1 - body).clamp_min(0)
    return frac, body


def _tissue_images(
    profile: CenterProfile,
    anatomy: _Anatomy,
    mri_frac: dict[str, torch.Tensor],
    mri_pts: torch.Tensor,
    ct_frac: dict[str, torch.Tensor],
    ct_pts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-free MRI (T1 units) and CT (HU), each ``(D, H, W)``, from tissue fractions.

    MRI gets the center's GM/WM contrast; both get the patient texture, bone pattern and
    calcifications (strong on CT, faint on T1).
    """
    t1 = dict(T1_VALUE)
    mid = (t1["gm"] + t1["wm"]) / 2
    t1["gm"] = mid - (mid - t1["gm"]) * profile.gm_wm_contrast
    t1["wm"] = mid + (t1["wm"] - mid) * profile.gm_wm_contrast
    mri = sum(mri_frac[k] * t1[k] for k in mri_frac)
    brainish = mri_frac["gm"] + mri_frac["wm"]
    mri = (mri * (1 + 0.06 * anatomy.texture[0] * brainish)
           + 0.04 * anatomy.bone_texture * mri_frac["diploe"])
    bone = anatomy.bone_density * (1 + 0.25 * anatomy.bone_texture)
    ct = sum(ct_frac[k] * CT_HU_VALUE[k] * (bone if k in ("cortical", "diploe") else 1)
             for k in ct_frac)
    ct = ct + 6.0 * anatomy.texture[1] * (ct_frac["gm"] + ct_frac["wm"])
    inside = 1 - ct_frac["air"]
    for centre, radius, hu in anatomy.calcifications:
        spot = torch.sigmoid((radius - (ct_pts - centre).norm(dim=-1)) / 0.5)
        ct = ct + hu * spot * inside
        mri = mri * (1 - 0.12 * torch.sigmoid((radius - (mri_pts - centre).norm(dim=-1)) / 0.5))
    return mri, ct


def _mri_scanner_effects(
    gen: torch.Generator, profile: CenterProfile, mri: torch.Tensor, norm: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Bias field, gain, gamma, blur and Rician noise on the MRI ``(D, S, S)``."""
    bias = _smooth_field(gen, 1, 3, norm)[0]
    mri = mri * (1 + profile.bias_amplitude * bias.clamp(-2, 2))
    mri = (mri.clamp_min(0) * profile.mri_gain) ** profile.mri_gamma
    mm_per_px = profile.fov_mm / size
    mri = _gaussian_blur2d(mri[:, None], profile.mri_blur_mm / mm_per_px)[:, 0]
    sigma = profile.rician_sigma * profile.mri_gain
    n1 = torch.randn(mri.shape, generator=gen) * sigma
    n2 = torch.randn(mri.shape, generator=gen) * sigma
    return torch.sqrt((mri + n1) ** 2 + n2**2)


def _ct_scanner_effects(
    gen: torch.Generator, profile: CenterProfile, ct: torch.Tensor, size: int
) -> torch.Tensor:
    """Kernel blur, HU offset and Gaussian noise (HU) on the CT ``(D, S, S)``."""
    mm_per_px = profile.fov_mm / size
    ct = _gaussian_blur2d(ct[:, None], profile.ct_blur_mm / mm_per_px)[:, 0]
    return ct + profile.ct_offset_hu + torch.randn(ct.shape, generator=gen) * profile.ct_noise_hu


def _slice_set(
    mri: torch.Tensor, ct: torch.Tensor, mask: torch.Tensor, pid: str
) -> SliceSet:
    """Normalise the MRI to [0, 1], clip the CT to HU range (air outside ``mask``)."""
    mask_np = mask.numpy()
    mri_np = normalise_mri(mri.numpy(), mask_np)
    ct_np = np.where(mask_np, np.clip(ct.numpy(), HU_MIN, HU_MAX), HU_MIN).astype(np.float32)
    ids = np.array([pid] * len(mask_np), dtype=object)
    return SliceSet(mri_np[:, None], ct_np[:, None], mask_np[:, None], ids)


def phantom_patient(
    seed: int,
    center: int,
    patient: int,
    *,
    image_size: int,
    n_slices: int,
    profile: CenterProfile | None = None,
    lesion_probability: float = 0.3,
) -> SliceSet:
    """Generate one patient's paired axial slices ``(n_slices, 1, S, S)``.

    The patient id is ``"c{center}p{patient:03d}"``. MRI is normalised to [0, 1], CT in HU.
    """
    tpl = load_template()
    profile = profile or center_profile(seed, center)
    rng = np.random.default_rng([seed, center, patient])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    pts = _slice_points(rng, profile.fov_mm, image_size, n_slices)
    tpl_pts = _patient_to_template(rng, pts)
    mri_pts, ct_pts, norm = _deformed_points(rng, gen, tpl, tpl_pts, profile.misregistration_mm)
    sampled = _sample_template(tpl, mri_pts, ct_pts)
    d = len(pts)
    anatomy = _draw_anatomy(rng, gen, norm, lesion_probability)
    mri_frac, body = _tissue_fractions(sampled[:, :d], mri_pts, anatomy)
    ct_frac, ct_body = _tissue_fractions(sampled[:, d:], ct_pts, anatomy)
    mri, ct = _tissue_images(profile, anatomy, mri_frac, mri_pts, ct_frac, ct_pts)
    mri = _mri_scanner_effects(gen, profile, mri, norm, image_size)
    ct = _ct_scanner_effects(gen, profile, ct, image_size)
    mask = (ct_body > 0.5) & (body > 0.5)
    return _slice_set(mri, ct, mask, f"c{center}p{patient:03d}")


# --------------------------------------------------------------------------- cohort


def example_patient_volume(seed: int, center: int, patient: int, *, image_size: int = 96,
                           n_slices: int = 32) -> PatientVolume:
    """A phantom patient of ``center`` as a co-registered volume, for what-if uploads.

    Returns ``(X, Y, Z)`` RAS volumes (MRI in [0, 1], CT in HU) on a grid of
    ``fov/image_size`` mm in-plane and ``Z_RANGE_MM / n_slices`` mm between slices: the
    layout a scanner export has, so it goes through the same loading path as a real upload.
    """
    profile = center_profile(seed, center)
    sl = phantom_patient(seed, center, patient, image_size=image_size, n_slices=n_slices,
                         profile=profile)

    def volume(a: np.ndarray) -> np.ndarray:  # inverse of the (Z, Y flipped, X) slice order
        return np.ascontiguousarray(np.flip(a[:, 0], axis=1).transpose(2, 1, 0))

    in_plane = profile.fov_mm / image_size
    return PatientVolume(sl.patient_ids[0], volume(sl.mri).astype(np.float32),
                         volume(sl.ct_hu).astype(np.float32), volume(sl.mask).astype(bool),
                         (in_plane, in_plane, (Z_RANGE_MM[1] - Z_RANGE_MM[0]) / n_slices))


def phantom_cohort(
    seed: int,
    *,
    centers: int,
    patients_per_center: int,
    heldout_per_center: int,
    slices_per_patient: int,
    image_size: int,
    unseen_center: bool = False,
    unseen_patients: int = 2,
    lesion_probability: float = 0.3,
) -> Cohort:
    """Build a federation's phantom data with a patient-level train/held-out split.

    Patients ``0 … patients_per_center−1`` of each center are its training set, the next
    ``heldout_per_center`` are held out (nobody trains on them), so a patient is never in
    both. The optional unseen center (index ``centers``) only provides test patients.
    """

    def patients(center: int, first: int, count: int) -> SliceSet:
        profile = center_profile(seed, center)
        return SliceSet.concat([
            phantom_patient(seed, center, p, image_size=image_size,
                            n_slices=slices_per_patient, profile=profile,
                            lesion_probability=lesion_probability)
            for p in range(first, first + count)
        ])

    data = [
        CenterData(
            name=f"center-{c}",
            train=patients(c, 0, patients_per_center),
            test=patients(c, patients_per_center, heldout_per_center),
        )
        for c in range(centers)
    ]
    unseen = None
    if unseen_center:
        test = patients(centers, 0, unseen_patients)
        unseen = CenterData(name="unseen", train=test.select(np.zeros(len(test), bool)), test=test)
    return Cohort(
        centers=data,
        unseen=unseen,
        description=f"MNI152 phantom, {centers} centers, seed {seed}",
    )
