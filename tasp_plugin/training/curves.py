"""Save a training loss curve as a PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os

__all__ = ["save_loss_curve"]


def save_loss_curve(losses: list[float], path: str, title: str) -> None:
    """Plot ``losses`` (one per step, step 1 first) to the PNG ``path``; needs matplotlib."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("save_loss_curve needs matplotlib: pip install 'tasp_plugin[plot]'") from exc
    if not losses:
        raise ValueError("losses is empty; run at least one step before saving a loss curve")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses, marker="." if len(losses) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
