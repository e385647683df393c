"""The GPU path, checked on a CUDA machine: device, CPU/GPU parity of a whole run (local
training in fp32 and in bf16 autocast, ``federation.precision``), U-Net step
time and achieved throughput at 64/128/256 px (fp32 and bf16 autocast), and how far the
``full``-scale study gets in a time box.

    bash benchmarks/gpu_check.sh            # on the GPU machine, after gpu_wheels.sh here
    python -m benchmarks.gpu_check --out DIR [--study-seconds 300]

Prints one JSON object and writes it to ``DIR/gpu_check.json``. Without CUDA it says so and
measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.learning.model import build_unet

# Dense peak throughput of one H100 SXM (NVIDIA's data sheet), TFLOP/s, for the share of the
# card a training step reaches; another card: read its own sheet.
PEAK_TFLOPS = {"fp32 (no tensor cores)": 67.0, "bf16 tensor cores": 989.0}
STUDY_CHANNELS = (16, 32, 64, 128)


def _smoke(device: str, root: Path, precision: str = "fp32") -> dict:
    """Final metrics of the ``smoke`` preset on ``device`` with local training in
    ``precision`` (a child process, so CPU means no CUDA at all)."""
    env = os.environ | ({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})
    out = subprocess.run([sys.executable, "-m", "engine", "run", "--preset", "smoke",
                          "--set", f"federation.precision={precision}",
                          "--out", str(root / f"{device}-{precision}"), "--quiet"],
                         env=env, capture_output=True, text=True, check=True)
    summary = json.loads((Path(out.stdout.strip()) / "summary.json").read_text())
    return {"device": summary.get("device"), **summary["federation"]["final"],
            "train_s": summary["timing"].get("train_s")}


def _step_time(size: int, precision: str, steps: int = 20, batch: int = 8) -> dict:
    """One local training step of the study's U-Net (InstanceNorm, L1, Adam) at ``size``."""
    model = build_unet(STUDY_CHANNELS, "instance", 2).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.rand(batch, 1, size, size, device="cuda")
    y = torch.rand(batch, 1, size, size, device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.l1_loss(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    tflops = counter.get_total_flops() / seconds / 1e12
    peak = PEAK_TFLOPS["bf16 tensor cores" if precision == "bf16" else "fp32 (no tensor cores)"]
    return {"size": size, "precision": precision, "batch": batch,
            "step_ms": round(seconds * 1e3, 2), "tflops": round(tflops, 2),
            "share_of_peak": round(tflops / peak, 4),
            "memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def _study(seconds: int, root: Path) -> dict:
    """``fedsct study --scale full`` for at most ``seconds``: cells finished and time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "study", "--scale", "full",
                             "--out", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds)
        finished = proc.returncode == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        finished = False
    state = next((json.loads(p.read_text()) for p in (root / "studies").glob("*/sweep.json")),
                 {})
    return {"finished": finished, "wall_s": round(time.perf_counter() - t0, 1),
            "cells_done": state.get("cells_done"), "cells": len(state.get("cells") or []),
            "log_tail": out.splitlines()[-5:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("test-output/gpu"))
    p.add_argument("--study-seconds", type=int, default=300)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        report["note"] = "no CUDA device: nothing measured"
    else:
        props = torch.cuda.get_device_properties(0)
        report["device"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30),
                            "multiprocessors": props.multi_processor_count}
        with tempfile.TemporaryDirectory() as tmp:
            cpu = _smoke("cpu", Path(tmp))
            gpu = {p: _smoke("cuda", Path(tmp), p) for p in ("fp32", "bf16")}
        report["smoke_parity"] = {"cpu": cpu, **{f"gpu_{p}": g for p, g in gpu.items()}, **{
            f"abs_diff_{p}": {k: round(abs(cpu[k] - g[k]), 6) for k in ("mae_hu", "psnr_db",
                                                                       "ssim")}
            for p, g in gpu.items()}}
        report["steps"] = [_step_time(size, precision) for size in (64, 128, 256)
                           for precision in ("fp32", "bf16")]
        with tempfile.TemporaryDirectory() as tmp:
            report["study_full"] = _study(args.study_seconds, Path(tmp))
    text = json.dumps(report, indent=1)
    print(text)
    (args.out / "gpu_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
