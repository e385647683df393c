"""Patients and cohorts: phantom hospitals, SynthRAD2023 folders, hardened NIfTI loading and
saving (the uploads store), preprocessing to slices, and which patients train, are held out or
belong to the attacker. Imports ``core`` only."""
