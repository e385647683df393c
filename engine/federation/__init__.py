"""The round protocol and its runtimes: aggregation rules, secure aggregation, the detection
view, the server view (what a curious server holds), checkpoints, and the in-process, Flower
simulation and Flower deployment runtimes. Imports ``clients`` and below."""
