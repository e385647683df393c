"""The federation as a Flower app: a ServerApp and a ClientApp over the engine's own parts.

The ClientApp trains with :func:`engine.federation.inprocess.client_update` and applies the
client-side defenses or attacks of :func:`~engine.federation.inprocess.client_upload`; the
ServerApp's strategy aggregates with the engine's aggregators, stores the curious server's
view with :mod:`engine.federation.server_view` and evaluates with the same
:class:`~engine.federation.inprocess.RoundRecorder` as the in-process runner. So a Flower run
and an in-process run of one config train the same model, up to floating-point order.

Secure aggregation is Flower's SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``): the
strategy then receives only the sum, and the server view holds exactly that.

The server learns the experiment from its run folder (run config ``run-dir``) and sends it
to the clients with every round's instructions; a SuperNode maps to its center through its
node config ``partition-id`` (set by the simulation, or ``--node-config`` when deployed); a
hospital's SuperNode may add ``data-path`` to train on its own NIfTI patients.

Entry points (``pyproject.toml`` → ``[tool.flwr.app.components]``): :data:`server_app`,
:data:`client_app`. :func:`server_app_for` builds a ServerApp bound to one run folder for
``flwr.simulation.run_simulation``, which has no run config.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    Context,
    FitIns,
    FitRes,
    Message,
    Parameters,
    RecordDict,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import ServerApp

from engine.clients.behaviour import (
    attacking,
    client_update,
    client_upload,
    dp_rng,
    is_malicious,
    training_sets,
)
from engine.clients.dp import planned_accounting, privatize_update, public_metadata
from engine.core.config import ExperimentConfig
from engine.core.run_folder import RunFolder, write_json_atomic
from engine.core.types import NDArrays
from engine.data.cohort import folder_slices, load_cohort
from engine.data.synthrad import scan_synthrad
from engine.federation import protocol
from engine.federation.aggregators import make_aggregator
from engine.federation.protocol import (
    Cancelled,
    FederationResult,
    RoundOutcome,
    RoundRecorder,
    close_round,
)
from engine.learning.model import build_model, get_parameters

# Files the ServerApp writes into the run folder, which the runtime reads back.
FINAL_PARAMS = "flower_final.npz"  # the last global model
TIMING = "flower_timing.json"
ERROR_FILE = "flower_error.txt"  # written when the ServerApp fails


# --------------------------------------------------------------------------- client


@functools.lru_cache(maxsize=2)
def _experiment(config_json: str) -> ExperimentConfig:
    """The experiment sent with every round's instructions, parsed once per ClientApp."""
    return ExperimentConfig.model_validate_json(config_json)


@functools.lru_cache(maxsize=2)
def _center_data(config_json: str, center: int, data_path: str,
                 attack: bool = True) -> tuple[Any, bool]:
    """(training slices, malicious?) of ``center``; cached across rounds.

    Without ``data_path`` the center's patients come from the experiment's cohort (the
    phantom, or a shared SynthRAD folder). With it (a hospital's own SuperNode), every
    patient folder ``<data_path>/<ID>/{mr,ct[,mask]}.nii.gz`` is a training patient.
    """
    cfg = _experiment(config_json)
    if data_path:
        if cfg.attacks.poisoning.enabled or cfg.attacks.backdoor.enabled:
            # Its attack (poisoned or triggered copies) is made from the cohort's slices; on
            # its own folder it would silently train honestly while the report says otherwise.
            raise ValueError("a SuperNode on its own data-path cannot run "
                             "attacks.poisoning or attacks.backdoor; simulate the attack on "
                             "the shared cohort instead")
        folders = [f for group in scan_synthrad(data_path).values() for f in group]
        return folder_slices(folders, cfg.data), False
    cohort = load_cohort(cfg.data, cfg.seed)
    sets, malicious = training_sets(cfg, cohort, attack=attack)
    return sets[center], cohort.centers[center].name in malicious


