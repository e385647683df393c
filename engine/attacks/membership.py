"""Membership inference by a curious server: FedMIA (Zhu et al., CVPR 2025) and baselines.

Scenario and attack are separate (as in ``breaching``): :func:`membership_payload` assembles
what the attacker holds — the stored server view and candidate slices to test — and
:class:`MembershipAttack` turns it into per-sample membership scores. The attack never looks
at the defense configuration: under secure aggregation the uploads in the server view are
masked, and whatever the attack computes from them is what it gets.

Signals, per recorded round t, client j and candidate slice x:

* FedMIA-I: ``−loss(f_{θ_j^t}(x_mri), x_ct)``, the client's uploaded model's loss.
* FedMIA-II: ``cos(∇_θ loss(θ_g^t; x), −Δ_j^t)``, the per-sample gradient at the round's
  global model against the client's pseudo-gradient ``θ_g − θ_j`` (an update moves against
  the gradients of the data it was trained on; vectorised with ``torch.func``).

For a candidate of target center k the other centers' signals are non-member references
(data are disjoint): μ, σ over them, references above μ+3σ dropped, score Φ((s_k − μ)/σ),
averaged over rounds (``phi``). Variants: ``phi_pooled`` uses one σ per round pooled over the
candidates (3 references make a per-sample σ noisy); ``log`` averages −log(1 − Φ(z)), which
keeps growing where Φ saturates at 1. Statistics are float64; where σ is ~0 (every client's
view identical) the score is a tie and the center is reported as degenerate.

A center is *degenerate* for an attack when its scores carry no ranking at all (σ ~0 for
every candidate, or all scores tied): its AUC of exactly 0.5 is reported as such, not as
"chance".

Baselines: ``global_loss`` (Yeom et al.: −loss under the newest global model, which the server
releases and which secure aggregation does not hide) and ``own_loss`` (the target client's
FedMIA-I signal without any reference, averaged over rounds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from torch.func import functional_call, grad, vmap

from engine.core.attack_metrics import better_than_chance, roc_summary
from engine.core.config import ExperimentConfig
from engine.core.types import NDArrays
from engine.data.cohort import whatif_patient_id
from engine.data.types import Cohort, SliceSet
from engine.federation.server_view import RoundView, ServerView
from engine.learning.local import as_tensors, training_loss
from engine.learning.model import build_unet, select_device, set_parameters

SCORES = ("phi", "phi_pooled", "log")
VARIANTS = ("fedmia-i", "fedmia-ii")
BASELINES = ("global_loss", "own_loss")
# Signals come from float32 networks: a σ below ~8 float32 ulps of |μ| means every
# reference saw the same model, and the difference is rounding, not evidence: a tie.
DEGENERATE_RTOL = 1e-6


# --------------------------------------------------------------------------- scenario


@dataclass
class Candidates:
    """Slices the attacker tests for one target center, with the ground truth.

    Attributes:
        slices: ``(N, 1, H, W)`` candidate slices (MRI and CT, as the attacker holds them).
        members: ``(N,)`` bool, True where the slice was in the center's training set.
    """

    slices: SliceSet
    members: np.ndarray


@dataclass
class MembershipPayload:
    """Everything the attack may use: the server's rounds and the candidates per center."""

    rounds: list[RoundView]
    candidates: dict[str, Candidates]
    model: torch.nn.Module
    loss: str

    @property
    def clients(self) -> list[str]:
        return self.rounds[0].clients


def _subsample(patients: list[str], n: int, rng: np.random.Generator,
               keep: set[str]) -> list[str]:
    """``n`` of ``patients`` (seeded), always including those in ``keep``, in original order."""
    kept = [p for p in patients if p in keep][:n]
    rest = [p for p in patients if p not in keep]
    chosen = set(kept) | set(rng.choice(rest, n - len(kept), replace=False).tolist())
    return [p for p in patients if p in chosen]


