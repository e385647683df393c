"""What a run will need, estimated before it starts, against what the machine has.

Every config key can be valid on its own while the whole asks for more than any machine has
(every data key at its maximum: ≈ 2.8 TiB of slices in memory; ≈ 6.2 TB of server view). A run is
refused before its folder is made when its estimate exceeds the free disk of the runs folder
or the memory available now, with the estimate in the message.

The estimate is deliberately simple, and on the safe side for what it counts:

* **disk**: the server view (per recorded round, every hospital's upload, the global model
  and the aggregate; masked uploads under secure aggregation take 8 bytes per parameter;
  each array's file entry), the checkpoint and the final model (4 bytes per parameter
  each); logs, metrics and sample images (kilobytes) are not counted;
* **memory**: the cohort's slices (MRI, CT and mask, float32, held twice while training
  batches are built) and the models held at once (the global one, each hospital's trained
  copy, Adam's two moments); not the ≈ 0.5 GiB that torch itself takes.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.core.config import ConfigError, ExperimentConfig

GIB = 1024**3
# Keep this share of the machine for everything else (the dashboard, the OS, other jobs).
MEMORY_SHARE = 0.8
DISK_SHARE = 0.9


@dataclass(frozen=True)
class Needs:
    """A run's estimated needs, in bytes, and the model size they follow from."""

    parameters: int
    recorded_rounds: int
    server_view_bytes: int
    disk_bytes: int
    memory_bytes: int


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MiB"


def model_size(cfg: ExperimentConfig) -> tuple[int, int]:
    """(parameters, tensors) of the model, built on PyTorch's meta device (no memory used)."""
    import torch

    from engine.learning.model import build_unet

    m = cfg.model
    with torch.device("meta"):
        model = build_unet(tuple(m.channels), m.norm, m.num_res_units)
    state = model.state_dict()
    return sum(t.numel() for t in state.values()), len(state)


def recorded_rounds(cfg: ExperimentConfig) -> int:
    views = cfg.federation.server_view_rounds
    if isinstance(views, list):
        return len([r for r in views if r <= cfg.federation.rounds])
    return {"all": cfg.federation.rounds, "last": 1, "none": 0}[views]


def estimate(cfg: ExperimentConfig) -> Needs:
    """The disk and memory a run of ``cfg`` needs (see the module docstring)."""
    p, tensors = model_size(cfg)
    d, centers = cfg.data, cfg.data.centers
    upload = 8 if cfg.defenses.secure_aggregation else 4
    rounds = recorded_rounds(cfg)
    # Per recorded round: the models' bytes, and for each stored array its .npz entry
    # (≈ 250 bytes of zip and .npy headers), plus the round's JSON (≈ 16 KiB).
    view = rounds * (p * (centers * upload + 2 * 4) + (centers + 2) * tensors * 250 + 16384)
    disk = view + 2 * p * 4
    patients = centers * (d.patients_per_center + d.heldout_per_center) + (
        d.unseen_patients if d.unseen_center else 0)
    data = patients * d.slices_per_patient * d.image_size**2 * (4 + 4 + 1)
    models = p * 4 * (centers + 3)
    return Needs(p, rounds, view, disk, 2 * data + models)


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_resources(cfg: ExperimentConfig, root: Path) -> Needs:
    """The run's needs; ``ConfigError`` (one line with the estimate and what to change) when
    the runs folder's disk or the machine's memory cannot hold them."""
    needs = estimate(cfg)
    # The runs folder is made with the run's folder: ask the disk of what exists already.
    where = Path(root).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needs.disk_bytes > DISK_SHARE * free:
        raise ConfigError(
            f"this run would write about {_size(needs.disk_bytes)} (the server view: "
            f"{needs.recorded_rounds} recorded rounds × {cfg.data.centers} hospitals × "
            f"{needs.parameters:,} parameters), but {root} has {_size(free)} free; record fewer "
            f"rounds (federation.server_view_rounds), use fewer hospitals or a smaller model, "
            f"or free space")
    memory = available_memory()
    if memory is not None and needs.memory_bytes > MEMORY_SHARE * memory:
        raise ConfigError(
            f"this run would need about {_size(needs.memory_bytes)} of memory (its patients' "
            f"slices and {cfg.data.centers + 3} copies of a {needs.parameters:,}-parameter "
            f"model), but {_size(memory)} is available; use fewer or smaller images "
            f"(data.image_size, data.slices_per_patient), fewer patients or hospitals")
    return needs


def release_freed_memory() -> None:
    """Give memory this process has freed back to the system now: glibc keeps freed blocks
    for reuse otherwise, and a 130 MiB upload arrives in many blocks."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
