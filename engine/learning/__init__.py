"""The model and what it computes: the MONAI U-Net factory, one hospital's local training and
evaluation, several hospitals trained at once, and the synthetic CT of a whole volume.
Imports ``core`` and ``data``."""
