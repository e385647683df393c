"""Aggregation rules: one small class per rule, the math in Flower's pure functions.

Every rule maps ``[(client_parameters, num_examples), …]`` to the new global parameters.
Median-type rules work coordinate-wise on the models; since all clients start from the same
global model this equals global + the rule applied to the updates. Centred clipping also
needs that global model (its centre), which every rule is given as ``origin``.

The pre-aggregators (:func:`nnm`, :func:`arc`) and the other server steps on individual
updates (:func:`clip_to_median_norm`, FLAME, DP-FedAvg, FLTrust) are pure functions of the
uploads and the global model; :func:`server_updates` applies those that go before a rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from engine.core.config import FederationConfig
from engine.core.types import (
    NDArrays,
    as_params,
    flat_update,
    flat_updates,
    is_float,
    pairwise_sq,
)

Results = list[tuple[NDArrays, int]]


def _as_float(results: Results) -> Results:
    # Flower's rules average in the arrays' own dtype; integer buffers (BatchNorm's
    # num_batches_tracked) would be truncated, so aggregate everything in float64.
    return [([np.asarray(a, dtype=np.float64) for a in arrays], n) for arrays, n in results]


def _restore_dtypes(out: NDArrays, like: NDArrays) -> NDArrays:
    return [np.asarray(o).astype(ref.dtype, copy=False) for o, ref in zip(out, like, strict=True)]


@dataclass(frozen=True)
class Aggregator:
    """Base class: ``__call__`` checks the number of clients and applies :meth:`rule`.

    ``origin``: the round's global model, which every upload started from, in its own dtypes
    (centred clipping's centre; centred clipping and DnC measure the float parameters'
    updates from it; the other rules are translation-equivariant and do not need it)."""

    name: str = "fedavg"
    min_clients: int = 1

    def __call__(self, results: Results, origin: NDArrays | None = None) -> NDArrays:
        if len(results) < self.min_clients:
            raise ValueError(
                f"aggregator {self.name!r} needs at least {self.min_clients} client results, "
                f"got {len(results)}"
            )
        return _restore_dtypes(self.rule(_as_float(results), origin), results[0][0])

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        raise NotImplementedError


@dataclass(frozen=True)
class FedAvg(Aggregator):
    """Weighted mean by number of examples (McMahan et al. 2017). FedProx aggregates alike."""

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        return aggregate(results)


@dataclass(frozen=True)
class FedMedian(Aggregator):
    """Coordinate-wise median (Yin et al. 2018)."""

    name: str = "fedmedian"
    min_clients: int = 3

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        return aggregate_median(results)


@dataclass(frozen=True)
class TrimmedMean(Aggregator):
    """Coordinate-wise mean after cutting a fraction ``beta`` of values at each end."""

    name: str = "trimmed_mean"
    beta: float = 0.25

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        return aggregate_trimmed_avg(results, self.beta)


@dataclass(frozen=True)
class Krum(Aggregator):
    """Krum (Blanchard et al. 2017): the model closest to its n−f−2 neighbours.

    With ``to_keep`` > 0 it is Multi-Krum: the mean of the ``to_keep`` best-scored models.
    """

    name: str = "krum"
    num_malicious: int = 1
    to_keep: int = 0

    def __call__(self, results: Results, origin: NDArrays | None = None) -> NDArrays:
        n, f = len(results), self.num_malicious
        if not n > 2 * f + 2:
            raise ValueError(
                f"{self.name} with f = {f} needs more than {2 * f + 2} clients, got {n}"
            )
        return super().__call__(results, origin)

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        return aggregate_krum(results, self.num_malicious, self.to_keep)


@dataclass(frozen=True)
class Bulyan(Aggregator):
    """Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed mean around the median."""

    name: str = "bulyan"
    num_malicious: int = 1

    def __call__(self, results: Results, origin: NDArrays | None = None) -> NDArrays:
        n, f = len(results), self.num_malicious
        if not n >= 4 * f + 3:
            raise ValueError(f"bulyan with f = {f} needs at least {4 * f + 3} clients, got {n}")
        return super().__call__(results, origin)

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        return aggregate_bulyan(results, self.num_malicious, aggregate_krum, to_keep=0)


def _float_updates(results: Results, origin: NDArrays | None, rule: str) -> np.ndarray:
    """The uploads' float-parameter updates from ``origin`` as rows ``(n, d)`` (integer
    buffers, e.g. BatchNorm's step counter, would swamp the distances)."""
    if origin is None:
        raise ValueError(f"{rule} needs the round's global model (origin)")
    return flat_updates([r[0] for r in results], origin)