class CenterClient(NumPyClient):
    """One hospital: trains the global model on its own patients when asked."""

    def __init__(self, center: int, data_path: str = "") -> None:
        self.center, self.data_path = center, data_path

    def fit(self, parameters: NDArrays, config: dict[str, Any]
            ) -> tuple[NDArrays, int, dict[str, Any]]:
        cfg = _experiment(str(config["experiment"]))
        if not 0 <= self.center < cfg.data.centers:
            raise ValueError(f"this SuperNode's partition-id = {self.center} is not a center "
                             f"of the experiment (0…{cfg.data.centers - 1}); start it with "
                             f"--node-config \"partition-id=K\"")
        rnd = int(config["round"])
        data, malicious = _center_data(str(config["experiment"]), self.center, self.data_path,
                                       attacking(cfg, rnd))
        model = build_model(cfg)
        trained, meta = client_update(cfg, model, rnd, self.center, data, parameters)
        # DP is applied by the ClientApp's mod (_client_dp), after this returns.
        upload = client_upload(cfg, rnd, self.center, trained, meta, parameters, malicious,
                               dp=False)
        # Flower metrics are scalars: the center's identity travels as its index.
        metrics = {k: float(v) if isinstance(v, bool | int | float) else str(v)
                   for k, v in meta.items()} | {"center": self.center}
        return upload, int(meta["num_examples"]), metrics


def _client_fn(context: Context) -> Any:
    node = context.node_config
    return CenterClient(int(node.get("partition-id", -1)),
                        str(node.get("data-path", ""))).to_client()


def _secaggplus_when_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """SecAgg+ on the train messages that carry its protocol; plain rounds pass through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _client_dp(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Client-level DP as a Flower mod, with the in-process definition and noise stream.

    Between the ClientApp and the wire (under SecAgg+, before masking): the update the
    ClientApp returns is clipped to norm C and N(0, (σC)²) is added
    (:func:`engine.federation.dp.privatize_update`, built on Flower's DP helpers). Flower's
    own ``LocalDpMod`` is parameterised by (ε, δ), draws unseeded noise and also noises
    integer buffers, so it could not reproduce an in-process run.
    """
    if msg.metadata.message_type != MessageType.TRAIN or "fitins.config" not in \
            msg.content.config_records:
        return call_next(msg, ctxt)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    cfg = _experiment(str(fit_ins.config["experiment"]))
    out = call_next(msg, ctxt)
    dp, center = cfg.defenses.dp, int(ctxt.node_config.get("partition-id", -1))
    if out.has_error() or not dp.enabled or dp.level != "client" or is_malicious(cfg, center):
        return out
    res = compat.recorddict_to_fitres(out.content, keep_input=True)
    sigma = planned_accounting(cfg).noise_multiplier
    noised, meta = privatize_update(parameters_to_ndarrays(res.parameters),
                                    parameters_to_ndarrays(fit_ins.parameters), dp.clip_norm,
                                    sigma, dp_rng(cfg, int(fit_ins.config["round"]), center))
    res.parameters = ndarrays_to_parameters(noised)
    res.metrics = dict(res.metrics) | {k: float(v) for k, v in meta.items()}
    out.content = compat.fitres_to_recorddict(res, keep_input=True)
    return out


# Outermost first: SecAgg+ masks what the DP mod returns.
client_app = ClientApp(client_fn=_client_fn, mods=[_secaggplus_when_asked, _client_dp])


