"""The server's attacks, each reading only the server view and the attacker's own data:
membership inference, gradient inversion (scenario, attack, objective) and the privacy audit.
Imports ``federation`` and below."""
