"""`python -m src.plot`: the paper's figures, and outputs/report.md, from finished runs' JSON files.

    python -m src.plot                         # every figure from the runs under outputs/, and the report
    python -m src.plot --figure fig1b          # one figure: outputs/figures/fig1b.png and its report
                                               # section outputs/figures/fig1b.md
    python -m src.plot --assemble              # outputs/report.md from the sections already written
    python -m src.plot --runs outputs/smoke --params params.yaml --figure fig4 --metrics outputs/metrics
                                               # as dvc.yaml does; outputs/metrics/fig4.json: its headline

Beside each figure, its data series as CSV files, outputs/series/<figure>/<curve>/<quantity>.csv
(src/figures/series.py), for `dvc plots diff`; each drawn figure also goes to wandb as an image
when its runs logged to wandb (--no-wandb: not).

A run is a directory holding any of metrics.json (src.run), bounds.json (src.bound) and
robustness.json (src.robustness); nothing else is read, except the dataset's shape from the
run's saved Hydra config when the dataset is `synthetic` (1 channel: an MNIST stand-in,
3 channels: a CIFAR-10 stand-in).  Each figure picks its runs by what the JSON files say
(model, its fields, m, dataset, training protocol); a figure without runs is drawn as an
empty placeholder that says so and is reported as "not run" -- never from made-up numbers.

Every figure and every report row is stamped with the dataset and profile of the runs it
comes from; runs of profiles other than `paper` are pipeline checks, not reproductions.  A
figure's title names its runs' dataset (mnist5k, Fashion-MNIST or synthetic data by their own
names, never as MNIST or CIFAR-10) and the widths they have, not the paper's.
When one figure's runs span several (dataset, profile) groups, the `paper` profile wins,
then the group with most runs; the others are listed as ignored.

The report puts our numbers beside the values the paper prints (PAPER below; the source of
each is given), and checks the trends the paper claims ("monDEQ bound falls with m", ...):
holding, not holding, or not run (fewer than two points).  A trend "falls/grows with x"
holds when every step between neighbouring x values goes that way (ties count as neither);
the evidence column shows the values.

`--params params.yaml` (the DVC pipeline) keeps only the runs of the pipeline's current grids:
a run dir <family>/<values>/ (or robustness/<family>/<values>/) counts when its model fields
and m are in params' `grids.<family>` (`robust.<family>`); run dirs left behind by a grid
value since removed are ignored, and so are run dirs outside the pipeline's families.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from . import files, loggers
from .errors import one_line_errors
from .figures import FIGURES, series
from .figures.report import assemble, draw, headline
from .figures.runs import filter_by_params, load_runs


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("outputs")],
                        help="directories searched for run dirs (default: outputs)")
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="figures go to OUT/figures/, the report to OUT/report.md (default: outputs)")
    parser.add_argument("--figure", nargs="+", choices=list(FIGURES), metavar="FIG",
                        help=f"draw only these ({', '.join(FIGURES)}); writes their sections, not report.md")
    parser.add_argument("--params", type=Path, help="keep only the runs of this params.yaml's grids (DVC)")
    parser.add_argument("--profile", help="keep only runs of this profile")
    parser.add_argument("--metrics", type=Path,
                        help="also write METRICS/<figure>.json: its headline numbers (paper, ours, trends), "
                             "the DVC metrics")
    parser.add_argument("--assemble", action="store_true", help="only write report.md from existing sections")
    parser.add_argument("--no-wandb", action="store_true",
                        help="do not log the figures to wandb (default: into the project of the runs' wandb runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    with one_line_errors():
        return _plot(args)


def _plot(args: argparse.Namespace) -> int:
    if args.assemble:
        print(f"wrote {assemble(args.out)}")
        return 0
    missing = [str(p) for p in args.runs if not p.is_dir()]
    if missing:
        sys.exit(f"error: --runs: no such directory: {', '.join(missing)} (run dirs are written by src.run)")
    if args.params is not None and not args.params.is_file():
        sys.exit(f"error: --params: no such file: {args.params}")
    if not args.no_wandb and os.environ.get("WANDB_MODE") != "disabled":
        loggers.check_wandb()
    runs = load_runs(args.runs)
    if args.params is not None:
        import yaml

        runs = filter_by_params(runs, yaml.safe_load(args.params.read_text()) or {})
    if args.profile:
        runs = [r for r in runs if r.profile == args.profile]
    names = args.figure or list(FIGURES)
    drawn = []
    for name in names:
        res = draw(name, runs, args.out)
        series.write(name, res.runs, args.out)
        if args.metrics is not None:
            files.write_json(args.metrics / f"{name}.json", headline(res))
        if res.ran:
            drawn.append(res)
        verdicts = ", ".join(f"{t.verdict}" for t in res.trends)
        print(f"{name}: {'drawn from ' + str(len(res.runs)) + ' runs' if res.ran else 'not run'}"
              + (f" (trends: {verdicts})" if res.ran and verdicts else ""))
    if not args.figure:
        print(f"wrote {assemble(args.out)}")
    if not args.no_wandb:
        log_figures(drawn, args.out, preset=str(yaml.safe_load(args.params.read_text()).get("preset"))
                    if args.params is not None else None)
    return 0


def log_figures(drawn, out: Path, preset: str | None = None) -> None:
    """Each drawn figure as an image in a wandb run of its experiment's group (job_type plot), in the
    project of its runs' wandb runs, tagged and configured with what it was drawn from (the pipeline's
    preset, the runs' profile and dataset); nothing when none of them logged to wandb or
    WANDB_MODE=disabled."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return
    for res in drawn:
        paths = [r.path / loggers.RUN_FILE for r in res.runs if (r.path / loggers.RUN_FILE).is_file()]
        if not paths:
            continue
        project = files.read_json(paths[0])
        drawn_from = {"preset": preset, "profile": sorted({r.profile for r in res.runs}),
                      "dataset": sorted({r.dataset for r in res.runs})}
        tags = [res.name, "figure", *([f"preset:{preset}"] if preset else []),
                *(f"profile:{p}" for p in drawn_from["profile"]), *(f"dataset:{d}" for d in drawn_from["dataset"])]
        id_file = out / "figures" / f"{res.name}.{loggers.RUN_FILE}"
        ident = loggers.identity(id_file, f"{res.name}/figure", project["project"], project["entity"], res.name, tags)
        config = {"figure": res.name, **drawn_from, "runs": sorted(str(r.path) for r in res.runs)}
        image = out / "figures" / f"{res.name}.png"
        content = loggers.digest(config, tags, hashlib.sha256(image.read_bytes()).hexdigest())
        if loggers.already_logged(id_file, "plot", content):
            continue  # the same figure of the same runs: its wandb run has it
        run = loggers.open_run(ident, out, "plot", config)
        try:
            run.images({res.name: image})
        finally:
            run.close()
        loggers.note_logged(id_file, "plot", content)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
