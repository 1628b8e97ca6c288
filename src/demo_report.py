"""Print m, test error and the Theorem 1 bound of finished FC monDEQ runs (for `make demo`).

    python -m src.demo_report RUN_DIR [RUN_DIR ...]

The bound is the bound library's Theorem 1 (with the output layer, ||W_out||_2 ||U||_2 / m) of
the network in each run dir's model.ckpt. The full set of bounds is src.bound's job.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import one_line_errors
from .files import read_json


def report(run_dirs: list[Path]) -> str:
    from .bounds.theorem1 import theorem1
    from .checkpoints import model_from_checkpoint

    rows = []
    for run in run_dirs:
        metrics = read_json(run / "metrics.json")
        bound = theorem1(model_from_checkpoint(run / "model.ckpt"))["value"]
        rows.append((metrics["m"], metrics["test_error"], bound, metrics["epochs"], metrics["dataset"], run))
    lines = [f"{'m':>6}  {'test error':>10}  {'Theorem 1 bound':>15}  {'epochs':>6}  dataset   run dir"]
    for m, err, bound, epochs, dataset, run in sorted(rows, key=lambda r: r[0]):
        lines.append(f"{m:>6g}  {100 * err:>9.2f}%  {bound:>15.2f}  {epochs:>6}  {dataset:<8}  {run}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    runs = [Path(a) for a in argv]
    if not runs:
        sys.exit("usage: python -m src.demo_report RUN_DIR [RUN_DIR ...]")
    missing = [str(r) for r in runs if not (r / "metrics.json").is_file()]
    if missing:
        sys.exit(f"error: no metrics.json in: {', '.join(missing)} (did the training run finish?)")
    with one_line_errors():
        print(report(runs))


if __name__ == "__main__":
    main(sys.argv[1:])
