"""Draw a ring schedule: one panel per cycle (ranks on a circle, the cycle's arcs in its own colour)."""

from __future__ import annotations

import math

from ..schedules import RingSchedule


def plot_schedule(schedule: RingSchedule, path: str, title: str) -> None:
    """Save a PNG of ``schedule``, one small panel per cycle so each can be checked by eye; needs
    matplotlib (``pip install tasp_plugin[plot]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    n, c = schedule.world_size, schedule.num_cycles
    cols = min(c, 4)
    rows = math.ceil(c / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows + 0.6), squeeze=False)
    xy = [(math.cos(math.pi / 2 - 2 * math.pi * r / n), math.sin(math.pi / 2 - 2 * math.pi * r / n)) for r in range(n)]
    cmap = plt.get_cmap("tab20" if c > 10 else "tab10")
    node_cmap = plt.get_cmap("Set2")
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= c:
            continue
        cyc = schedule.cycles[idx]
        for pos, a in enumerate(cyc):
            b = cyc[(pos + 1) % n]
            ax.add_patch(FancyArrowPatch(xy[a], xy[b], arrowstyle="-|>", mutation_scale=10, color=cmap(idx % cmap.N),
                                         lw=1.5, shrinkA=9, shrinkB=9))
        for r, (x, y) in enumerate(xy):
            edge = node_cmap(schedule.node_of(r) % node_cmap.N) if schedule.nodes > 1 else "black"
            ax.scatter([x], [y], s=260, color="white", edgecolors=edge, linewidths=2, zorder=3)
            ax.text(x, y, str(r), ha="center", va="center", fontsize=8, zorder=4)
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_aspect("equal")
        ax.set_title(f"cycle {idx}: " + ("->".join(map(str, cyc)) if n <= 12 else f"from {cyc[0]}"), fontsize=8)
    fig.suptitle(title + ("  (node = ring colour)" if schedule.nodes > 1 else ""))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
