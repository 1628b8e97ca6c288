"""Certificates of robustness and what they are checked against.

- `registry`: the certificates besides a global bound's rule (`local`, and the exact ones to come),
  declared once with the models they apply to, the bound they rest on and their settings;
- `rules`: certified accuracy from a global Lipschitz constant (the paper's and the tight rule, class
  pairs), the margins and the rounding allowance every comparison makes;
- `local`: per-input certified radii of monDEQs from local Lipschitz bounds over a ball;
- `exact_model`: the model a certificate speaks of (float64, a monDEQ at its exact equilibrium);
- `audit`: an attack inside every certified ball, proving any counterexample on the exact model.
"""
