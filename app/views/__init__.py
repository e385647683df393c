"""View models of the dashboard: what the pages show, as plain data, text and figures.

Nothing here imports Streamlit (import-linter checks it), so every verdict, table and chart
can be tested as a function and reused by the HTML report; the Streamlit side is
:mod:`app.widgets` and the pages.
"""
