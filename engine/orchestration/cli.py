"""The ``fedsct`` command (also ``python -m engine``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engine.core.config import MAX_MESSAGE, ConfigError
from engine.core.config.echo import unknown_name
from engine.core.run_folder import RunFolder
from engine.orchestration.presets import PRESETS, build_config
from engine.orchestration.store import RunIndex, check_resumable, create_run, open_run, runs_root
from engine.orchestration.study_catalogue import STUDY_SCALES, study_cells
from engine.orchestration.sweep_catalogue import SWEEPS, sweep_spec
from engine.orchestration.threads import (
    OPENMP_DEFAULTS,
    default_threads,
    parse_threads,
    use_threads,
)

EXAMPLES = """examples:
  fedsct run --preset smoke
  fedsct run --preset demo --set federation.aggregator=fedmedian --set federation.rounds=5
  fedsct run --config my_experiment.yaml --out /data/fedsct-runs
  fedsct run --preset smoke --set federation.runtime=flower-sim
  fedsct run --preset smoke --threads 1           # figures depend on the thread count
  fedsct run --resume 20261127-101500-demo-1a2b   # go on after a crash or a stop
  fedsct run --preset smoke --set federation.runtime=flower-deploy   # SuperLink + SuperNodes
  fedsct sweep --preset whatif --set data.whatif_patient=runs/uploads/1BA001
  fedsct sweep --preset mia-dp
  fedsct study --scale demo                       # every analysis of the study, one report
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
    _add_run_parser(sub)
    _add_sweep_parser(sub)
    _add_study_parser(sub)
    sub.add_parser("presets", help="list the named presets and sweeps")
    sub.add_parser("dashboard", add_help=False,
                   help="serve the dashboard on http://127.0.0.1:8501 (see `fedsct dashboard "
                        "--help`)")
    ls = sub.add_parser("runs", help="list the runs in the runs root")
    ls.add_argument("--out", metavar="DIR", help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``fedsct run``: one experiment, new or resumed."""
    r = sub.add_parser("run", help="run one experiment and write a run folder",
                       description="Run one experiment headless. Settings are applied in "
                       "order: defaults, --preset, --config, --set.")
    r.add_argument("--preset", help="named preset (see `fedsct presets`)")
    r.add_argument("--config", metavar="FILE.yaml", help="YAML/JSON experiment config")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one key, e.g. federation.rounds=5 (repeatable; YAML values)")
    r.add_argument("--out", metavar="DIR",
                   help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    r.add_argument("--resume", metavar="RUN_ID",
                   help="go on with an interrupted, failed or cancelled run from its last "
                        "checkpoint (federation.checkpoint_every) instead of starting a new one; "
                        "it ends as the uninterrupted run would have")
    r.add_argument("--quiet", action="store_true", help="print only the run folder path")
    _threads_option(r, "the run")


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """``fedsct sweep``: a named sweep, run or resumed."""
    sw = sub.add_parser("sweep", help="run or resume a sweep of experiments into one table",
                        description="Run a named sweep; cells whose exact config already "
                        "finished are reused, so rerunning the same command resumes it.")
    sw.add_argument("--preset", required=True, help="sweep preset (see `fedsct presets`)")
    sw.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a key in every cell (repeatable)")
    sw.add_argument("--out", metavar="DIR",
                    help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    sw.add_argument("--workers", type=_workers, default=1, metavar="N",
                    help="cells trained at once, each in its own process on one torch thread "
                         "(default 1; 2 on a 2-core machine trains the poison-paper grid "
                         "1.9× faster); the thread count is part of the figures, so cells "
                         "trained this way are reused only by sweeps on one thread")
    _threads_option(sw, "each cell (with --workers 1)")


def _add_study_parser(sub: argparse._SubParsersAction) -> None:
    """``fedsct study``: every analysis of the study at one scale, and its report."""
    st = sub.add_parser("study", help="run the study's analyses and write one study report",
                        description="Run every analysis of the FedSynthCT-Brain security "
                        "study (sCT quality, membership inference with and without secure "
                        "aggregation, DLG and the strongest inversion, high/low-noise "
                        "poisoning per rule; beyond it, the sCT backdoor per defense) at one "
                        "scale, then write report.md and "
                        "report.html beside the study's figures. Finished runs are reused, "
                        "so rerunning the command continues a stopped study.")
    st.add_argument("--scale", choices=STUDY_SCALES, default="demo",
                    help="demo: minutes on 2 CPU cores; paper: the presets as they are; "
                         "full: 256 px and larger cohorts, meant for a GPU (default: demo)")
    st.add_argument("--out", metavar="DIR",
                    help="runs root (default: $FEDSCT_RUNS_DIR or ./runs)")
    st.add_argument("--workers", type=_workers, default=1, metavar="N",
                    help="experiments trained at once, as for `fedsct sweep --workers`")
    _threads_option(st, "each experiment (with --workers 1)")


def _threads_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--threads", type=_threads, metavar="N",
        help=f"torch threads for {what}, fixed from start to end (default: $FEDSCT_THREADS, "
             "else $OMP_NUM_THREADS, else this machine's cores ÷ $FEDSCT_MAX_JOBS; here "
             f"{_default_threads_text()}); figures depend on it, and summary.json → "
             "environment records it")


def _default_threads_text() -> str:
    try:
        return str(default_threads())
    except ValueError:
        return "invalid here"


def _threads(text: str) -> int:
    """``--threads``: 1 to MAX_THREADS (argparse reports the refusal in one line)."""
    try:
        return parse_threads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--threads ")) from None


def _refuse(message: object) -> int:
    """Print an invalid-input error as one bounded line; exit code 2."""
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    print(f"fedsct: {text}", file=sys.stderr)
    return 2


def _workers(text: str) -> int:
    """``--workers``: 1 to 16 (argparse reports the refusal in one line)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 16:
        raise argparse.ArgumentTypeError(f"{_short(text, 20)} is not a number of workers; use "
                                         "1 to 16 (about one per CPU core)")
    return n


def _short(text: str, limit: int = 80) -> str:
    """``text`` quoted and cut to ``limit`` characters: echoed input stays one short line."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_name(name: str, catalogue: dict, kind: str) -> None:
    """A preset or sweep name that exists; checked here so that the refusal echoes only a
    short piece of what was typed."""
    if name not in catalogue:
        raise ConfigError(unknown_name(kind, name, list(catalogue)))


def _usable_runs_root(out: str | None) -> Path:
    """The runs root, checked before anything runs: a folder (or a path that can become one)
    where this process can write. Raises :class:`ConfigError` with one line otherwise."""
    env = os.environ.get("FEDSCT_RUNS_DIR")
    label = f"--out {_short(out)}" if out else f"$FEDSCT_RUNS_DIR {_short(env)}" if env else ""
    try:
        root = runs_root(out)
        label = label or _short(str(root))
        probe = root
        while not probe.exists():  # the nearest existing folder is where mkdir will write
            probe = probe.parent
        if not probe.is_dir():
            where = "is a file" if probe == root else f"is under a file ({_short(str(probe))})"
            raise ConfigError(f"runs root {label} {where}; give a folder")
        # Writing is the only reliable test (permissions, ACLs, read-only mounts, root).
        os.rmdir(tempfile.mkdtemp(prefix=".fedsct-write-test-", dir=probe))
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, ConfigError):
            raise
        reason = (getattr(err, "strerror", None)
                  or ("not a usable path" if isinstance(err, ValueError) else type(err).__name__))
        raise ConfigError(f"runs root {label or 'runs'} is not a writable folder "
                          f"({reason})") from None
    return root


def _open_resumable(args: argparse.Namespace) -> RunFolder:
    """The run ``--resume`` names, checked before torch is imported. Raises
    :class:`ConfigError` with one line when it can't be resumed."""
    if args.preset is not None or args.config is not None or args.sets:
        raise ConfigError("--resume goes on with the run's own settings: drop --preset, "
                          "--config and --set")
    if args.threads is not None:
        raise ConfigError("--resume goes on with the thread count the run started with (its "
                          "figures depend on it): drop --threads")
    root = _usable_runs_root(args.out)
    try:
        run = open_run(args.resume, root)
        check_resumable(run)
    except (FileNotFoundError, ValueError) as err:  # ConfigError too: its config is damaged
        raise ConfigError(f"can't resume {_short(args.resume, 60)}: {err}") from None
    return run


def _cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        try:
            run = _open_resumable(args)
        except ConfigError as err:
            return _refuse(err)
        from engine.orchestration.experiment import execute  # lazy, as below

        if not args.quiet:
            print(f"resuming run {run.run_id} → {run.path}", file=sys.stderr)
        run.clear_cancel()  # the stop that ended it must not end the resumed run
        use_threads(default_threads())  # execute() restores the run's own count if recorded
        cfg = run.config()
        summary = execute(run, on_round=None if args.quiet else _round_printer(
            cfg.federation.rounds), resume=True)
        return _finish(run, summary, args.quiet)
    try:
        if args.preset is not None:
            _check_name(args.preset, PRESETS, "preset")
        cfg = build_config(args.preset, args.config, args.sets)
        root = _usable_runs_root(args.out)
    except ConfigError as err:
        return _refuse(err)
    # Deliberately lazy: torch and MONAI load only once the config and the runs root are
    # valid, so a bad setting is refused at once (validation alone takes a fraction of a
    # second; importing torch takes seconds). Imported before the run folder is made, so a
    # broken install leaves no run queued forever.
    from engine.orchestration.experiment import execute
    from engine.orchestration.resources import check_resources

    try:
        check_resources(cfg, root)
    except ConfigError as err:
        return _refuse(err)
    try:
        run = create_run(cfg, root, preset=args.preset)
    except OSError as err:  # the runs root changed since it was checked
        return _refuse(f"cannot create a run folder under {_short(str(root))} "
                       f"({err.strerror or type(err).__name__})")
    threads = use_threads(args.threads or default_threads())
    if not args.quiet:
        print(f"run {run.run_id} → {run.path} ({threads} torch threads)", file=sys.stderr)
    summary = execute(run, on_round=None if args.quiet else _round_printer(
        cfg.federation.rounds))
    return _finish(run, summary, args.quiet)


def _finish(run: RunFolder, summary: dict | None, quiet: bool) -> int:
    """Report how a run ended (stderr) and print its folder (stdout); exit code 1 if it did
    not finish."""
    status = run.status()
    if summary is None:
        print(f"fedsct: run {status.state}: {status.error or ''} (see {run.path}/log.txt)",
              file=sys.stderr)
        return 1
    if not quiet:
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


def _check_sweep(name: str, sets: list[str]) -> None:
    """Every cell's config and the sweep's required keys, as :func:`run_sweep` checks them
    again, but before torch is imported. Raises :class:`ConfigError`."""
    spec = sweep_spec(name)
    configs = [build_config(spec["base"], sets=[*cell, *sets]) for cell in spec["cells"]]
    for key in spec.get("requires", []):
        section, field = key.split(".")
        if configs and getattr(getattr(configs[0], section), field) is None:
            raise ConfigError(f"sweep {name!r} needs {key}: add --set {key}=...")


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        _check_name(args.preset, SWEEPS, "sweep preset")
        _check_sweep(args.preset, args.sets)
        _usable_runs_root(args.out)
    except ConfigError as err:
        return _refuse(err)
    from engine.orchestration.sweeps import run_sweep  # lazy, as in _cmd_run

    use_threads(args.threads or default_threads())
    return _run_to_folder(lambda progress: run_sweep(args.preset, root=args.out, sets=args.sets,
                                                     progress=progress, workers=args.workers))


def _run_to_folder(job: Callable[[Callable[[str], None]], Path]) -> int:
    """Run a sweep or study with its progress on stderr; print its folder (exit 0), or the
    error (exit 2 for a config the engine refuses, 1 for a failed cell)."""

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        folder = job(progress)
    except ConfigError as err:
        return _refuse(err)
    except RuntimeError as err:
        print(f"fedsct: {err}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    try:
        for _, cell in study_cells(args.scale):  # every cell valid before anything runs
            build_config(cell.preset, sets=cell.sets)
        _usable_runs_root(args.out)
    except ConfigError as err:
        return _refuse(err)
    from engine.orchestration.study import run_study  # lazy, as in _cmd_run

    use_threads(args.threads or default_threads())
    return _run_to_folder(lambda progress: run_study(args.scale, root=args.out,
                                                     progress=progress, workers=args.workers))


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
    print(f"{'run id':<44} {'state':<10} {'rule':<21} {'rounds':>6} {'MAE HU':>8}  created")
    for r in rows:
        mae = f"{r['final_mae_hu']:.1f}" if r["final_mae_hu"] is not None else "-"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
        print(f"{r['run_id']:<44} {r['state'] or '?':<10} {r['aggregator'] or '?':<21} "
              f"{r['rounds'] or 0:>6} {mae:>8}  {created}")
    return 0


def _cmd_dashboard(rest: list[str]) -> int:
    """Hand over to the dashboard's own launcher (the engine does not import the dashboard):
    ``python -P -m app.serve`` with the remaining arguments, in this process's place. ``-P``:
    the working folder is not put on ``sys.path``, so an ``app/serve.py`` or ``tomllib.py``
    in the folder the dashboard is started from is never run."""
    os.execv(sys.executable, [sys.executable, "-P", "-m", "app.serve", *rest])
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        default_threads()  # a bad $FEDSCT_THREADS is refused before anything starts
    except ValueError as err:
        return _refuse(err)
    for name, value in OPENMP_DEFAULTS.items():  # before torch loads (it is imported lazily)
        os.environ.setdefault(name, value)
    if argv[:1] == ["dashboard"]:
        return _cmd_dashboard(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "presets":
        return _cmd_presets()
    if args.command == "sweep":
        return _cmd_sweep(args)
    if args.command == "study":
        return _cmd_study(args)
    return _cmd_runs(args)


if __name__ == "__main__":
    sys.exit(main())
