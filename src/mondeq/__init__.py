"""Monotone deep equilibrium models: operators, splitting methods, implicit layer."""
