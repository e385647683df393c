"""Differential privacy, and its accounting.

Three levels (``defenses.dp.level``). The first two are applied on the client because the
threat is a curious server (noise the server added itself would hide nothing from it):

* ``client``: the hospital clips its update Δ = local − global to L2 norm ``C`` (Flower's
  FlatClip helper) and adds N(0, (σC)²) to every coordinate. Neighbouring datasets: one
  hospital's whole contribution added or removed; every hospital takes part in every round.
* ``sample``: the hospital trains with DP-SGD whose unit is one **patient**: each step samples
  every patient with probability q (Poisson), averages each sampled patient's slice gradients,
  clips that to norm ``C``, adds N(0, (σC)²) and divides by the expected number of patients.
  Neighbouring datasets: one patient's slices added to or removed from one hospital. (Opacus's
  DP-SGD clips per slice; a patient has several slices, so its guarantee would cover a patient
  only through group privacy. Per-patient clipping gives the patient-level guarantee that
  membership inference is about, with ``torch.func`` per-sample gradients.)

The third, ``server``, is DP-FedAvg with a trusted server (McMahan et al. 2018; the "weak DP"
of Sun et al. 2019 against backdoors): each round every hospital takes part with probability
q (``federation.sample_rate``), the server clips every update to ``C``, sums them, adds
N(0, (σC)²) and divides by the expected count qn
(:func:`engine.federation.aggregators.dp_mean`). Neighbouring datasets are those of
``client``, and the accountant counts the sampling (the subsampled Gaussian mechanism, as
for DP-SGD), but the guarantee covers the global models only: the server itself receives
the uploads before any noise, and knows who took part (so ``client`` level claims no
amplification from sampling).

ε comes from Opacus's RDP accountant (the subsampled Gaussian mechanism, composed over every
step of every round), at the configured δ. ``defenses.dp.target_epsilon`` picks σ for a
target ε with Opacus's ``get_noise_multiplier``.

Nothing a DP hospital reports depends on its data: no pre-clip norm, no clipped flag, no
training loss, and not even its size. Every DP hospital declares the config's nominal size
(``data.patients_per_center × data.slices_per_patient`` slices, :func:`declared_examples`) as
its ``num_examples`` (so FedAvg weighs DP hospitals equally), and its sampling rate, steps per
round, σ and the divisor of DP-SGD's noisy sum are computed from that declared size, never
from how many patients it really holds: a hospital's patient count would otherwise be
released exactly, outside the guarantee.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier
from torch.func import functional_call, grad, vmap

from engine.core.config import DPConfig, ExperimentConfig
from engine.core.types import NDArrays, is_float
from engine.data.types import SliceSet
from engine.learning.local import ADAM_EPS, LocalTraining, as_tensors, training_loss
from engine.learning.model import get_parameters, set_parameters

NEIGHBOURING = {
    "client": "add/remove one hospital's whole contribution (every hospital in every round)",
    "sample": "add/remove one patient's slices at one hospital",
    "server": "add/remove one hospital's whole contribution (every hospital in every round); "
              "covers the global models, not the uploads the server receives",
}
# Each level in words, as pages and reports name it.
LEVEL_WORDS = {"client": "hospital-level DP", "sample": "patient-level DP",
               "server": "server-side hospital-level DP"}
SUBSTITUTION = "replace one hospital's whole contribution by another's (sensitivity 2C)"
# Above this ε the noise gives no meaningful guarantee (pages and reports say so).
MEANINGFUL_EPSILON = 10.0
# Client metadata a DP hospital may report: public protocol values only, each a function of
# the config (see public_metadata).
DP_PUBLIC_METADATA = ("num_examples", "steps", "noise_std")


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class DPAccounting:
    """One hospital's privacy bookkeeping.

    Attributes:
        level: ``client``, ``sample`` or ``server``.
        noise_multiplier: σ (noise std = σ·C).
        sample_rate: q, the probability that a unit takes part in a step (1 for ``client``
            and ``server``).
        steps_per_round: noisy releases per round (1 for ``client`` and ``server``).
        delta: δ of the (ε, δ) guarantee.
    """

    level: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float

    def epsilon(self, rounds: int) -> float:
        """ε after ``rounds`` rounds (``inf`` without noise)."""
        return _epsilon(self.noise_multiplier, self.sample_rate,
                        self.steps_per_round * rounds, self.delta)

    def epsilon_substitution(self, rounds: int) -> float | None:
        """ε after ``rounds`` rounds for *replacing* one hospital's contribution by another
        (``client`` and ``server`` level): two clipped updates differ by up to 2C, so this is
        the Gaussian mechanism at σ/2 (exact without subsampling). ``None`` at ``sample``
        level, where replacing one patient under subsampling needs an accountant for that
        relation."""
        if self.level == "sample":
            return None
        return _epsilon(self.noise_multiplier / 2, 1.0, self.steps_per_round * rounds,
                        self.delta)


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    if noise_multiplier <= 0:
        return math.inf
    if steps <= 0:
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                      orders=orders)
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": huge ε, still ε
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=1024)
def _noise_for(target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    with warnings.catch_warnings():  # the search passes through huge ε on its way
        warnings.simplefilter("ignore", UserWarning)
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant="rdp"))


def dp_accounting(dp: DPConfig, rounds: int, local: LocalTraining,
                  num_examples: int, sample_rate: float = 1.0) -> DPAccounting:
    """The accounting of a hospital with ``num_examples`` training slices (``sample`` level:
    q = batch_size / num_examples, ``local_epochs · ⌈1/q⌉`` steps per round; ``server``
    level: q = ``sample_rate``, the share of hospitals sampled each round); σ is
    ``dp.noise_multiplier`` or, with ``dp.target_epsilon``, the σ that reaches it after
    ``rounds`` rounds."""
    if dp.level == "server":  # the released model hides who took part: amplification
        q, per_round = sample_rate, 1
    elif dp.level == "client":  # the server sees who took part: no amplification claimed
        q, per_round = 1.0, 1
    else:
        q = min(1.0, local.batch_size / max(num_examples, 1))
        per_round = local.local_epochs * math.ceil(1 / q)
    sigma = (dp.noise_multiplier if dp.target_epsilon is None
             else _noise_for(dp.target_epsilon, q, per_round * rounds, dp.delta))
    return DPAccounting(dp.level, sigma, q, per_round, dp.delta)


def declared_examples(cfg: ExperimentConfig) -> int:
    """The training slices every DP hospital declares: the config's nominal hospital size
    ``data.patients_per_center × data.slices_per_patient`` (public, whatever it holds)."""
    return cfg.data.patients_per_center * cfg.data.slices_per_patient


def planned_accounting(cfg: ExperimentConfig) -> DPAccounting:
    """Every DP hospital's accounting: the one of a hospital of :func:`declared_examples`
    slices, so that nothing released depends on a hospital's real size (and a settings page
    can show it before any data is loaded)."""
    return dp_accounting(cfg.defenses.dp, cfg.federation.rounds, LocalTraining.from_config(cfg),
                         declared_examples(cfg), cfg.federation.sample_rate)


def planned_epsilon(cfg: ExperimentConfig) -> float | None:
    """ε after the last round for :func:`planned_accounting` (None: ∞ or no DP)."""
    if not cfg.defenses.dp.enabled:
        return None
    eps = planned_accounting(cfg).epsilon(cfg.federation.rounds)
    return eps if math.isfinite(eps) else None


def epsilon_text(epsilon: float | None) -> str:
    """ε in words for pages and reports."""
    if epsilon is None or not math.isfinite(epsilon):
        return "ε = ∞ (no noise: no privacy guarantee)"
    text = f"ε = {epsilon:.3g}"
    if epsilon > MEANINGFUL_EPSILON:
        text += " — noise without a meaningful privacy guarantee"
    return text


# --------------------------------------------------------------------------- client level


def privatize_update(local: NDArrays, global_params: NDArrays, clip_norm: float,
                     noise_multiplier: float, rng: np.random.Generator) -> tuple[NDArrays, dict]:
    """Clip ``local − global`` to ``clip_norm`` and add N(0, (σ·C)²) noise.

    Float arrays only are privatised; integer buffers are passed through unchanged.
    Returns the privatised parameters and ``{"noise_std"}`` (public: nothing that depends on
    the raw update, such as its norm or whether it was clipped, leaves the client).
    """
    floats = [i for i, a in enumerate(local) if is_float(a)]
    loc = [local[i].astype(np.float64) for i in floats]
    glob = [global_params[i].astype(np.float64) for i in floats]
    # Flower's clip divides by the update's norm: an unchanged model (a zero update, which
    # needs no clipping) would raise ZeroDivisionError before its noise is added.
    if any(np.any(a != g) for a, g in zip(loc, glob, strict=True)):
        compute_clip_model_update(loc, glob, clip_norm)
    std = compute_stdv(noise_multiplier, clip_norm, 1)
    out = [a.copy() for a in local]
    for i, arr in zip(floats, loc, strict=True):
        noisy = arr + rng.normal(0.0, std, arr.shape) if std > 0 else arr
        out[i] = noisy.astype(local[i].dtype)
    return out, {"noise_std": std}


def public_metadata(cfg: ExperimentConfig) -> dict[str, float]:
    """What a DP hospital reports, a function of the config alone: its declared
    ``num_examples`` and, with DP-SGD (``sample`` level), the public ``steps`` per round and
    ``noise_std``. (At ``client`` level the upload's ``noise_std`` is added when the update
    is noised; σ there is data-independent too.)"""
    out: dict[str, float] = {"num_examples": declared_examples(cfg)}
    dp = cfg.defenses.dp
    if dp.level == "sample":
        acc = planned_accounting(cfg)
        out |= {"steps": acc.steps_per_round, "noise_std": acc.noise_multiplier * dp.clip_norm}
    return out


# --------------------------------------------------------------------------- sample level


def patient_gradients(model: torch.nn.Module, params: dict[str, torch.Tensor],
                      buffers: dict[str, torch.Tensor], mri: torch.Tensor, ct: torch.Tensor,
                      owner: torch.Tensor, patients: int, loss: str,
                      chunk: int = 32) -> torch.Tensor:
    """``(patients, P)``: each patient's mean slice gradient, flattened.

    ``mri``/``ct`` ``(N, 1, H, W)``; ``owner (N,)`` the patient index of each slice
    (0 … patients−1). Per-slice gradients come from ``torch.func`` (in training mode, so a
    model with batch statistics must not be used: the config refuses BatchNorm here).
    """
    loss_fn = training_loss(loss)

    def one(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x[None],)), y[None])

    total = torch.zeros(patients, sum(v.numel() for v in params.values()),
                        device=mri.device)
    for s in range(0, len(mri), chunk):
        g = vmap(grad(one), in_dims=(None, 0, 0))(params, mri[s : s + chunk], ct[s : s + chunk])
        flat = torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1)
        total.index_add_(0, owner[s : s + chunk], flat)
    counts = torch.bincount(owner, minlength=patients).clamp_min(1).to(total.dtype)
    return total / counts[:, None]


# The hospital whose DP-SGD carries a patient-level audit's canaries (Hospital A).
AUDITED_CENTER = 0


@dataclass(frozen=True)
class GradientCanaries:
    """The canary patients of a white-box audit of patient-level DP-SGD (Dirac canaries, as
    in Nasr et al. 2023 and the one-run audit of Steinke et al. 2023).

    Canary k is a patient whose gradient is ``norm`` on the single parameter coordinate
    ``(names[k], index[k])`` (flat index inside that parameter) and 0 elsewhere; it belongs
    to the hospital's data when ``present[k]``. DP-SGD treats it as any patient: Poisson
    sampling at the accountant's rate, the clip to C (``norm`` is 2C, so the clip acts), the
    noisy sum. The neighbouring datasets of the guarantee differ by one such patient, so the
    audit's bound must stay below the accountant's ε whatever the gradient looks like.
    """

    names: tuple[str, ...]
    index: np.ndarray
    present: np.ndarray
    norm: float
    seed: int

    def offsets(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The present canaries' coordinates in the concatenation of ``params`` (in order)."""
        start, at = {}, 0
        for name, p in params.items():
            start[name] = at
            at += p.numel()
        return torch.as_tensor([start[n] + int(i) for n, i, keep in
                                zip(self.names, self.index, self.present, strict=True) if keep],
                               dtype=torch.long)


