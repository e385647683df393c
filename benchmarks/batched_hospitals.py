"""Batched hospitals: federation round time with the hospitals trained as one batched
computation (``federation.batched_clients = on``) vs one after another (``off``).

In one process: the ``poison-base`` and ``study-setup`` presets, then ``poison-base`` with
4, 8 and 16 hospitals (``data.centers``). Each federation runs sequential and batched
alternately; a run's round time is its mean over rounds, and the faster of the repeats of
each is kept (other jobs on the machine disturb single runs). Two figures per run:

* **round**: the whole round as the runner spends it, evaluation of the new global model
  included (``federation.eval_every = 1``, the presets' setting);
* **train**: the round without evaluation (local training, uploads, aggregation:
  ``FederationResult.train_s``).

A last table times one training step of 4 hospitals three ways (one after another, the
grouped network of :mod:`engine.learning.batched`, and ``torch.func.vmap`` over
``functional_call`` with stacked parameters), the alternative that was measured before
choosing the grouped network.

    python -m benchmarks.batched_hospitals [--quick] [--threads 2] [--repeats 2]

Writes ``test-output/benchmarks/batched.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from engine.data.cohort import load_cohort
from engine.federation.inprocess import run_federation
from engine.learning.batched import grouped_forward
from engine.learning.model import build_unet
from engine.orchestration.presets import build_config

OUT = Path("test-output/benchmarks/batched.json")
# Fewer rounds than the presets' own: the server view (which study-setup keeps for its
# membership attack on rounds 7–12) is not stored and the attack not run; neither is part of
# a round's training.
FEWER_ROUNDS = ["federation.server_view_rounds=none", "attacks.membership.enabled=false"]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def one_run(cfg: Any, cohort: Any) -> dict[str, float]:
    """Mean seconds per round (with and without evaluation) and the final MAE of one run."""
    stamps: list[float] = []
    result = run_federation(cfg, cohort, on_round=lambda _e: stamps.append(time.perf_counter()))
    rounds = cfg.federation.rounds
    return {"round_s": (stamps[-1] - stamps[0]) / rounds, "train_s": result.train_s / rounds,
            "final_mae_hu": result.history[-1]["mae_hu"]}


def compare(preset: str, sets: list[str], repeats: int) -> dict[str, Any]:
    """Sequential vs batched round times of ``preset`` with ``sets``."""
    cfgs = {mode: build_config(preset, sets=[*sets, f"federation.batched_clients={mode}"])
            for mode in ("off", "on")}
    cohort = load_cohort(cfgs["off"].data, cfgs["off"].seed)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            runs[mode].append(one_run(cfgs[mode], cohort))
    best = {mode: {k: min(r[k] for r in rs) for k in ("round_s", "train_s")}
            for mode, rs in runs.items()}
    f = cfgs["off"].federation
    print(f"  {preset} {' '.join(sets)}: round {best['off']['round_s']:.3f} s sequential, "
          f"{best['on']['round_s']:.3f} s batched (load {loadavg()})", flush=True)
    return {
        "preset": preset, "sets": sets, "centers": cfgs["off"].data.centers,
        "image_size": cfgs["off"].data.image_size, "rounds": f.rounds,
        "steps_per_round": f.local_epochs * -(-len(cohort.centers[0].train) // f.batch_size),
        "sequential": best["off"], "batched": best["on"],
        "ratio_round": best["off"]["round_s"] / best["on"]["round_s"],
        "ratio_train": best["off"]["train_s"] / best["on"]["train_s"],
        "final_mae_hu": {"sequential": runs["off"][0]["final_mae_hu"],
                         "batched": runs["on"][0]["final_mae_hu"]},
        "repeats": runs,
    }


def step_times(preset: str, hospitals: int = 4, steps: int = 6) -> dict[str, float]:
    """Milliseconds for one Adam step of ``hospitals`` hospitals (batch 8 each): one after
    another, grouped network, and vmap; best of 3."""
    cfg = build_config(preset)
    m, size = cfg.model, cfg.data.image_size
    torch.manual_seed(0)
    base = build_unet(tuple(m.channels), m.norm, m.num_res_units).train()
    x = torch.rand(hospitals, 8, 1, size, size)
    y = torch.rand(hospitals, 8, 1, size, size)

    def sequential() -> None:
        models = [copy.deepcopy(base) for _ in range(hospitals)]
        opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in models]
        for _ in range(steps):
            for net, opt, xs, ys in zip(models, opts, x, y, strict=True):
                opt.zero_grad()
                F.l1_loss(net(xs), ys).backward()
                opt.step()

    def grouped() -> None:
        params = {n: p.detach().unsqueeze(0).repeat(hospitals, *[1] * p.dim()).requires_grad_()
                  for n, p in base.named_parameters()}
        opt = torch.optim.Adam(params.values(), lr=1e-3)
        xs = x.permute(1, 0, 2, 3, 4).reshape(8, hospitals, size, size)
        ys = y.permute(1, 0, 2, 3, 4).reshape(8, hospitals, size, size)
        for _ in range(steps):
            opt.zero_grad()
            out = grouped_forward(base, params, {}, xs)
            (out - ys).abs().mean(dim=(0, 2, 3)).sum().backward()
            opt.step()

    def vmapped() -> None:
        params, buffers = stack_module_state([copy.deepcopy(base) for _ in range(hospitals)])
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        opt = torch.optim.Adam(params.values(), lr=1e-3)
        meta = copy.deepcopy(base).to("meta")

        def loss(p: dict, b: dict, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            return F.l1_loss(functional_call(meta, (p, b), (xs,)), ys)

        batched = vmap(loss)
        for _ in range(steps):
            opt.zero_grad()
            batched(params, buffers, x, y).sum().backward()
            opt.step()

    out = {}
    for name, fn in (("sequential", sequential), ("grouped", grouped), ("vmap", vmapped)):
        fn()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_ms"] = 1000 * best / steps
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, one repeat")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each mode (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 2)
    rounds = {"poison-base": 2 if args.quick else 4, "study-setup": 1 if args.quick else 2}
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "loadavg_before": loadavg(), "repeats": repeats,
    }
    print(f"torch threads {torch.get_num_threads()}, load average before: "
          f"{report['loadavg_before']}", flush=True)
    compare("poison-base", ["federation.rounds=1", *FEWER_ROUNDS], 1)  # warm-up, not kept
    report["presets"] = [compare(p, [f"federation.rounds={r}", *FEWER_ROUNDS], repeats)
                         for p, r in rounds.items()]
    report["hospitals"] = [compare("poison-base", [f"federation.rounds={rounds['poison-base']}",
                                                   *FEWER_ROUNDS, f"data.centers={n}"],
                                   repeats)
                           for n in (4, 8, 16)]
    report["step_4_hospitals"] = {p: step_times(p) for p in rounds}
    report["loadavg_after"] = loadavg()

    head = (f"{'federation':<28} {'steps':>5} {'seq round s':>11} {'bat round s':>11} "
            f"{'ratio':>6} {'seq train s':>11} {'bat train s':>11} {'ratio':>6}")
    print(head)
    for row in report["presets"] + report["hospitals"]:
        name = f"{row['preset']} ({row['centers']} hosp., {row['image_size']} px)"
        s, b = row["sequential"], row["batched"]
        print(f"{name:<28} {row['steps_per_round']:>5} {s['round_s']:>11.3f} "
              f"{b['round_s']:>11.3f} {row['ratio_round']:>5.2f}x {s['train_s']:>11.3f} "
              f"{b['train_s']:>11.3f} {row['ratio_train']:>5.2f}x")
    print(f"\n{'one Adam step, 4 hospitals':<28} {'sequential ms':>13} {'grouped ms':>10} "
          f"{'vmap ms':>8}")
    for preset, t in report["step_4_hospitals"].items():
        print(f"{preset:<28} {t['sequential_ms']:>13.1f} {t['grouped_ms']:>10.1f} "
              f"{t['vmap_ms']:>8.1f}")
    print(f"\nload average before: {report['loadavg_before']}, after: "
          f"{report['loadavg_after']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
