"""What a hospital does in a round, the same on every runtime: honest behaviour (training or
DP-SGD, pruning, clipping and noise, DP accounting) and malicious behaviours, apart from any
attack by the server. Imports ``learning`` and below."""
