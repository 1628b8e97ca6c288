"""Lipschitz and generalization bounds of trained networks."""
