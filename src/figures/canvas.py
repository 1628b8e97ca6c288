"""Matplotlib helpers every figure shares: panels, series, reference lines, the stamp."""
from __future__ import annotations

from .runs import Run


def _stamp_text(runs: list[Run]) -> str:
    datasets = ", ".join(sorted({r.dataset for r in runs})) or "—"
    profiles = sorted({r.profile for r in runs})
    text = f"dataset: {datasets}   profile: {', '.join(profiles) or '—'}   runs: {len(runs)}"
    if any(p != "paper" for p in profiles):
        text += "\n(not the paper profile: a pipeline check, not a reproduction)"
    return text


def new_figure(ncols: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(max(6.4, 4.8 * ncols), 4.2), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes[0])


def finish(fig, runs: list[Run]):
    for ax in fig.axes:
        _fit_hlines(ax)
    fig.text(0.5, 0.01, _stamp_text(runs), ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def series(ax, points: dict, label: str, style: str = "-", marker: str = "o", color=None):
    pts = [(x, y) for x, y in points.items() if y is not None]
    if not pts:
        return None
    xs, ys = zip(*pts)
    (line,) = ax.plot(xs, ys, style, marker=marker, label=label, color=color, markersize=4)
    return line


def theorem1_series(ax, table: dict, name: str, second: str, second_label: str) -> None:
    """One family over m in one colour: Theorem 1, a second upper bound (`second`), the lower bound."""
    first = {m: r.upper("theorem1") for m, r in table.items()}
    other = {m: r.upper(second) for m, r in table.items()}
    line = series(ax, first, f"{name} Theorem 1 ub")
    color = line.get_color() if line else None
    same = all(v is None or first[m] is not None and abs(v - first[m]) <= 1e-9 * abs(first[m])
               for m, v in other.items())
    series(ax, other, f"{name} {second_label}" + (" (= Theorem 1)" if same else ""), ":", "^", color)
    series(ax, {m: r.lower() for m, r in table.items()}, f"{name} lower bound", "--", "s", color)


def m_axis(ax) -> None:
    """m on x, on a log axis: its grids span 0.1 to 20, which a linear axis squeezes below 1. Ticked at
    the m values drawn and written as numbers (0.1, not 10^-1), so each tick names a run's m."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set(xlabel="strong-monotonicity parameter m", xscale="log")
    drawn = sorted({float(x) for line in ax.get_lines() if not getattr(line, "reference", False)
                    for x in line.get_xdata()})
    if drawn:
        ax.set_xticks(drawn)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # a log axis spanning under a decade labels its minor ticks


def depth_axis(ax) -> None:
    """Depth on x: a count of layers, ticked at whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("depth")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def hline(ax, y, label, style="-", color=None):
    if y is not None:
        ax.axhline(y, linestyle=style, label=label, color=color, linewidth=1.2).reference = True


def _fit_hlines(ax):
    """Widen the y range to every reference line (axhline leaves the autoscaled range alone)."""
    ys = [line.get_ydata()[0] for line in ax.get_lines() if getattr(line, "reference", False)]
    if not ys:
        return
    low, high = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(min(low, min(ys) / 1.5), max(high, max(ys) * 1.5))
    else:
        margin = 0.05 * (max(high, *ys) - min(low, *ys))
        ax.set_ylim(min(low, min(ys) - margin), max(high, max(ys) + margin))


def legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def placeholder(name: str, title: str):
    fig, (ax,) = new_figure(1, title)
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name}: not run\n(no runs with the JSON files this figure needs)", ha="center",
            va="center", fontsize=11)
    return fig