def _model(update: np.ndarray, origin: NDArrays, results: Results) -> NDArrays:
    """``origin`` + ``update`` ``(d,)`` as a model; each integer buffer the uploads' median."""
    buffers = [g if is_float(g) else np.median([r[0][i] for r in results], axis=0)
               for i, g in enumerate(origin)]
    return as_params(update, origin, buffers)


# Centred clipping's iterations: Karimireddy et al. show one suffices from a good centre
# (their previous aggregate momentum); ours starts from the global model, farther from the
# honest updates' centre, and each iteration moves at most τ towards it.
CC_ITERATIONS = 3


def centred_clipping(points: np.ndarray, centre: np.ndarray, tau: float,
                     iterations: int = CC_ITERATIONS) -> np.ndarray:
    """Centred clipping (Karimireddy et al., ICML 2021) of ``points`` ``(n, d)``:
    ``iterations`` times v ← v + mean_i clip_τ(xᵢ − v) from v = ``centre``, where clip_τ
    scales a vector longer than ``tau`` down to that length. Returns v ``(d,)``."""
    v = np.asarray(centre, np.float64).copy()
    for _ in range(iterations):
        diff = points - v
        norms = np.linalg.norm(diff, axis=1, keepdims=True)
        scale = np.minimum(1.0, tau / np.maximum(norms, 1e-300))
        v = v + (diff * scale).mean(axis=0)
    return v


@dataclass(frozen=True)
class CenteredClipping(Aggregator):
    """Centred clipping: the round's float-parameter updates clipped around the global
    model (``origin``), τ = ``tau`` × the median update norm (a radius in the updates' own
    scale, which changes from round to round), :data:`CC_ITERATIONS` iterations. The paper
    centres on the previous round's aggregate momentum; hospitals here keep no momentum
    and the server keeps no state between rounds (a resumed run repeats it exactly), so
    the centre is the model every upload started from."""

    name: str = "centered_clipping"
    tau: float = 1.0

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        updates = _float_updates(results, origin, self.name)
        radius = self.tau * float(np.median(np.linalg.norm(updates, axis=1)))
        centre = centred_clipping(updates, np.zeros(updates.shape[1]), radius)
        return _model(centre, origin, results)


# DnC's defaults, as in the paper's evaluation: one random subset of 10,000 coordinates,
# remove c·f = f updates.
DNC_DIMS, DNC_ITERATIONS, DNC_FILTER = 10_000, 1, 1.0


def dnc_keep(points: np.ndarray, f: int, rng: np.random.Generator, dims: int = DNC_DIMS,
             iterations: int = DNC_ITERATIONS, filter_frac: float = DNC_FILTER) -> list[int]:
    """Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021) on ``points`` ``(n, d)``:
    ``iterations`` times, on ``dims`` random coordinates, score each point by its squared
    projection on the top singular vector of the centred points and drop the
    ⌊``filter_frac``·f⌋ highest; returns the indices kept every time, ascending."""
    n, d = points.shape
    keep = set(range(n))
    for _ in range(iterations):
        cols = np.sort(rng.choice(d, size=min(dims, d), replace=False))
        centred = points[:, cols] - points[:, cols].mean(axis=0)
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores = (centred @ top) ** 2
        keep &= set(np.argsort(scores, kind="stable")[:n - int(filter_frac * f)].tolist())
    return sorted(keep)


