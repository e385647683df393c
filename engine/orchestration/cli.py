"""The ``fedsct`` command (also ``python -m engine``)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.core.config import ConfigError
from engine.orchestration.presets import PRESETS, SWEEPS, build_config
from engine.orchestration.store import RunIndex, create_run

EXAMPLES = """examples:
  fedsct run --preset smoke
  fedsct run --preset demo --set federation.aggregator=fedmedian --set federation.rounds=5
  fedsct run --config my_experiment.yaml --out /data/fedsct-runs
  fedsct run --preset smoke --set federation.runtime=flower-sim
  fedsct run --preset smoke --set federation.runtime=flower-deploy   # SuperLink + SuperNodes
  fedsct sweep --preset whatif --set data.whatif_patient=runs/uploads/1BA001
  fedsct sweep --preset mia-dp
  fedsct presets
  fedsct runs
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedsct",
        description="FedSCT Security Lab: train a federated MRI→synthetic-CT U-Net, attack it, "
        "defend it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", help="run one experiment and write a run folder",
                       description="Run one experiment headless. Settings are applied in "
                       "order: defaults, --preset, --config, --set.")
    r.add_argument("--preset", help="named preset (see `fedsct presets`)")
    r.add_argument("--config", metavar="FILE.yaml", help="YAML/JSON experiment config")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one key, e.g. federation.rounds=5 (repeatable; YAML values)")
    r.add_argument("--out", metavar="DIR",
                   help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    r.add_argument("--quiet", action="store_true", help="print only the run folder path")
    sw = sub.add_parser("sweep", help="run or resume a sweep of experiments into one table",
                        description="Run a named sweep; cells whose exact config already "
                        "finished are reused, so rerunning the same command resumes it.")
    sw.add_argument("--preset", required=True, help="sweep preset (see `fedsct presets`)")
    sw.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a key in every cell (repeatable)")
    sw.add_argument("--out", metavar="DIR",
                    help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    sub.add_parser("presets", help="list the named presets and sweeps")
    ls = sub.add_parser("runs", help="list the runs in the runs root")
    ls.add_argument("--out", metavar="DIR", help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    # Deliberately lazy: torch and MONAI load only once the config is valid, so a bad
    # setting is refused at once.
    from engine.orchestration.experiment import execute

    try:
        cfg = build_config(args.preset, args.config, args.sets)
    except ConfigError as err:
        print(f"fedsct: {err}", file=sys.stderr)
        return 2
    run = create_run(cfg, args.out, preset=args.preset)
    if not args.quiet:
        print(f"run {run.run_id} → {run.path}", file=sys.stderr)
    summary = execute(run, on_round=None if args.quiet else _round_printer(
        cfg.federation.rounds))
    status = run.status()
    if summary is None:
        print(f"fedsct: run {status['state']}: {status.get('error', '')} (see {run.path}/log.txt)",
              file=sys.stderr)
        return 1
    if not args.quiet:
        fin = summary["federation"]["final"]
        print(f"done in {summary['timing']['wall_s']:.1f} s: MAE {fin['mae_hu']:.1f} HU, "
              f"PSNR {fin['psnr_db']:.2f} dB, SSIM {fin['ssim']:.3f}", file=sys.stderr)
    print(run.path)
    return 0


def _round_printer(total: int):  # noqa: ANN202 - a callback
    """A callback that prints each round's metrics to stderr."""

    def echo(record: dict) -> None:
        g = record.get("global")
        text = (f"MAE {g['mae_hu']:7.1f} HU  PSNR {g['psnr_db']:5.2f} dB  SSIM {g['ssim']:.3f}"
                if g else "(not evaluated)")
        print(f"  round {record['round']:>3}/{total}  {text}  [{record['elapsed_s']:.1f} s]",
              file=sys.stderr, flush=True)

    return echo


def _cmd_sweep(args: argparse.Namespace) -> int:
    from engine.orchestration.sweeps import run_sweep  # lazy, as in _cmd_run

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        folder = run_sweep(args.preset, root=args.out, sets=args.sets, progress=progress)
    except ConfigError as err:
        print(f"fedsct: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"fedsct: {err}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def _cmd_presets() -> int:
    width = max(map(len, [*PRESETS, *SWEEPS]))
    print("experiment presets (fedsct run --preset NAME):")
    for name, p in PRESETS.items():
        print(f"  {name:<{width}} {p['description']}")
    print("sweep presets (fedsct sweep --preset NAME):")
    for name, p in SWEEPS.items():
        print(f"  {name:<{width}} {p['description']}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    rows = RunIndex(args.out).list()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no runs yet; start one with `fedsct run --preset demo`")
        return 0
    print(f"{'run id':<44} {'state':<10} {'aggregator':<12} {'rounds':>6} {'MAE HU':>8}  created")
    for r in rows:
        mae = f"{r['final_mae_hu']:.1f}" if r["final_mae_hu"] is not None else "-"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
        print(f"{r['run_id']:<44} {r['state'] or '?':<10} {r['aggregator'] or '?':<12} "
              f"{r['rounds'] or 0:>6} {mae:>8}  {created}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "presets":
        return _cmd_presets()
    if args.command == "sweep":
        return _cmd_sweep(args)
    return _cmd_runs(args)


if __name__ == "__main__":
    sys.exit(main())
