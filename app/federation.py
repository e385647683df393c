"""Streamlit widgets of the Federation page: the customise form, a run's live progress, its
results and its attacks' verdicts. Words and figures are in ``app.views``."""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.params import POISONING_RUN
from app.state import (
    persisted,
)
from app.views.common import (
    AGGREGATOR_HELP,
    METRIC_HELP,
    PAGES_DIR,
    POLL_S,
    describe_config,
    history_figure,
    history_from_metrics,
)
from app.views.inversion import verdict as inversion_verdict
from app.views.membership import verdict as mia_verdict
from app.views.poisoning import poison_words
from app.views.results import RunRow
from app.views.runs import DETAIL_PAGES
from app.widgets import (
    center_table,
    metric_cards,
    progress_bar,
    sample_images,
)
from engine.core.config import AGGREGATORS, ExperimentConfig
from engine.core.config.robust import RULE_NAMES
from engine.core.run_folder import RunFolder, RunStatus
from engine.orchestration.jobs import cancel_job

RUNTIMES = {"inprocess": "In this process (fastest)",
            "flower-sim": "Flower simulation (adds 10–35 s to start)",
            "flower-deploy": "Flower: a real SuperLink + one SuperNode per hospital on this "
                             "machine (slowest; what a real deployment runs)"}


def _dp_settings(base: ExperimentConfig) -> dict[str, Any]:
    """The differential-privacy toggle and, when on, its level, ε and clip norm."""
    dp_on = persisted(st.toggle, "Differential privacy", "dp", base.defenses.dp.enabled,
                      help="Random noise with a provable bound (ε) on how much the model and "
                           "its updates can reveal. Lower ε = more private and a less "
                           "accurate model; above ε 10 the bound means little.")
    dp: dict[str, Any] = {"enabled": dp_on}
    if dp_on:
        left, mid, right = st.columns(3)
        dp["level"] = persisted(
            left.radio, "What it protects", "dp_level", base.defenses.dp.level,
            options=["client", "sample", "server"],
            format_func={"client": "a whole hospital", "sample": "each patient",
                         "server": "a whole hospital, in the released model"}.get,
            help="A whole hospital: each hospital clips and noises its update. Each patient: "
                 "each hospital trains with DP-SGD, bounding every patient's influence. In "
                 "the released model: the server clips every update and noises their mean, "
                 "so the guarantee covers the global models but not the uploads the server "
                 "receives.")
        dp["target_epsilon"] = persisted(
            mid.number_input, "Privacy budget ε", "dp_epsilon",
            base.defenses.dp.target_epsilon or 8.0, min_value=0.1, max_value=1e6, step=1.0,
            format="%.1f", help="The ε reached after the last round; the noise is chosen to "
                                "match it (Opacus RDP accountant, δ = 1e-5).")
        dp["noise_multiplier"] = 0.0
        dp["clip_norm"] = persisted(
            right.number_input, "Size limit (clip norm)", "dp_clip",
            base.defenses.dp.clip_norm, min_value=0.001, max_value=1e4, step=0.5,
            format="%.3f", help="The largest update (or patient gradient) that counts.")
    return dp


def custom_overrides(base: ExperimentConfig) -> dict[str, Any]:
    """The "customise" widgets, seeded from the preset; returns config overrides."""
    left, right = st.columns(2)
    centers = persisted(left.number_input, "Number of hospitals", "centers", base.data.centers,
                        min_value=1, max_value=16, step=1,
                        help="How many simulated hospitals train together.")
    rounds = persisted(right.number_input, "Training rounds", "rounds", base.federation.rounds,
                       min_value=1, max_value=200, step=1,
                       help="In each round every hospital trains locally, then the server "
                            "combines the updates. More rounds take longer.")
    aggregator = persisted(st.selectbox, "How the server combines the updates", "aggregator",
                           base.federation.aggregator, options=list(AGGREGATORS),
                           format_func=lambda rule: RULE_NAMES.get(rule, rule))
    st.caption(AGGREGATOR_HELP.get(aggregator, ""))
    fed: dict[str, Any] = {"rounds": int(rounds), "aggregator": aggregator}
    if aggregator == "fedprox":
        fed["fedprox_mu"] = persisted(
            st.number_input, "FedProx strength μ", "fedprox_mu",
            base.federation.fedprox_mu or 0.01, min_value=0.0, max_value=10.0, step=0.01,
            format="%.3f", help="How strongly each hospital is kept close to the shared model.")
    views = base.federation.server_view_rounds
    if isinstance(views, list):
        # A preset may record the server's view at fixed rounds; keep those that still exist.
        fed["server_view_rounds"] = [r for r in views if r <= rounds] or "last"
    secagg = persisted(st.toggle, "Secure aggregation", "secagg",
                       base.defenses.secure_aggregation,
                       help="Hospitals mask their updates so the server only learns their sum, "
                            "never one hospital's update.")
    dp = _dp_settings(base)
    fed["runtime"] = persisted(st.selectbox, "Where the federation runs", "runtime",
                               base.federation.runtime, options=list(RUNTIMES),
                               format_func=RUNTIMES.get,
                               help="The same training, aggregation and attacks on every "
                                    "runtime; Flower is the engine for real deployments.")
    seed = persisted(st.number_input, "Seed", "seed", base.seed, min_value=0,
                     max_value=2**31 - 1, step=1,
                     help="Fixes the simulated patients, the hospitals' shuffling and every "
                          "noise draw: the same seed, settings and thread count give the same "
                          "figures.")
    return {"seed": int(seed), "data": {"centers": int(centers)}, "federation": fed,
            "defenses": {"secure_aggregation": secagg, "dp": dp}}