def dp_mod_upload(cfg: ExperimentConfig, rnd: int, center: int, local: NDArrays,
                  global_params: NDArrays) -> NDArrays:
    """What the ClientApp's DP mod (:func:`_client_dp`) sends for a hospital ``center`` whose
    training returned ``local`` in round ``rnd``: the round's real train message and reply,
    passed through the mod itself (the privacy audit sends its canary hospitals through it
    when the run is a Flower run)."""
    ins = FitIns(ndarrays_to_parameters(global_params),
                 {"experiment": cfg.model_dump_json(), "round": rnd})
    msg = Message(content=compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    ctxt = Context(run_id=0, node_id=1, node_config={"partition-id": center},
                   state=RecordDict(), run_config={})

    def trained(m: Message, _: Context) -> Message:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(local),
                     int(public_metadata(cfg)["num_examples"]), {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=m)

    out = _client_dp(msg, ctxt, trained)
    return parameters_to_ndarrays(compat.recorddict_to_fitres(out.content,
                                                              keep_input=True).parameters)


# --------------------------------------------------------------------------- server


class EngineStrategy(Strategy):
    """The engine's federation rules behind Flower's legacy Strategy interface.

    Every round all centers are asked to train; the round goes on with at least
    ``federation.min_centers`` replies (default: all), else the run fails with a message
    naming the missing centers.
    """

    def __init__(self, cfg: ExperimentConfig, run: RunFolder) -> None:
        self.cfg, self.run = cfg, run
        self.cohort = load_cohort(cfg.data, cfg.seed)
        self.names = [c.name for c in self.cohort.centers]
        self.result = FederationResult(final_params=[])
        self.recorder = RoundRecorder(cfg, self.cohort, self.result, self._write)
        self.param_names = list(self.recorder.model.state_dict())
        self.global_params = get_parameters(self.recorder.model)  # the seeded initial model
        self.aggregator = make_aggregator(cfg.federation)
        self.root = protocol.server_root(cfg)
        sets, self.malicious = training_sets(cfg, self.cohort)
        self.most_examples = max(len(s) for s in sets)
        self.round_start = 0.0
        self.pending: dict[str, Any] = {}
        self.aggregated_round = 0

    def _write(self, entry: dict[str, Any]) -> None:
        self.run.append_metrics(entry)
        g = entry.get("global") or {}
        self.run.log(f"round {entry['round']}: " + ", ".join(f"{k} {v:.3f}" for k, v in g.items()))

    @property
    def needed(self) -> int:
        return self.cfg.federation.min_centers or self.cfg.data.centers

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters:
        return ndarrays_to_parameters(self.global_params)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        if self.run.cancel_requested():
            raise Cancelled(f"cancelled before round {server_round}")
        n = self.cfg.data.centers
        timeout = self.cfg.federation.round_timeout_s
        if not client_manager.wait_for(n, timeout=int(timeout)):
            have = client_manager.num_available()
            if have < self.needed:
                raise RuntimeError(f"round {server_round}: only {have} of {n} SuperNodes are "
                                   f"connected after {timeout:g} s (federation.min_centers = "
                                   f"{self.needed}); start the missing ones or lower it")
        self.round_start = time.perf_counter()
        fit_ins = FitIns(parameters, {"experiment": self.cfg.model_dump_json(),
                                      "round": server_round})
        return [(c, fit_ins) for c in client_manager.all().values()]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        got = {self.names[int(r.metrics["center"])]: r for _, r in results}
        if len(got) < self.needed:
            missing = sorted(set(self.names) - set(got))
            reasons = "; ".join(dict.fromkeys(failure_text(f) for f in failures))[:500]
            raise RuntimeError(
                f"round {server_round}: {len(got)} of {len(self.names)} centers replied "
                f"(missing {', '.join(missing)}), but federation.min_centers = {self.needed}"
                + (f"; failures: {reasons}" if reasons else ""))
        order = [n for n in self.names if n in got]  # centers in cohort order, as in-process
        uploads = {n: parameters_to_ndarrays(got[n].parameters) for n in order}
        metadata = {n: _metadata(got[n].metrics, got[n].num_examples) for n in order}
        if self.cfg.defenses.secure_aggregation:
            # SecAgg+ hands every result the same unmasked sum: that is all the server has.
            outcome = RoundOutcome(uploads, next(iter(uploads.values())),
                                   {"kind": "secaggplus",
                                    "clipping_range": self.cfg.defenses.secagg_clipping_range})
        else:
            weights = {n: int(metadata[n]["num_examples"]) for n in order}
            # The protocol's server step (Flower names its round argument server_round too).
            outcome = protocol.server_round(self.cfg, server_round, uploads, weights,
                                            self.global_params, self.aggregator, self.malicious,
                                            self.root)
        new_params = close_round(self.cfg, self.run.path, server_round, self.global_params,
                                 outcome, metadata, self.param_names)
        self.global_params = new_params
        self.result.train_s += time.perf_counter() - self.round_start
        self.pending = {"clients": metadata, "detection": outcome.detection}
        self.aggregated_round = server_round
        return ndarrays_to_parameters(new_params), {}

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Any]] | None:
        if server_round == 0:
            self.recorder.record(0, self.global_params, {})
        elif self.aggregated_round != server_round:
            # Flower's workflows end a round they could not finish without telling the
            # strategy; going on would silently repeat the old model.
            why = ("secure aggregation could not unmask the sum (too few centers stayed "
                   "through the round; see flower/flwr-run.log)"
                   if self.cfg.defenses.secure_aggregation else "no update was aggregated")
            raise RuntimeError(f"round {server_round} did not finish: {why}")
        else:
            self.recorder.record(server_round, self.global_params, **self.pending)
        if server_round == self.cfg.federation.rounds:
            self._finish()
        last = self.result.history[-1] if self.result.history else {}
        return float(last.get("mae_hu", 0.0)), {}

    def _finish(self) -> None:
        tmp = self.run.path / f".{FINAL_PARAMS}"
        with open(tmp, "wb") as fh:
            np.savez(fh, *self.global_params)
        tmp.replace(self.run.path / FINAL_PARAMS)
        write_json_atomic(self.run.path / TIMING, {"train_s": self.result.train_s,
                                                   "eval_s": self.result.eval_s})

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list:
        return []  # evaluation is central, on every center's held-out patients

    def aggregate_evaluate(self, server_round: int, results: list,
                           failures: list) -> tuple[float | None, dict[str, Any]]:
        return None, {}


