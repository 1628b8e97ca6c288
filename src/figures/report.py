"""The report: one markdown section per figure (with its PNG), assembled into report.md."""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from .. import files
from . import FIGURES, canvas
from .paper import HOLDING, NOT_HOLDING, NOT_RUN
from .result import Result
from .runs import Run


def section(res: Result, image: str | None) -> str:
    """The report's markdown for one figure."""
    lines = [f'<a id="{res.name}"></a>', f"## {res.name}: {res.title}", ""]
    if not res.ran:
        lines += ["**not run**: no run dirs with the JSON files this figure needs.", ""]
        for t in res.trends:
            lines.append(f"- {t.claim}: {NOT_RUN}")
        return "\n".join(lines) + "\n"
    profiles = sorted({r.profile for r in res.runs})
    lines.append(f"Runs: {len(res.runs)}; dataset: {', '.join(sorted({r.dataset for r in res.runs}))}; "
                 f"profile: {', '.join(profiles)}"
                 + (" (not the paper profile: a pipeline check, not a reproduction)." if profiles != ["paper"] else "."))
    lines.append("")
    if image:
        lines += [f"![{res.name}]({image})", ""]
    if res.rows:
        lines += ["| quantity | paper | ours | dataset | profile | paper's source |", "|---|---|---|---|---|---|"]
        for row in res.rows:
            ds, pr = row.stamp()
            lines.append(f"| {row.quantity} | {row.paper} | {row.ours} | {ds} | {pr} | {row.source} |")
        lines.append("")
    if res.trends:
        lines += ["| trend the paper claims | ours | evidence |", "|---|---|---|"]
        for t in res.trends:
            lines.append(f"| {t.claim} | **{t.verdict}** | {t.evidence} |")
        lines.append("")
    for ds, pr, n in res.ignored:
        res.notes.append(f"ignored {n} run(s) of dataset {ds}, profile {pr} (another group was drawn)")
    if res.notes:
        lines += [f"- {n}" for n in res.notes] + [""]
    lines += ["<details><summary>run dirs</summary>", ""] + [f"- `{r.path}`" for r in res.runs] + ["", "</details>", ""]
    return "\n".join(lines)


def _number(text: str) -> float | None:
    """A number as the report prints it ("3.83", "51%", "1.2e+05"); None for anything else ("—", ranges)."""
    try:
        value = float(text.strip().rstrip("%").replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def headline(res: Result) -> dict:
    """The figure's few numbers for `dvc metrics show`: its first report row with both the paper's number and
    ours (as printed there), the number of trends checked and holding, and the runs drawn; the same keys
    for every figure, so the table is one short row per figure and comparable across presets."""
    pair = next(((p, o) for r in res.rows for p, o in [(_number(r.paper), _number(r.ours))]
                 if p is not None and o is not None), (None, None))
    checked = [t for t in res.trends if t.verdict != NOT_RUN]
    return {"paper": pair[0], "ours": pair[1], "trends_holding": sum(t.verdict == HOLDING for t in checked),
            "trends_checked": len(checked), "runs": len(res.runs)}


def draw(name: str, runs: list[Run], out: Path) -> Result:
    """Draw figure `name` into out/figures/<name>.png and write its section out/figures/<name>.md."""
    import matplotlib.pyplot as plt

    res = FIGURES[name](runs)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    fig = res.figure if res.figure is not None else canvas.placeholder(name, res.title)
    files.replace(figures / f"{name}.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    files.write_text(figures / f"{name}.md", section(res, f"figures/{name}.png" if res.ran else None))
    return res


HEADER = """# Reproduction report

Pabbaraju, Winston, Kolter, "Estimating Lipschitz constants of monotone deep equilibrium models"
(ICLR 2021): each figure of the paper drawn from our runs' JSON files (`python -m src.plot`), our
numbers beside the values the paper prints, and the trends it claims checked. Every row names the
dataset and profile of the runs it comes from: the `smoke` profile trains for minutes on small
data (mnist5k, synthetic CIFAR-format images), so its numbers check the pipeline, not the paper.
"""


def assemble(out: Path, names: Iterable[str] = tuple(FIGURES)) -> Path:
    """outputs/report.md from the per-figure sections in out/figures/."""
    parts = [HEADER]
    summary = ["| figure | status | trends holding | not holding | not run |", "|---|---|---|---|---|"]
    bodies = []
    for name in names:
        path = out / "figures" / f"{name}.md"
        if not path.is_file():
            summary.append(f"| {name} | section missing (run `python -m src.plot --figure {name}`) | | | |")
            continue
        body = path.read_text()
        ran = "\n**not run**" not in body
        counts = [body.count(f"| **{v}** |") for v in (HOLDING, NOT_HOLDING, NOT_RUN)]
        summary.append(f"| [{name}](#{name}) | {'drawn' if ran else 'not run'} | {counts[0]} | {counts[1]} | {counts[2]} |")
        bodies.append(body)
    parts += ["## Summary", ""] + summary + [""] + bodies
    return files.write_text(out / "report.md", "\n".join(parts))