def gradient_canaries(model: torch.nn.Module, count: int, clip_norm: float,
                      seed: int) -> GradientCanaries:
    """``count`` canaries on distinct coordinates of ``model``'s parameters, drawn with
    ``seed``; each present with probability ½."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    if count > sum(sizes.values()):
        raise ValueError(f"attacks.dp_audit.canaries = {count:,} is more than the model's "
                         f"{sum(sizes.values()):,} parameters (each canary patient needs a "
                         f"coordinate of its own); use at most {sum(sizes.values()):,}")
    rng = np.random.default_rng([seed, 0xCA, 1])
    flat = np.sort(rng.choice(sum(sizes.values()), size=count, replace=False))
    ends = np.cumsum(list(sizes.values()))
    which = np.searchsorted(ends, flat, side="right")
    names = tuple(list(sizes)[k] for k in which)
    index = flat - np.concatenate([[0], ends[:-1]])[which]
    present = np.random.default_rng([seed, 0xCA]).random(count) < 0.5
    return GradientCanaries(names, index, present, 2 * clip_norm, seed)


def clip_factors(norms: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """The factor that brings each gradient of norm ``norms`` to at most ``clip_norm``."""
    return (clip_norm / (norms + 1e-12)).clamp(max=1.0)


def train_local_dp_sgd(model: torch.nn.Module, global_params: NDArrays, data: SliceSet,
                       cfg: LocalTraining, accounting: DPAccounting, clip_norm: float, *,
                       declared_patients: int, seed: int,
                       canaries: GradientCanaries | None = None
                       ) -> tuple[NDArrays, dict[str, float]]:
    """Local training with patient-level DP-SGD (see the module docstring).

    Each of ``accounting.steps_per_round`` steps samples every patient with probability
    ``accounting.sample_rate`` (Poisson, seeded), clips each sampled patient's mean slice
    gradient to ``clip_norm``, adds N(0, (σ·clip_norm)²) and divides by the expected number of
    patients of a hospital of ``declared_patients`` (public: dividing by the real count would
    scale the released step by a function of the data); Adam or SGD then steps on that noisy
    gradient (post-processing). The FedProx term's gradient does not depend on the data and
    is added after the noise. ``canaries`` (an audit's, :class:`GradientCanaries`) are
    sampled, clipped and summed with the patients, on their own random stream. Returns the
    new parameters and ``{"steps", "noise_std"}``.
    """
    device = next(model.parameters()).device
    set_parameters(model, global_params)
    model.to(device).train()
    params = dict(model.named_parameters())
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    anchor = {k: v.detach().clone() for k, v in params.items()}
    mri, ct = as_tensors(data, device)
    ids = data.patients
    owner_all = torch.as_tensor([ids.index(p) for p in data.patient_ids.tolist()],
                                device=device)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params.values(), lr=cfg.lr, eps=ADAM_EPS) if cfg.optimizer == "adam"
        else torch.optim.SGD(params.values(), lr=cfg.lr))
    gen = torch.Generator().manual_seed(seed)
    q, sigma = accounting.sample_rate, accounting.noise_multiplier
    std = compute_stdv(sigma, clip_norm, 1)  # σ·C, as at hospital level
    expected = q * declared_patients
    if canaries is not None:
        canary_at = canaries.offsets(params).to(device)
        canary_gen = torch.Generator().manual_seed(seed ^ canaries.seed)
        canary_norms = torch.full((len(canary_at),), canaries.norm, device=device)
        # A canary's gradient never changes: its clipped size is the same every step.
        canary_clipped = canary_norms * clip_factors(canary_norms, clip_norm)
    for _ in range(accounting.steps_per_round):
        chosen = (torch.rand(len(ids), generator=gen) < q).nonzero().flatten().tolist()
        total = torch.zeros(sum(v.numel() for v in params.values()), device=device)
        if canaries is not None:
            drawn = (torch.rand(len(canary_at), generator=canary_gen) < q).to(device)
            total.index_add_(0, canary_at[drawn], canary_clipped[drawn])
        if chosen:
            rows = torch.isin(owner_all, torch.as_tensor(chosen, device=device))
            remap = {p: i for i, p in enumerate(chosen)}
            owner = torch.as_tensor([remap[int(o)] for o in owner_all[rows]], device=device)
            detached = {k: v.detach() for k, v in params.items()}
            per = patient_gradients(model, detached, buffers, mri[rows], ct[rows], owner,
                                    len(chosen), cfg.loss)
            total += (per * clip_factors(per.norm(dim=1), clip_norm)[:, None]).sum(dim=0)
        noise = torch.randn(total.shape, generator=gen).to(device) * std
        noisy = (total + noise) / expected
        opt.zero_grad(set_to_none=True)
        offset = 0
        for k, p in params.items():
            g = noisy[offset : offset + p.numel()].view_as(p)
            if cfg.fedprox_mu > 0:
                g = g + cfg.fedprox_mu * (p.detach() - anchor[k])
            p.grad = g.clone()
            offset += p.numel()
        opt.step()
    return get_parameters(model), {"steps": accounting.steps_per_round, "noise_std": std}
