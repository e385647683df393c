"""FedSCT Security Lab engine: federated MRI→sCT training, attacks and defenses.

Importable without Streamlit. Units: MRI intensities are normalised to [0, 1];
CT is in Hounsfield units (``*_hu``) or in normalised CT units (``*_unit``, see
:mod:`engine.data.preprocess`).
"""

__version__ = "0.1.0"
