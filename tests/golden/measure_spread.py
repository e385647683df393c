"""How far the numeric tests' figures move across CPU kernel selections and thread counts.

Float results depend on the kernels torch, oneDNN, MKL and OpenBLAS pick for the CPU (AVX2,
AVX-512, AMX) and on the thread count (another split of every sum). One machine can stand in
for several: ``ATEN_CPU_CAPABILITY`` caps torch's own kernels, ``ONEDNN_MAX_CPU_ISA`` the
convolutions', ``MKL_ENABLE_INSTRUCTIONS`` the matrix products', ``OPENBLAS_CORETYPE`` numpy's.
This script runs, in a fresh process per selection (the variables are read when the libraries
load), every golden case of ``tests/test_golden.py``, the batched-vs-sequential comparisons of
``tests/test_batched.py`` and bf16 against fp32 training, and writes what it saw to
``tests/golden/spread.json``: per golden figure its largest relative distance from the
reference selection (``native-1t``, the one the stored figures come from), and per test
quantity its largest value. The tests derive their tolerances from that file.

    .venv/bin/python tests/golden/measure_spread.py              # about 3 min on 2 cores
    .venv/bin/python tests/golden/measure_spread.py --record     # also rewrite the stored figures

One-thread selections run two at a time (each is deterministic whatever else runs); the
two-thread ones run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.core.environment import KERNEL_VARIABLES, cpu_model

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
SPREAD = HERE / "spread.json"
REFERENCE = "native-1t"

AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# name → (environment, torch threads)
SELECTIONS: dict[str, tuple[dict[str, str], int]] = {
    "native-1t": ({}, 1),
    "native-2t": ({}, 2),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "onednn-avx512core": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, 1),
    "mkl-avx2": ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 1),
    "openblas-haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, 1),
    "avx2-machine-1t": (AVX2_MACHINE, 1),
    "avx2-machine-2t": (AVX2_MACHINE, 2),
}
# Cleared from this process's environment before a selection sets its own.
CLEARED = (*KERNEL_VARIABLES, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------- one selection


def _golden(root: Path) -> dict[str, Any]:
    import test_golden

    return {case: test_golden.run_case(case, root / case) for case in test_golden.CASES}


def _batched() -> dict[str, Any]:
    import numpy as np
    import test_batched as tb

    from engine.data.cohort import load_cohort
    from engine.federation.inprocess import run_federation
    from engine.orchestration.presets import build_config

    cfg = build_config("smoke")
    cohort = load_cohort(cfg.data, cfg.seed)
    out: dict[str, Any] = {"equal": {}, "amplified": {}}
    for norm, optimizer, loss, mu, kind in tb.EQUAL_CASES:
        sets = tb._sets(cohort, kind)
        model, start, _, _, seq, bat = tb._train_both(norm, optimizer, loss, mu, sets)
        param = update = loss_rel = 0.0
        for (ps, ms), (pb, mb) in zip(seq, bat, strict=True):
            loss_rel = max(loss_rel, abs(mb["train_loss"] / ms["train_loss"] - 1))
            floats = [(a, b, g) for a, b, g in zip(ps, pb, start, strict=True)
                      if a.dtype.kind == "f"]
            param = max(param, max(float(np.abs(b - a).max()) for a, b, _ in floats))
            us = np.concatenate([(a - g).ravel() for a, _, g in floats])
            ub = np.concatenate([(b - g).ravel() for _, b, g in floats])
            update = max(update, float(np.linalg.norm(ub - us) / np.linalg.norm(us)))
        out["equal"]["-".join(map(str, (norm, optimizer, loss, mu, kind)))] = {
            "param_abs": param, "update_rel": update, "train_loss_rel": loss_rel,
            "prediction_gap_hu": tb._prediction_gap(model, seq, bat, sets)}
    for norm, optimizer, loss, kind in tb.AMPLIFIED_CASES:
        sets = tb._sets(cohort, kind)
        model, start, local, seeds, seq, bat = tb._train_both(norm, optimizer, loss, 0.0, sets)
        out["amplified"][f"{norm}-{optimizer}-{loss}-{kind}"] = {
            "prediction_gap_hu": tb._prediction_gap(model, seq, bat, sets),
            "sensitivity_hu": tb._rounding_sensitivity(model, start, local, seeds, sets, seq)}
    histories = {}
    for recipe, extra in (("sgd", ["federation.optimizer=sgd", "federation.loss=mse",
                                   "federation.lr=0.05", "attacks.poisoning.enabled=true",
                                   "attacks.poisoning.kind=data_noise"]), ("default", [])):
        for mode in ("off", "on"):
            c = build_config("smoke", sets=[*extra, f"federation.batched_clients={mode}"])
            histories[f"{recipe}-{mode}"] = run_federation(c, cohort).history
    out["federations"] = histories
    return out


def _bf16() -> dict[str, Any]:
    from engine.data.cohort import load_cohort
    from engine.federation.inprocess import run_federation
    from engine.orchestration.presets import build_config

    cohort = None
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = build_config("smoke", sets=[f"federation.precision={precision}",
                                          "federation.batched_clients=off"])
        cohort = cohort or load_cohort(cfg.data, cfg.seed)
        out[precision] = [h["mae_hu"] for h in run_federation(cfg, cohort).history]
    return out


def child(name: str, parts: list[str], out: Path) -> None:
    """Measure in this process (its environment is the selection's)."""
    sys.path.insert(0, str(TESTS))
    import torch

    torch.set_num_threads(SELECTIONS[name][1])
    result: dict[str, Any] = {"selection": name, "threads": torch.get_num_threads(),
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "golden" in parts:
            result["golden"] = _golden(Path(tmp))
    if "batched" in parts:
        result["batched"] = _batched()
    if "bf16" in parts:
        result["bf16"] = _bf16()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- summarising


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every scalar of a nested figure by its path (``history[1].ssim``)."""
    if isinstance(value, dict):
        return {k: v for key in value for k, v in leaves(value[key], f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value)
                for k, v in leaves(item, f"{path}[{i}]").items()}
    return {path.lstrip("."): value}


def relative(a: float, ref: float) -> float:
    if a == ref:
        return 0.0
    return abs(a - ref) / max(abs(ref), 1e-12)


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per golden figure: the largest relative distance from the reference selection and the
    selections whose discrete values (verdicts, counts) differ from it; per test quantity:
    the largest value over the selections."""
    ref = results[REFERENCE]
    golden: dict[str, Any] = {}
    for case, figs in ref.get("golden", {}).items():
        want = leaves(figs)
        seen = {n: leaves(r["golden"][case]) for n, r in results.items() if "golden" in r}
        spread, discrete = {}, {}
        for path, value in want.items():
            if isinstance(value, float):
                spread[path] = max(relative(got[path], value) for got in seen.values())
            else:
                differ = sorted(n for n, got in seen.items() if got[path] != value)
                if differ:
                    discrete[path] = differ
        golden[case] = {"max_rel_dev": spread, "discrete_differs": discrete}
    out: dict[str, Any] = {"golden": golden} if golden else {}
    batched = [r["batched"] for r in results.values() if "batched" in r]
    if batched:
        out["batched"] = {
            "equal": {case: {q: max(b["equal"][case][q] for b in batched)
                             for q in batched[0]["equal"][case]}
                      for case in batched[0]["equal"]},
            "amplified_gap_over_sensitivity": {
                case: max(b["amplified"][case]["prediction_gap_hu"]
                          / max(b["amplified"][case]["sensitivity_hu"], 1e-9) for b in batched)
                for case in batched[0]["amplified"]},
            "federations": _federation_gaps(batched)}
    bf16 = {n: r["bf16"] for n, r in results.items() if "bf16" in r}
    if bf16:
        out["bf16"] = {n: {"round1_rel": v["bf16"][1] / v["fp32"][1] - 1,
                           "final_rel": v["bf16"][-1] / v["fp32"][-1] - 1,
                           "fp32_final_mae_hu": v["fp32"][-1],
                           "bf16_final_mae_hu": v["bf16"][-1],
                           "bf16_round0_mae_hu": v["bf16"][0]} for n, v in bf16.items()}
    return out


def _federation_gaps(batched: list[dict[str, Any]]) -> dict[str, float]:
    """Largest batched-vs-sequential distances of whole smoke federations."""
    sgd = default_r1 = final_mae = psnr = ssim = 0.0
    for b in batched:
        f = b["federations"]
        for hs, hb in zip(f["sgd-off"], f["sgd-on"], strict=True):
            sgd = max(sgd, *(relative(hb[k], hs[k]) for k in ("mae_hu", "psnr_db", "ssim")))
        s, o = f["default-off"], f["default-on"]
        default_r1 = max(default_r1,
                         *(relative(o[1][k], s[1][k]) for k in ("mae_hu", "psnr_db", "ssim")))
        final_mae = max(final_mae, relative(o[-1]["mae_hu"], s[-1]["mae_hu"]))
        psnr = max(psnr, abs(o[-1]["psnr_db"] - s[-1]["psnr_db"]))
        ssim = max(ssim, abs(o[-1]["ssim"] - s[-1]["ssim"]))
    return {"sgd_rel": sgd, "default_round1_rel": default_r1, "default_final_mae_rel": final_mae,
            "default_final_psnr_db": psnr, "default_final_ssim": ssim}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--parts", default="golden,batched,bf16",
                   help="what to measure (default: golden,batched,bf16)")
    p.add_argument("--selections", default=",".join(SELECTIONS),
                   help="kernel selections to run (default: all)")
    p.add_argument("--record", action="store_true",
                   help="also rewrite tests/golden/summary_figures.json from the reference "
                        "selection")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    if args.child:
        child(args.child, parts, args.out)
        return 0
    names = args.selections.split(",")
    if REFERENCE not in names:
        p.error(f"--selections must include the reference {REFERENCE!r}")
    raw = TESTS.parent / "test-output" / "spread"
    raw.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}

    def one(name: str) -> dict[str, Any]:
        env, threads = SELECTIONS[name]
        out = raw / f"{name}.json"
        cmd = [sys.executable, __file__, "--child", name, "--out", str(out),
               "--parts", ",".join(parts)]
        subprocess.run(cmd, env=base | env | {"OMP_NUM_THREADS": str(threads)}, check=True,
                       cwd=TESTS.parent)
        result = json.loads(out.read_text())
        print(f"{name}: {result['seconds']} s ({result['cpu_capability']}, "
              f"{result['threads']} threads)", flush=True)
        return result

    results: dict[str, dict[str, Any]] = {}
    single = [n for n in names if SELECTIONS[n][1] == 1]
    with ThreadPoolExecutor(2) as pool:  # one-thread selections two at a time
        for name, result in zip(single, pool.map(one, single), strict=True):
            results[name] = result
    for name in (n for n in names if SELECTIONS[n][1] > 1):
        results[name] = one(name)
    summary = summarise(results)
    cpu = cpu_model()
    # Parts not measured this time keep their earlier figures.
    earlier = json.loads(SPREAD.read_text()) if SPREAD.exists() else {}
    SPREAD.write_text(json.dumps(earlier | {
        "measured": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
        "command": "tests/golden/measure_spread.py", "reference": REFERENCE,
        "selections": {n: {"env": SELECTIONS[n][0], "threads": SELECTIONS[n][1]}
                       for n in names},
        **summary}, indent=1, sort_keys=True) + "\n")
    if args.record and "golden" in parts:
        golden = HERE / "summary_figures.json"
        golden.write_text(json.dumps(results[REFERENCE]["golden"], indent=1, sort_keys=True)
                          + "\n")
    print(f"wrote {SPREAD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