def failure_text(failure: Any) -> str:
    """The exception line of a failed reply (Flower wraps a ClientApp's traceback, with
    colour codes, in its error reason), e.g. ``ValueError: bad input``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(failure))
    lines = [ln.strip(" '\">)") for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", ln)]
    return (errors or lines or [type(failure).__name__])[-1]


def _metadata(metrics: dict[str, Any], num_examples: int) -> dict[str, Any]:
    out = {k: v for k, v in metrics.items() if k != "center"}
    out["num_examples"] = int(num_examples)
    if "steps" in out:
        out["steps"] = int(out["steps"])
    return out


def serve(grid: Grid, context: Context, run_dir: Path) -> None:
    """The server's whole job for the run in ``run_dir``."""
    run = RunFolder(run_dir)
    cfg = run.config()
    fed = cfg.federation
    strategy = EngineStrategy(cfg, run)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=fed.rounds,
                                                                round_timeout=fed.round_timeout_s),
                           strategy=strategy)
    if cfg.defenses.secure_aggregation:
        n = cfg.data.centers
        # Shares go to every center; SecAgg+ requires fewer needed shares than shares.
        fit = _SecAggPlus(num_shares=n,
                          reconstruction_threshold=max(2, min(strategy.needed, n - 1)),
                          clipping_range=cfg.defenses.secagg_clipping_range,
                          max_weight=float(max(1000, strategy.most_examples)),
                          timeout=fed.round_timeout_s)
        workflow = DefaultWorkflow(fit_workflow=fit)
    else:
        workflow = DefaultWorkflow(fit_workflow=functools.partial(_fit_round,
                                                                  timeout=fed.round_timeout_s))
    try:
        workflow(grid, legacy)
    except BaseException as err:  # the runtime reads this: Flower itself only logs it
        (run.path / ERROR_FILE).write_text(f"{type(err).__name__}: {err}")
        raise


class _SecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, except that a SuperNode which never answered the setup
    stage stops counting as sampled.

    Such a node sent no public keys, so nobody masked with it and there is nothing of it to
    unmask; Flower 1.42 still looks for its key shares in the unmask stage and halts the
    round ("Not enough shares"), which made any SuperNode that died between rounds (but was
    still registered) end secure aggregation for good.
    """

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


def _fit_round(grid: Grid, context: LegacyContext, timeout: float) -> None:
    """Flower's default fit round, but replies are awaited at most ``timeout`` seconds, so a
    lost SuperNode cannot hang the run (the strategy then decides if enough replied)."""
    rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
    parameters = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    instructions = context.strategy.configure_fit(rnd, parameters, context.client_manager)
    proxies = {proxy.node_id: proxy for proxy, _ in instructions}
    replies = grid.send_and_receive(
        [Message(content=compat.fitins_to_recorddict(ins, True), dst_node_id=proxy.node_id,
                 message_type=MessageType.TRAIN, group_id=str(rnd))
         for proxy, ins in instructions], timeout=timeout)
    results, failures = [], []
    for msg in replies:
        if msg.has_content():
            res = compat.recorddict_to_fitres(msg.content, False)
            if res.status.code == Code.OK:
                results.append((proxies[msg.metadata.src_node_id], res))
                continue
            failures.append(RuntimeError(res.status.message))
        else:
            failures.append(RuntimeError(str(msg.error)))
    parameters, _ = context.strategy.aggregate_fit(rnd, results, failures)
    if parameters is not None:
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, True)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve(grid, context, Path(str(context.run_config["run-dir"])))


def server_app_for(run_dir: Path) -> ServerApp:
    """A ServerApp bound to ``run_dir`` (simulation passes no run config)."""
    app = ServerApp()

    @app.main()
    def _bound(grid: Grid, context: Context) -> None:
        serve(grid, context, run_dir)

    return app