@dataclass(frozen=True)
class DnC(Aggregator):
    """DnC: the unweighted mean of the models :func:`dnc_keep` keeps with f =
    ``num_malicious``, on the float parameters' updates from the global model (``origin``).
    Its random coordinates are drawn from a digest of the round's updates: the same
    uploads, the same choice (a resumed run repeats it exactly)."""

    name: str = "dnc"
    num_malicious: int = 1

    def rule(self, results: Results, origin: NDArrays | None) -> NDArrays:
        updates = _float_updates(results, origin, self.name)
        digest = hashlib.sha256(np.ascontiguousarray(updates).tobytes()).digest()
        kept = dnc_keep(updates, self.num_malicious, np.random.default_rng(list(digest[:16])))
        return _model(updates[kept].mean(axis=0), origin, results)


def nnm(updates: np.ndarray, f: int) -> np.ndarray:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): each update of ``updates``
    ``(n, d)`` replaced by the mean of the n − f updates nearest to it, itself included
    (Euclidean; ties by position)."""
    n = len(updates)
    if not 0 <= f < n:
        raise ValueError(f"nnm with f = {f} needs more than f updates, got {n}")
    dist = pairwise_sq(updates)
    np.fill_diagonal(dist, -1.0)  # itself first, whatever the rounding of the others
    order = np.argsort(dist, axis=1, kind="stable")
    return np.stack([updates[row[:n - f]].mean(axis=0) for row in order])


def arc(updates: np.ndarray, f: int) -> np.ndarray:
    """Adaptive robust clipping (Allouah et al., 2024, arXiv:2405.14432): the k = ⌊2f·(n − f)/n⌋
    longest updates of ``updates`` ``(n, d)`` scaled down to the norm of the longest of the
    others; the rest unchanged."""
    n = len(updates)
    k = (2 * f * (n - f)) // n
    if k <= 0:
        return updates.copy()
    norms = np.linalg.norm(updates, axis=1)
    order = np.argsort(norms, kind="stable")
    bound = norms[order[n - k - 1]]
    out = updates.copy()
    for i in order[n - k:]:
        if norms[i] > bound:
            out[i] *= bound / norms[i]
    return out


PRE_AGGREGATION = {"nnm": nnm, "arc": arc}


def make_aggregator(fed: FederationConfig) -> Aggregator:
    """The aggregation rule named by ``federation.aggregator``."""
    match fed.aggregator:
        case "fedavg" | "fedprox":
            return FedAvg(name=fed.aggregator)
        case "fedmedian":
            return FedMedian()
        case "trimmed_mean":
            return TrimmedMean(beta=fed.trim_beta)
        case "krum":
            return Krum(num_malicious=fed.num_malicious)
        case "multikrum":
            return Krum(name="multikrum", num_malicious=fed.num_malicious, to_keep=fed.multikrum_m)
        case "bulyan":
            return Bulyan(num_malicious=fed.num_malicious)
        case "centered_clipping":
            return CenteredClipping(tau=fed.cc_tau)
        case "dnc":
            return DnC(num_malicious=fed.num_malicious)
    raise ValueError(f"federation.aggregator = {fed.aggregator!r} is unknown")


def update_rule(aggregator: Aggregator, update_clip: str, pre_aggregator: str,
                f: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The server's rule on one round's flat updates (each ``(d,)``, equal weights): the
    server's update clipping (``update_clip``) and pre-aggregator (built for ``f``
    attackers), then ``aggregator`` (:func:`server_updates`). What an adaptive attacker
    optimises against (:mod:`engine.clients.adaptive`)."""
    def rule(updates: list[np.ndarray]) -> np.ndarray:
        zero = [np.zeros_like(updates[0])]
        ups = server_updates({str(k): [u] for k, u in enumerate(updates)}, zero, update_clip,
                             pre_aggregator, f)
        return np.asarray(aggregator([(u, 1) for u in ups.values()], zero)[0])
    return rule


