"""The server view: exactly what an honest-but-curious server observes, round by round.

Each recorded round stores the global model sent to the clients, every client's upload as the
server received it (masked integers under secure aggregation), the aggregate the server
computed, and the metadata clients reported (number of examples, training loss). Attacks read
only this (plus data the attacker is assumed to hold), so a defense's effect emerges from what
is stored here rather than from flags.

Layout in a run folder::

    server_view/round_0003.npz   arrays: global__{i}, aggregate__{i}, upload__{client}__{i}
    server_view/round_0003.json  round, clients, encoding, metadata, parameter names/shapes
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.types import NDArrays
from engine.federation.secagg_encoding import decode_single_upload

VIEW_DIR = "server_view"


def _pack(prefix: str, arrays: NDArrays) -> dict[str, np.ndarray]:
    return {f"{prefix}__{i}": np.asarray(a) for i, a in enumerate(arrays)}


def _unpack(z: Any, prefix: str, count: int) -> NDArrays:
    return [z[f"{prefix}__{i}"] for i in range(count)]


def write_round(run_dir: Path, rnd: int, *, global_params: NDArrays,
                uploads: dict[str, NDArrays], aggregate: NDArrays,
                metadata: dict[str, dict[str, Any]], encoding: dict[str, Any],
                param_names: list[str]) -> None:
    """Store one round's server view atomically (temp file + ``os.replace``)."""
    out = Path(run_dir) / VIEW_DIR
    out.mkdir(parents=True, exist_ok=True)
    arrays = _pack("global", global_params) | _pack("aggregate", aggregate)
    for cid, up in uploads.items():
        arrays |= _pack(f"upload__{cid}", up)
    stem = out / f"round_{rnd:04d}"
    tmp = stem.with_name(stem.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, stem.with_suffix(".npz"))
    meta = {
        "round": rnd,
        "clients": list(uploads),
        "encoding": encoding,
        "metadata": metadata,
        "parameters": [{"name": n, "shape": list(np.shape(a))}
                       for n, a in zip(param_names, global_params, strict=True)],
    }
    tmp_json = stem.with_name(stem.name + ".tmp.json")
    tmp_json.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_json, stem.with_suffix(".json"))


@dataclass
class RoundView:
    """One round as the server saw it.

    Attributes:
        round: 1-based round number; ``global_params`` are the weights sent at its start.
        uploads: client id → arrays exactly as received (float parameters, or masked
            integers when ``encoding["kind"] == "secagg"``).
        aggregate: the server's new global model computed from the uploads.
        metadata: client id → reported values (``num_examples``, ``train_loss``).
        encoding: how uploads are encoded; public protocol parameters only.
    """

    round: int
    global_params: NDArrays
    uploads: dict[str, NDArrays]
    aggregate: NDArrays
    metadata: dict[str, dict[str, Any]]
    encoding: dict[str, Any]
    param_names: list[str]

    @property
    def clients(self) -> list[str]:
        return list(self.uploads)

    @property
    def individual_uploads(self) -> bool:
        """Whether the server holds each client's own upload (not masked, not only a sum)."""
        return self.encoding.get("kind") == "plain"

    def client_params(self, client: str) -> NDArrays:
        """The server's best reading of ``client``'s upload as model parameters.

        Plain uploads are the parameters. Masked uploads are decoded with the protocol's
        public dequantisation, which is all the server can do without the other clients'
        masks: the result is the client's parameters plus a uniformly random mask.
        """
        upload = self.uploads[client]
        if self.encoding.get("kind") == "secagg":
            return decode_single_upload(upload, self.encoding, self.global_params)
        return upload

    def client_update(self, client: str) -> NDArrays:
        """``client_params(client) − global_params`` (float arrays)."""
        return [np.asarray(p, dtype=np.float64) - np.asarray(g, dtype=np.float64)
                for p, g in zip(self.client_params(client), self.global_params, strict=True)]


class ServerView:
    """Read access to the server view stored in a run folder."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / VIEW_DIR

    @property
    def rounds(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in self.dir.glob("round_*.json")
                      if (p.with_suffix(".npz")).exists())

    def __getitem__(self, rnd: int) -> RoundView:
        meta_path = self.dir / f"round_{rnd:04d}.json"
        if not meta_path.exists():
            raise KeyError(f"round {rnd} was not recorded; recorded rounds: {self.rounds}")
        meta = json.loads(meta_path.read_text())
        count = len(meta["parameters"])
        with np.load(meta_path.with_suffix(".npz")) as z:
            return RoundView(
                round=rnd,
                global_params=_unpack(z, "global", count),
                uploads={c: _unpack(z, f"upload__{c}", count) for c in meta["clients"]},
                aggregate=_unpack(z, "aggregate", count),
                metadata=meta["metadata"],
                encoding=meta["encoding"],
                param_names=[p["name"] for p in meta["parameters"]],
            )