def membership_candidates(cohort: Cohort, seed: int = 0, balance: bool = True,
                          keep: tuple[str, ...] = ()) -> dict[str, Candidates]:
    """Members = each center's training patients; non-members = its held-out patients.

    With ``balance`` the larger group is subsampled by whole patients (seeded) so both have
    the same number of patients, as the study's evaluation does; patients in ``keep`` (the
    what-if patient) are never left out.
    """
    rng = np.random.default_rng([seed, 0x3A1A])
    out = {}
    for c in cohort.centers:
        train, test = c.train.patients, c.test.patients
        if balance:
            n = min(len(train), len(test))
            train = _subsample(train, n, rng, set(keep))
            test = _subsample(test, n, rng, set(keep))
        parts = [c.train.for_patient(p) for p in train] + [c.test.for_patient(p) for p in test]
        slices = SliceSet.concat(parts)
        n_mem = sum(len(p) for p in parts[: len(train)])
        out[c.name] = Candidates(slices, np.arange(len(slices)) < n_mem)
    return out


def select_rounds(view: ServerView, rounds: str | list[int]) -> list[int]:
    """Recorded rounds the attack uses: ``all``, ``last``, ``last:K`` or an explicit list."""
    recorded = view.rounds
    if not recorded:
        raise ValueError("the run has no server view to attack; record rounds with "
                         "federation.server_view_rounds")
    if rounds == "all":
        return recorded
    if rounds == "last":
        return recorded[-1:]
    if isinstance(rounds, str) and rounds.startswith("last:"):
        return recorded[-int(rounds.split(":", 1)[1]):]
    missing = [r for r in rounds if r not in recorded]
    if missing:
        raise ValueError(f"attacks.membership.rounds {missing} were not recorded; "
                         f"recorded rounds: {recorded}")
    return list(rounds)


def membership_payload(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort) -> MembershipPayload:
    """The attacker's payload from a run folder's server view and the run's cohort."""
    mia = cfg.attacks.membership
    view = ServerView(run_dir)
    rounds = [view[r] for r in select_rounds(view, mia.rounds)]
    m = cfg.model
    model = build_unet(tuple(m.channels), m.norm, m.num_res_units).to(select_device())
    keep = tuple(p for p in [whatif_patient_id(cfg.data)] if p)
    return MembershipPayload(rounds, membership_candidates(cohort, cfg.seed, mia.balance, keep),
                             model, cfg.federation.loss)


# --------------------------------------------------------------------------- signals


@torch.no_grad()
def loss_signals(model: torch.nn.Module, params: NDArrays, mri: torch.Tensor,
                 ct: torch.Tensor, loss: str, batch_size: int = 64) -> np.ndarray:
    """``(N,)`` float64 −per-sample loss of ``params`` on ``mri``/``ct`` ``(N, 1, H, W)``
    (normalised CT units, on the model's device)."""
    set_parameters(model, params)
    model.eval()
    per_sample = {"l1": lambda a, b: (a - b).abs(), "mse": lambda a, b: (a - b) ** 2}[loss]
    out = []
    for i in range(0, len(mri), batch_size):
        pred = model(mri[i : i + batch_size]).double()
        out.append(per_sample(pred, ct[i : i + batch_size].double()).mean(dim=(1, 2, 3)))
    losses = torch.cat(out).cpu().numpy()
    # A masked upload read as weights can overflow; an infinite loss is still "not a member".
    return -np.nan_to_num(losses, nan=np.inf, posinf=np.inf)


def _param_vector(model: torch.nn.Module, names: list[str], arrays: NDArrays) -> torch.Tensor:
    """Flatten the trainable parameters (``named_parameters`` order) out of state_dict arrays."""
    by_name = dict(zip(names, arrays, strict=True))
    device = next(model.parameters()).device
    return torch.cat([torch.as_tensor(np.asarray(by_name[n], np.float32)).reshape(-1)
                      for n, _ in model.named_parameters()]).to(device)


def per_sample_gradients(model: torch.nn.Module, mri: torch.Tensor, ct: torch.Tensor,
                         loss: str) -> torch.Tensor:
    """``(B, P)`` per-sample gradients of the training loss, vectorised with ``torch.func``.

    ``mri``/``ct`` are ``(B, 1, H, W)``; the model is used in eval mode (InstanceNorm
    normalises each sample on its own either way; BatchNorm then uses running statistics).
    """
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    loss_fn = training_loss(loss)

    def one(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x[None],)), y[None])

    grads = vmap(grad(one), in_dims=(None, 0, 0))(params, mri, ct)
    return torch.cat([g.reshape(len(mri), -1) for g in grads.values()], dim=1)


