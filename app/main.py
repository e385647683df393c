"""Entrypoint of the dashboard, served by ``fedsct dashboard`` (:mod:`app.serve`).

Pages live in the top-level ``pages/`` folder and are registered with absolute paths:
a ``pages/`` folder next to this file would switch Streamlit to its legacy multipage mode.
When sign-in is configured (``fedsct dashboard --auth-config``), nothing but the sign-in
screen is shown until the user has signed in.
"""

from __future__ import annotations

import streamlit as st

from app.views.common import ASSETS_DIR, PAGES_DIR, plain
from app.widgets import (
    access_refused,
    job_banner,
    report_page_error,
    sidebar,
    sign_in_required,
)
from engine.orchestration.store import runs_root

st.set_page_config(page_title="FedSCT Security Lab", page_icon="🧠", layout="wide")
st.logo(str(ASSETS_DIR / "logo.svg"))
if sign_in_required():
    st.title("FedSCT Security Lab")
    st.markdown("This dashboard holds patients' data: sign in to continue.")
    st.button("Sign in", on_click=st.login, icon=":material/login:")
    st.stop()
if refused := access_refused():
    st.title("FedSCT Security Lab")
    st.error(f"{plain(refused)} may not use this dashboard: ask its administrator to add you "
             "to allowed_users.")
    st.button("Sign out", on_click=st.logout, icon=":material/logout:")
    st.stop()
css = ASSETS_DIR / "style.css"
if css.is_file():
    st.markdown(f"<style>{css.read_text()}</style>", unsafe_allow_html=True)

page = st.navigation([
    st.Page(str(PAGES_DIR / "home.py"), title="Home", icon=":material/home:", default=True),
    st.Page(str(PAGES_DIR / "data.py"), title="Data & centers", icon=":material/database:"),
    st.Page(str(PAGES_DIR / "federation.py"), title="Federation", icon=":material/hub:"),
    st.Page(str(PAGES_DIR / "membership.py"), title="Membership inference",
            icon=":material/person_search:"),
    st.Page(str(PAGES_DIR / "inversion.py"), title="Gradient inversion", icon=":material/blur_on:"),
    st.Page(str(PAGES_DIR / "poisoning.py"), title="Poisoning", icon=":material/coronavirus:"),
    st.Page(str(PAGES_DIR / "whatif.py"), title="What-if for a patient",
            icon=":material/policy:"),
    st.Page(str(PAGES_DIR / "runs.py"), title="Runs", icon=":material/folder_open:"),
    st.Page(str(PAGES_DIR / "report.py"), title="Report", icon=":material/description:"),
])
sidebar(runs_root())
job_banner()
try:
    page.run()
except Exception as err:  # noqa: BLE001 - last line of defence: never a traceback on screen
    # st.rerun/st.stop raise BaseException subclasses, so they still pass through.
    log = report_page_error(page.title, err)
    st.error(f"Something went wrong on this page ({type(err).__name__}: {err}). Your runs are "
             f"safe. Reload the page or open another one; if it happens again, the details "
             f"are in `{log}`.")
