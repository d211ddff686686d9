"""Generic save/resume of a training run: model and optimizer state, step, loss history and RNG state."""

from __future__ import annotations

import os
import random

import torch

__all__ = ["load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]


def rng_state() -> dict:
    """The Python and torch (CPU and, if present, CUDA) random states of this process."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, losses: list[float], extra: dict | None = None) -> None:
    """Write the run's state to ``path`` atomically (a temporary file, then rename)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             "step": step, "losses": list(losses), "rng": rng_state(), "extra": extra or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load ``path`` into ``model`` and ``optimizer``, restore RNG state; returns the whole state dict
    (``step``, ``losses``, ``extra``)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; check the path or start without resume")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state
