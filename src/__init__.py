"""Lipschitz constants of monotone deep equilibrium models: a reproducibility pipeline."""
