"""A picture of a search: every attempt over time, the best so far, and what it had to beat.

Drawn on a bare matplotlib Figure with the Agg canvas, so it works headless and never touches pyplot's
global state.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agent.runs import RunDetail

COLOURS = {"accepted": "tab:green", "rejected": "tab:red", "no_kernel": "tab:orange", "failed": "tab:purple",
           "cancelled": "tab:gray"}


def plot_run(d: RunDetail, path: Path) -> Path:
    """Write a PNG: attempts as dots (colour by verdict), best-so-far TFLOP/s as a step line, flex and SDPA."""
    fig = Figure(figsize=(9, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    timed = any(r.tflops for r in d.attempts)
    _attempts(ax, d)
    _best_so_far(ax, d)
    for value, name, style in ((d.flex_tflops, "flex", "--"), (d.sdpa_tflops, "SDPA", ":")):
        if value:
            ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"{name} {value:.0f} TFLOP/s")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("TFLOP/s" if timed else "untimed (CPU run): every attempt at 0")
    ax.set_title(f"{d.summary.name}: {d.summary.attempts} attempts, {d.summary.verified} verified")
    ax.set_xlim(left=0)
    ax.set_ylim(0, max(ax.get_ylim()[1] * 1.05, 1.0))  # room above the reference lines
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _attempts(ax, d: RunDetail) -> None:
    """Attempts without a speed (rejected, or untimed on CPU) sit on the x axis."""
    for status, colour in COLOURS.items():
        rows = [r for r in d.attempts if r.status == status and r.elapsed_s is not None]
        if rows:
            ax.scatter([r.elapsed_s for r in rows], [r.tflops or 0.0 for r in rows], color=colour, s=30, zorder=3,
                       label=f"{status} ({len(rows)})", clip_on=False)


def _best_so_far(ax, d: RunDetail) -> None:
    xs, ys, best = [], [], 0.0
    for r in sorted((r for r in d.attempts if r.status == "accepted" and r.tflops and r.elapsed_s is not None),
                    key=lambda r: r.elapsed_s):
        if r.tflops > best:
            best = r.tflops
            xs.append(r.elapsed_s)
            ys.append(best)
    if xs:
        end = max(r.elapsed_s or 0.0 for r in d.attempts)
        ax.step(xs + [end], ys + [ys[-1]], where="post", color="tab:blue", linewidth=1.5,
                label=f"best so far ({best:.0f} TFLOP/s)")
