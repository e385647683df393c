"""The engine's bottom layer: the validated config, shared types, HU ↔ network units, sCT and
attack metrics as plain functions of arrays, image rendering and the run folder. It imports
nothing else of the engine (import-linter checks every layer's direction)."""
