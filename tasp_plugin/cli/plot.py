"""Draw a ring schedule: one panel per cycle (ranks on a circle, the cycle's arcs in its own colour)."""

from __future__ import annotations

import math

from ..schedules import RingSchedule

__all__ = ["MAX_PLOT_RANKS", "check_plottable", "panel_geometry", "plot_schedule"]

# above this, a panel per cycle (n - 1 panels for flat Hamilton) with every rank on a circle no longer
# reads: the neighbours' arrows shrink below their heads and the figure grows past ~2000 x 4000 pixels
MAX_PLOT_RANKS = 32
PANEL_INCHES = 3.4


def check_plottable(world_size: int) -> None:
    """``ValueError`` (one line) for a schedule too large to draw legibly."""
    if world_size > MAX_PLOT_RANKS:
        raise ValueError(f"--plot draws one panel per cycle with every rank on a circle, legible up to "
                         f"{MAX_PLOT_RANKS} ranks; got {world_size}. Plot a smaller group (the cycles of the "
                         "same construction look alike) or read the cycle list printed without --plot")


def panel_inches(n: int) -> float:
    """Side of one panel: 3.4 in up to 24 ranks, then growing with the ring so neighbours stay apart."""
    return PANEL_INCHES * max(1.0, n / 24)


def panel_geometry(n: int, axis_points: float) -> dict[str, float]:
    """Marker diameter, arrow shrink and head size, and label size (all in points) for ``n`` ranks on a
    circle of radius 1 in an axis ``axis_points`` wide showing [-1.25, 1.25]: markers never overlap and
    the arrow between neighbours stays longer than its head."""
    unit = axis_points / 2.5
    chord = 2 * math.sin(math.pi / n) * unit if n > 1 else unit  # distance between neighbouring ranks
    marker = min(16.0, 0.55 * chord)
    shrink = marker / 2 + 1
    head = min(10.0, max(3.0, 0.6 * (chord - 2 * shrink)))
    return {"marker": marker, "shrink": shrink, "head": head, "font": min(8.0, max(4.0, 0.5 * marker)),
            "chord": chord}


def plot_schedule(schedule: RingSchedule, path: str, title: str) -> None:
    """Save a PNG of ``schedule``, one small panel per cycle so each can be checked by eye; needs
    matplotlib (``pip install tasp_plugin[plot]``). At most ``MAX_PLOT_RANKS`` ranks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    n, c = schedule.world_size, schedule.num_cycles
    check_plottable(n)
    cols = min(c, 4)
    rows = math.ceil(c / cols)
    side = panel_inches(n)
    height = side * rows + 0.8
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05 / height, top=1 - 0.8 / height, wspace=0.05,
                        hspace=0.3 / side)
    xy = [(math.cos(math.pi / 2 - 2 * math.pi * r / n), math.sin(math.pi / 2 - 2 * math.pi * r / n)) for r in range(n)]
    cmap = plt.get_cmap("tab20" if c > 10 else "tab10")
    node_cmap = plt.get_cmap("Set2")
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= c:
            continue
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_aspect("equal")
        box = ax.get_window_extent()
        geo = panel_geometry(n, min(box.width, box.height) * 72 / fig.dpi)
        cyc = schedule.cycles[idx]
        for pos, a in enumerate(cyc):
            b = cyc[(pos + 1) % n]
            ax.add_patch(FancyArrowPatch(xy[a], xy[b], arrowstyle="-|>", mutation_scale=geo["head"],
                                         color=cmap(idx % cmap.N), lw=1.2, shrinkA=geo["shrink"],
                                         shrinkB=geo["shrink"]))
        for r, (x, y) in enumerate(xy):
            edge = node_cmap(schedule.node_of(r) % node_cmap.N) if schedule.nodes > 1 else "black"
            ax.scatter([x], [y], s=geo["marker"] ** 2, color="white", edgecolors=edge, linewidths=1.5, zorder=3)
            ax.text(x, y, str(r), ha="center", va="center", fontsize=geo["font"], zorder=4)
        ax.set_title(f"cycle {idx}: " + ("->".join(map(str, cyc)) if n <= 12 else f"from {cyc[0]}"), fontsize=8)
    fig.suptitle(title + ("  (node = ring colour)" if schedule.nodes > 1 else ""), y=1 - 0.1 / height, va="top")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