@st.fragment(run_every=POLL_S)
def live(run_id: str, total_rounds: int) -> None:
    """Progress of an active run; reruns the whole page once when the run ends."""
    records = progress_bar(run_id, total_rounds)
    history = history_from_metrics(records)
    if history:
        st.plotly_chart(history_figure(history, total_rounds))
    else:
        st.caption("The chart starts once the untrained model has been measured (round 0).")


def results(row: RunRow) -> None:
    s = row.summary
    fed = s.federation if s else None
    if fed is None or fed.final is None:
        st.warning("This run finished but wrote no results; start it again.")
        return
    poison = s.poisoning if s else None
    st.markdown("#### How good is the shared model?")
    st.caption(" · ".join(METRIC_HELP.values()))
    if poison is not None and fed.aggregator in poison.baseline:
        attack = poison_words(poison)
        st.error(f"**This federation was attacked:** {attack}. The numbers below compare the "
                 "shared model with the same federation trained without attackers, not with "
                 "the untrained model; the striped or blotchy synthetic CTs further down are "
                 "what the attack did to it.")
        st.page_link(str(PAGES_DIR / "poisoning.py"), label="See the attack in detail",
                     query_params={POISONING_RUN: row.run_id}, icon=":material/coronavirus:")
        metric_cards(fed.final, poison.baseline[fed.aggregator],
                     "than the same federation without attackers")
    else:
        start = fed.history[0] if fed.history and fed.history[0].round == 0 else None
        metric_cards(fed.final, start, "since the untrained model")
    attacks(row)
    st.markdown("#### Per hospital")
    st.caption("Measured on each hospital's held-out patients, which were never used for "
               "training.")
    center_table(fed.per_center, fed.unseen_center,
                 poison.malicious_names if poison else [], poison_words(poison) if poison
                 else "")
    st.markdown("#### Learning curve")
    st.plotly_chart(history_figure([h.model_dump() for h in fed.history], fed.rounds))
    st.markdown("#### Example images")
    sample_images(row.path / "artifacts" / "samples.npz", list(fed.per_center))


def attacks(row: RunRow) -> None:
    """The run's attacks and their verdicts, each with a link to its page."""
    s = row.summary
    if s is None or not row.attacks:
        st.caption("No attack ran in this run: the attack pages start runs that include one.")
        return
    st.markdown("#### What the attacks in this run found")
    for key, verdict in (("mia", lambda: mia_verdict(s.mia)),
                         ("inversion", lambda: inversion_verdict(s.inversion))):
        if getattr(s, key) is None:
            continue
        page, param, label = DETAIL_PAGES[key]
        v = verdict()
        with st.container(border=True):
            st.markdown(f"**{label}** — :{v.colour}[{v.title}]" + (f" ({v.figure})"
                                                                    if v.figure else ""))
            st.page_link(str(page), label="Open it", query_params={param: row.run_id},
                         icon=":material/open_in_new:")


def show_run(run: RunFolder, cfg: ExperimentConfig, status: RunStatus,
              row: RunRow | None) -> None:
    st.subheader(f"Run: {cfg.name or 'custom'}")
    st.caption(f"{describe_config(cfg)} · run id `{run.run_id}`")
    state = status.state
    if status.active:
        if st.button("Stop this run", icon=":material/stop_circle:", key="cancel"):
            with st.spinner("Stopping: the current hospital finishes its step first…"):
                cancel_job(run, grace_s=15)
            st.rerun()
        live(run.run_id, cfg.federation.rounds)
    elif state == "done" and row is not None:
        results(row)
    elif state in ("failed", "interrupted"):
        st.error(f"This run did not finish: {status.error or 'unknown error'}\n\n"
                 "What to do: resume it on the Runs page, or start it again; if it fails "
                 "again, send the technical log below to the lab's maintainers.")
        log = run.path / "log.txt"
        if log.is_file():
            with st.expander("Technical log"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-40:]),
                        language=None)
    else:
        st.info("This run was stopped before it finished. Start a new one above.")