def per_sample_gradients_loop(model: torch.nn.Module, mri: torch.Tensor, ct: torch.Tensor,
                              loss: str) -> torch.Tensor:
    """Reference implementation: one backward pass per sample (as FedMIA's code does)."""
    model.eval()
    loss_fn = training_loss(loss)
    rows = []
    for x, y in zip(mri, ct, strict=True):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[None]), y[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def gradient_signals(model: torch.nn.Module, rnd: RoundView, mri: torch.Tensor,
                     ct: torch.Tensor, loss: str, chunk: int = 32) -> np.ndarray:
    """``(C, N)`` cosine between each sample's gradient at the round's global model and each
    client's pseudo-gradient (−update) as the server reads it."""
    set_parameters(model, rnd.global_params)
    deltas = -torch.stack([_param_vector(model, rnd.param_names, rnd.client_update(c))
                           for c in rnd.clients])
    deltas = torch.nan_to_num(deltas.double(), nan=0.0, posinf=0.0, neginf=0.0)
    delta_norm = deltas.norm(dim=1).clamp_min(1e-30)
    out = []
    for i in range(0, len(mri), chunk):
        g = per_sample_gradients(model, mri[i : i + chunk], ct[i : i + chunk], loss).double()
        cos = (g @ deltas.T) / (g.norm(dim=1, keepdim=True).clamp_min(1e-30) * delta_norm)
        out.append(cos.T)
    return torch.cat(out, dim=1).cpu().numpy()


# --------------------------------------------------------------------------- scores


def reference_scores(target: np.ndarray, refs: np.ndarray, score: str) -> tuple[np.ndarray, bool]:
    """FedMIA score of each candidate from its target signal and reference signals.

    Args:
        target: ``(R, N)`` the target client's signal per round and candidate.
        refs: ``(R, K, N)`` the other clients' signals (non-member references).
        score: ``phi`` | ``phi_pooled`` | ``log``.

    Returns ``(scores (N,), degenerate)``; degenerate when every σ was ~0, all scores tie.
    """
    target = target.astype(np.float64)
    refs = refs.astype(np.float64)
    finite = np.isfinite(refs)
    # FedMIA drops references far above the rest (μ+3σ) before the final statistics. A value
    # can sit at most √(K−1) population σ above the mean of K, so this needs K ≥ 11
    # references (12+ centers) to ever drop one; it is kept for such federations.
    mu0 = np.nanmean(np.where(finite, refs, np.nan), axis=1, keepdims=True)
    sd0 = np.nanstd(np.where(finite, refs, np.nan), axis=1, keepdims=True)
    keep = finite & ~(refs > mu0 + 3 * sd0)
    kept = np.where(keep, refs, np.nan)
    mu = np.nanmean(kept, axis=1)
    sigma = np.nanstd(kept, axis=1)
    tiny = DEGENERATE_RTOL * np.maximum(1.0, np.abs(mu))
    flat = ~(sigma > tiny)  # also True where σ is NaN (no usable reference)
    if score == "phi_pooled":
        pooled = np.sqrt(np.nanmean(np.where(flat, np.nan, sigma) ** 2, axis=1, keepdims=True))
        sigma = np.broadcast_to(pooled, sigma.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (target - mu) / (sigma + 1e-8)
    # An infinite target loss (overflowing weights) ranks lowest; flat references tie.
    z = np.where(flat, 0.0, np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf))
    per_round = norm.cdf(z) if score in ("phi", "phi_pooled") else -norm.logsf(z)
    return per_round.mean(axis=0), bool(flat.all())


@dataclass
class MembershipResult:
    """Scores per attack and center (higher = more likely a member) and the ground truth."""

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    degenerate: dict[str, dict[str, bool]] = field(default_factory=dict)
    members: dict[str, np.ndarray] = field(default_factory=dict)
    patient_ids: dict[str, np.ndarray] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    timing_s: dict[str, float] = field(default_factory=dict)
    individual_uploads: bool = True


@dataclass
class MembershipAttack:
    """FedMIA and the baselines over a :class:`MembershipPayload`.

    Args:
        variants: subset of ``("fedmia-i", "fedmia-ii")``.
        scores: subset of ``("phi", "phi_pooled", "log")``.
    """

    variants: tuple[str, ...] = VARIANTS
    scores: tuple[str, ...] = SCORES

    def run(self, payload: MembershipPayload,
            progress: Callable[[int, int, str], None] = lambda *_: None) -> MembershipResult:
        """Scores of every attack; ``progress(done, total, detail)`` counts recorded rounds
        (once per signal computed)."""
        model, loss = payload.model, payload.loss
        clients = payload.clients
        names = list(payload.candidates)
        everything = SliceSet.concat([payload.candidates[n].slices for n in names])
        # Candidates go to the device once; every round and client reuses them.
        mri, ct = as_tensors(everything, next(model.parameters()).device)
        bounds = np.cumsum([0] + [len(payload.candidates[n].slices) for n in names])
        result = MembershipResult(rounds=[r.round for r in payload.rounds],
                                  individual_uploads=all(r.individual_uploads
                                                         for r in payload.rounds))
        for n in names:
            result.members[n] = payload.candidates[n].members
            result.patient_ids[n] = payload.candidates[n].slices.patient_ids

        rounds = payload.rounds
        passes = 1 + ("fedmia-ii" in self.variants)
        total = passes * len(rounds)

        def each_round(signal: Callable[[RoundView], np.ndarray], what: str,
                       offset: int) -> np.ndarray:
            out = []
            for k, r in enumerate(rounds):
                out.append(signal(r))
                progress(offset + k + 1, total, f"{what}, round {r.round}")
            return np.stack(out)

        t0 = time.perf_counter()
        signals: dict[str, np.ndarray] = {}  # variant → (R, C, N_all)
        # FedMIA-I signals are always computed: the own_loss baseline is made of them.
        signals["fedmia-i"] = each_round(
            lambda r: np.stack([loss_signals(model, r.client_params(c), mri, ct, loss)
                                for c in clients]), "losses (FedMIA-I)", 0)
        result.timing_s["fedmia-i"] = time.perf_counter() - t0
        if "fedmia-ii" in self.variants:
            t0 = time.perf_counter()
            signals["fedmia-ii"] = each_round(
                lambda r: gradient_signals(model, r, mri, ct, loss),
                "gradients (FedMIA-II)", len(rounds))
            result.timing_s["fedmia-ii"] = time.perf_counter() - t0
        newest = payload.rounds[-1].aggregate
        global_signal = loss_signals(model, newest, mri, ct, loss)
        self._score(result, signals, global_signal, clients, names, bounds)
        return result

    def _score(self, result: MembershipResult, signals: dict[str, np.ndarray],
               global_signal: np.ndarray, clients: list[str], names: list[str],
               bounds: np.ndarray) -> None:
        """Fill ``result``'s scores and degeneracy flags from the signals: per candidate
        center (its slices ``bounds[i]:bounds[i + 1]`` of the signals), every variant and
        score against the other clients as references, then the two baselines."""
        for i, name in enumerate(names):
            sl = slice(bounds[i], bounds[i + 1])
            k = clients.index(name)
            others = [j for j in range(len(clients)) if j != k]
            for variant in self.variants:
                s = signals[variant][:, :, sl]
                for score in self.scores:
                    key = f"{variant}/{score}"
                    sc, flat = reference_scores(s[:, k], s[:, others], score)
                    result.scores.setdefault(key, {})[name] = sc
                    result.degenerate.setdefault(key, {})[name] = flat or _all_tied(sc)
            result.scores.setdefault("global_loss", {})[name] = global_signal[sl]
            result.scores.setdefault("own_loss", {})[name] = (
                signals["fedmia-i"][:, k, sl].mean(axis=0))
            for b in BASELINES:
                result.degenerate.setdefault(b, {})[name] = _all_tied(result.scores[b][name])


def _all_tied(scores: np.ndarray) -> bool:
    """No ranking at all (e.g. every loss overflowed): the AUC of 0.5 is not a measurement."""
    return np.unique(scores).size == 1


# --------------------------------------------------------------------------- evaluation


def patient_level(scores: np.ndarray, members: np.ndarray,
                  patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean slice score per patient and the patient's membership."""
    ids = list(dict.fromkeys(patient_ids.tolist()))
    s = np.array([scores[patient_ids == p].mean() for p in ids])
    m = np.array([members[patient_ids == p][0] for p in ids])
    return s, m


def evaluate_membership(result: MembershipResult, *, level: str = "slice",
                        bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ROC analysis of every attack: per center and pooled over centers, at slice and at
    patient level; every interval resamples patients (see :func:`attack_metrics.roc_summary`)
    and is also given Bonferroni-corrected for the hospitals and the pooled test together.

    Returns ``{attack: {"per_center": {center: roc_summary}, "pooled": roc_summary (both at
    ``level``), "slice": {...}, "patient": {"per_center", "pooled"}, "degenerate":
    {center: bool}}}``. A degenerate center's scores all tie (AUC 0.5).
    """
    family = len(result.members) + 1
    out: dict[str, Any] = {}
    for attack, per_center in result.scores.items():
        levels: dict[str, dict[str, Any]] = {"slice": {}, "patient": {}}
        pooled: dict[str, list] = {"slice": [], "patient": []}
        for center, scores in per_center.items():
            members, ids = result.members[center], result.patient_ids[center]
            groups = np.array([f"{center}/{p}" for p in ids.tolist()])
            levels["slice"][center] = roc_summary(scores, members, groups=groups,
                                                  bootstrap=bootstrap, seed=seed, family=family)
            ps, pm = patient_level(scores, members, ids)
            levels["patient"][center] = roc_summary(ps, pm, bootstrap=bootstrap, seed=seed,
                                                    family=family)
            pooled["slice"].append((scores, members, groups))
            pooled["patient"].append((ps, pm, np.array([f"{center}/{p}" for p in
                                                        dict.fromkeys(ids.tolist())])))
        entry: dict[str, Any] = {"degenerate": result.degenerate[attack]}
        for lvl, rows in levels.items():
            s, m, g = (np.concatenate(parts) for parts in zip(*pooled[lvl], strict=True))
            entry[lvl] = {"per_center": rows,
                          "pooled": roc_summary(s, m, groups=g, bootstrap=bootstrap, seed=seed,
                                                family=family)}
        entry |= entry[level]
        out[attack] = entry
    return out


def attack_verdicts(evaluation: dict[str, Any], individual_uploads: bool) -> dict[str, Any]:
    """Attack → {center: verdict, "overall": verdict} at patient level.

    ``risk``: better than chance (the Bonferroni-corrected patient-level interval lies above
    0.5 and the exact rank test agrees); ``no_evidence``: not shown at this sample size;
    ``not_applicable``: a per-hospital FedMIA attack when the server holds no individual
    update (secure aggregation), whatever it computed from the masked uploads.
    """
    out: dict[str, Any] = {}
    for attack, e in evaluation.items():
        rows = e["patient"]["per_center"]
        if attack.startswith("fedmia") and not individual_uploads:
            out[attack] = dict.fromkeys([*rows, "overall"], "not_applicable")
            continue
        flat = e["degenerate"]
        verdicts = {c: "risk" if not flat.get(c) and better_than_chance(r) else "no_evidence"
                    for c, r in rows.items()}
        pooled_risk = not all(flat.values()) and better_than_chance(e["patient"]["pooled"])
        verdicts["overall"] = ("risk" if pooled_risk or "risk" in verdicts.values()
                               else "no_evidence")
        out[attack] = verdicts
    return out


def membership_summary(evaluation: dict[str, Any], headline: str, level: str,
                       rounds: list[int], individual_uploads: bool = True) -> dict[str, Any]:
    """The ``mia`` block of ``summary.json`` (ROC points are stored separately).

    The verdict rests on the headline attack when the server holds every hospital's upload,
    and on the global-model attack (which secure aggregation does not hide) when it holds
    only masked uploads or their sum.
    """
    main = evaluation[headline]
    per = main["per_center"]

    def aucs(attack: str) -> dict[str, float]:
        return {c: r["auc"] for c, r in evaluation[attack]["per_center"].items()}

    verdicts = attack_verdicts(evaluation, individual_uploads)
    verdict_attack = headline if individual_uploads else "global_loss"
    patient = {a: patient_block(e["patient"]) for a, e in evaluation.items()}
    return {
        "attack": headline,
        "level": level,
        "rounds": rounds,
        "auc": {c: r["auc"] for c, r in per.items()},
        "auc_ci": {c: r["auc_ci"] for c, r in per.items()},
        "tpr_at_fpr": {c: r["tpr_at_fpr"] for c, r in per.items()},
        "tpr_min_nonmembers": next(iter(per.values()))["tpr_min_nonmembers"],
        "degenerate": main["degenerate"],
        "pooled": {k: main["pooled"][k] for k in ("auc", "auc_ci", "tpr_at_fpr")},
        "patient": patient[headline],
        "family": next(iter(per.values()))["family"],
        "individual_uploads": individual_uploads,
        "verdict": verdicts[verdict_attack],
        "verdict_attack": verdict_attack,
        "verdicts": verdicts,
        "baselines": {b: aucs(b) for b in BASELINES},
        "variants": {a: {"auc": aucs(a), "pooled_auc": e["pooled"]["auc"],
                         "patient": patient[a], "degenerate": e["degenerate"]}
                     for a, e in evaluation.items()},
        "n_candidates": {c: {"members": r["n_members"], "nonmembers": r["n_nonmembers"],
                             "member_patients": r["n_member_groups"],
                             "nonmember_patients": r["n_nonmember_groups"]}
                         for c, r in main["slice"]["per_center"].items()},
    }


def patient_block(patient: dict[str, Any]) -> dict[str, Any]:
    """Patient-level figures of one attack: AUC, 95 % and family-corrected intervals, the
    rank test's p-value and the patients per side, per center and pooled."""
    keys = ("auc", "auc_ci", "auc_ci_family", "p_value")
    rows = patient["per_center"]
    pooled = patient["pooled"]
    return {**{k: {c: r[k] for c, r in rows.items()} for k in keys},
            "n": {c: {"members": r["n_members"], "nonmembers": r["n_nonmembers"]}
                  for c, r in rows.items()},
            "pooled": {**{k: pooled[k] for k in keys},
                       "n": {"members": pooled["n_members"],
                             "nonmembers": pooled["n_nonmembers"]}}}


def run_membership(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort,
                   progress: Callable[[int, int, str], None] = lambda *_: None
                   ) -> dict[str, Any]:
    """Attack a finished run's server view; store ROC points and scores; return ``mia``."""
    mia = cfg.attacks.membership
    payload = membership_payload(run_dir, cfg, cohort)
    result = MembershipAttack(variants=tuple(mia.variants)).run(payload, progress)
    evaluation = evaluate_membership(result, level=mia.level, bootstrap=mia.bootstrap,
                                     seed=cfg.seed)
    out = Path(run_dir) / "mia"
    out.mkdir(exist_ok=True)
    roc = {a: {c: {"fpr": r["fpr"], "tpr": r["tpr"], "auc": r["auc"]}
               for c, r in [*e["per_center"].items(), ("pooled", e["pooled"])]}
           for a, e in evaluation.items()}
    (out / "roc.json").write_text(json.dumps(roc))
    np.savez_compressed(out / "scores.npz", **{
        f"{a}__{c}": s for a, per in result.scores.items() for c, s in per.items()
    }, **{f"members__{c}": m for c, m in result.members.items()},
       **{f"patients__{c}": p.astype(str) for c, p in result.patient_ids.items()})
    summary = membership_summary(evaluation, f"{mia.variant}/{mia.score}", mia.level,
                                 result.rounds, result.individual_uploads)
    summary["timing_s"] = {k: round(v, 3) for k, v in result.timing_s.items()}
    return summary