def server_updates(uploads: dict[str, NDArrays], global_params: NDArrays, update_clip: str,
                   pre_aggregator: str, f: int) -> dict[str, NDArrays]:
    """What the rule aggregates: ``uploads`` after the server's update clipping
    (``update_clip`` = ``median``: :func:`clip_to_median_norm`), then the pre-aggregator
    (``nnm`` or ``arc`` with ``f`` attackers, on the float parameters' updates; other
    buffers as uploaded). ``none`` and ``none``: the uploads themselves."""
    if update_clip == "median":
        uploads = clip_to_median_norm(uploads, global_params)
    if pre_aggregator == "none":
        return uploads
    names = list(uploads)
    mixed = PRE_AGGREGATION[pre_aggregator](
        flat_updates([uploads[c] for c in names], global_params), f)
    return {c: as_params(m, global_params, uploads[c])
            for c, m in zip(names, mixed, strict=True)}


def clip_to_median_norm(uploads: dict[str, NDArrays], global_params: NDArrays,
                        bound: float | None = None) -> dict[str, NDArrays]:
    """Each upload's update (upload − global) scaled down to the median update norm of the
    round (the norm bounding of Sun et al. 2019 with FLAME's adaptive bound), or to
    ``bound``: a boosted update keeps its direction but loses its weight; updates at or
    under the bound are unchanged. Norms are over every float parameter; other buffers pass
    as uploaded."""
    floats = [is_float(g) for g in global_params]
    deltas = {c: [np.asarray(a, np.float64) - g if f else None
                  for a, g, f in zip(p, global_params, floats, strict=True)]
              for c, p in uploads.items()}
    norms = {c: float(np.sqrt(sum(float(np.sum(d * d)) for d in ds if d is not None)))
             for c, ds in deltas.items()}
    bound = float(np.median(list(norms.values()))) if bound is None else bound
    out = {}
    for c, params in uploads.items():
        factor = bound / norms[c] if norms[c] > bound else 1.0
        out[c] = params if factor == 1.0 else [
            (g + factor * d).astype(a.dtype) if d is not None else a
            for a, g, d in zip(params, global_params, deltas[c], strict=True)]
    return out


def flame(uploads: dict[str, NDArrays], global_params: NDArrays, noise_lambda: float,
          rng: np.random.Generator) -> tuple[NDArrays, list[str]]:
    """FLAME (Nguyen et al. 2022) on one round's uploads: HDBSCAN on the updates' cosine
    distances (minimum cluster size ⌊n/2⌋ + 1, a single cluster allowed, as FLAME's own
    code does) admits the majority cluster (everyone when it finds none); each admitted
    update is clipped to the median update norm of the round (:func:`clip_to_median_norm`),
    they are averaged with equal weights, and Gaussian noise of standard deviation
    ``noise_lambda`` × that median is added to every float parameter. Updates are upload −
    global (the paper clusters the local models, which share the global model as their
    origin). Returns the new global model and the admitted names."""
    names = list(uploads)
    floats = [is_float(g) for g in global_params]
    flat = flat_updates([uploads[c] for c in names], global_params)
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    distance = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    from sklearn.cluster import HDBSCAN  # here: scikit-learn takes a second to import

    # Fewer than 3 uploads (a Flower round that went on without some) have no majority to
    # find: everyone is admitted, and clipping and noise still apply.
    labels = (np.zeros(len(names), int) if len(names) < 3 else
              HDBSCAN(min_cluster_size=len(names) // 2 + 1, min_samples=1, copy=True,
                      allow_single_cluster=True, metric="precomputed").fit_predict(distance))
    clusters = [k for k in set(labels) if k >= 0]
    major = max(clusters, key=lambda k: int(np.sum(labels == k))) if clusters else None
    admitted = [c for c, k in zip(names, labels, strict=True) if major is None or k == major]
    bound = float(np.median(np.linalg.norm(flat, axis=1)))
    clipped = clip_to_median_norm({c: uploads[c] for c in admitted}, global_params,
                                  bound=bound)
    out = []
    for i, (g, f) in enumerate(zip(global_params, floats, strict=True)):
        if not f:
            out.append(uploads[admitted[0]][i])
            continue
        mean = np.mean([np.asarray(clipped[c][i], np.float64) for c in admitted], axis=0)
        noisy = mean + rng.normal(0.0, noise_lambda * bound, g.shape)
        out.append(noisy.astype(g.dtype))
    return out, admitted


