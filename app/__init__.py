"""Streamlit dashboard of the FedSCT Security Lab (entrypoint: ``streamlit run app/main.py``)."""
