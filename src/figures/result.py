"""What a figure builder returns: its runs, the rows beside the paper's numbers, trends, notes."""
from __future__ import annotations

from dataclasses import dataclass, field

from .paper import Trend
from .runs import Run


@dataclass
class Row:
    quantity: str
    paper: str
    ours: str
    run: Run | None = None
    runs: list[Run] | None = None
    source: str = ""

    def stamp(self) -> tuple[str, str]:
        runs = [self.run] if self.run is not None else (self.runs or [])
        if not runs:
            return "—", "—"
        return (", ".join(sorted({r.dataset for r in runs})), ", ".join(sorted({r.profile for r in runs})))


@dataclass
class Result:
    name: str
    title: str
    runs: list[Run] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str, int]] = field(default_factory=list)
    figure: object = None  # matplotlib Figure, None when not run

    @property
    def ran(self) -> bool:
        return bool(self.runs)

    def about(self, *facts: str) -> None:
        """Ends the title with what the drawn runs are: their dataset, then `facts` (derived from the runs
        or enforced by the figure's selection), so that it never states the paper's setting unrun."""
        self.title += f" — {', '.join([*sorted({r.dataset_title for r in self.runs}), *facts])}"