def dp_mean(uploads: dict[str, NDArrays], global_params: NDArrays, clip_norm: float,
            noise_multiplier: float, rng: np.random.Generator,
            expected: float | None = None) -> NDArrays:
    """DP-FedAvg's server step (McMahan et al. 2018): every update clipped to L2 norm
    ``clip_norm`` = C (:func:`clip_to_median_norm` with that bound), summed, N(0, (σC)²)
    added to every float coordinate of the sum (σ = ``noise_multiplier``: the Gaussian
    mechanism, whose sensitivity to one hospital is C), divided by ``expected`` (the expected
    number of uploads qn under sampling; default: the uploads received) and added to the
    global model. No upload (nobody sampled): the noise alone. Other buffers stay the global
    model's."""
    clipped = clip_to_median_norm(uploads, global_params, bound=clip_norm)
    count = float(expected if expected is not None else len(uploads))
    out = []
    for i, g in enumerate(global_params):
        if not is_float(g):  # (a hospital's counters would release its data size)
            out.append(g)
            continue
        models = [np.asarray(p[i], np.float64) for p in clipped.values()]
        # (sum of updates + N(0, (σC)²)) / count, as global + mean update + N(0, (σC/count)²);
        # when everyone took part, the mean of the clipped models is that mean update.
        mean = (np.mean(models, axis=0) if len(models) == count else
                g + sum((m - g for m in models), np.zeros(g.shape)) / count)
        noise = rng.normal(0.0, noise_multiplier * clip_norm / count, g.shape)
        out.append((mean + noise).astype(g.dtype))
    return out


def fltrust(uploads: dict[str, NDArrays], global_params: NDArrays,
            server_params: NDArrays) -> tuple[NDArrays, dict[str, float]]:
    """FLTrust (Cao et al. 2021): the server's own update g₀ = ``server_params`` − global
    (trained on its root set) is the reference; each upload's update gᵢ gets the trust
    score ReLU(cos(gᵢ, g₀)), is rescaled to ‖g₀‖ and the new model is global + Σ tsᵢ·gᵢ' /
    Σ tsᵢ (the global model unchanged when every score is 0). Norms and cosines are over
    every float parameter; other buffers are the server's. Returns the new model and each
    upload's trust score."""
    floats = [is_float(g) for g in global_params]
    ref = flat_update(server_params, global_params)
    ref_norm = float(np.linalg.norm(ref))
    trust, scale = {}, {}
    for c, params in uploads.items():
        g = flat_update(params, global_params)
        norm = float(np.linalg.norm(g))
        cos = float(g @ ref) / (norm * ref_norm) if norm > 0 and ref_norm > 0 else 0.0
        trust[c], scale[c] = max(cos, 0.0), (ref_norm / norm if norm > 0 else 0.0)
    total = sum(trust.values())
    out = []
    for i, (g, f) in enumerate(zip(global_params, floats, strict=True)):
        if not f:
            out.append(server_params[i])
            continue
        step = sum(trust[c] * scale[c] * (np.asarray(uploads[c][i], np.float64) - g)
                   for c in uploads) / total if total > 0 else 0.0
        out.append((g + step).astype(g.dtype))
    return out, trust
