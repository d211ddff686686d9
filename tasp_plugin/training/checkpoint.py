"""Save and resume a training run safely: model and optimizer state, step, loss history and RNG state in a
file that loads with ``torch.load(weights_only=True)`` (a crafted checkpoint cannot run code), the run's
configuration recorded with it, and the checks that keep a run from silently losing or mixing work:
Megatron-LM's ``--save``/``--load`` rule and refusing to continue a run with different settings."""

from __future__ import annotations

import enum
import hashlib
import os
import pickle
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .args import flag

__all__ = ["CHECKPOINT_FILE", "FIXED_ON_RESUME", "check_resume", "check_safe_to_load", "checkpoint_path",
           "corpus_fingerprint", "latest_checkpoint", "load_checkpoint", "plain", "plan_data_and_resume",
           "read_checkpoint", "resume_directory", "rng_state", "save_checkpoint", "set_rng_state"]

CHECKPOINT_FILE = "ckpt_step{step:06d}.pt"
_CHECKPOINT_RE = re.compile(r"ckpt_step(\d+)\.pt")
# what a continued run must share with the checkpoint it continues (the settings that shape the model, the
# batches or the data stream); everything else (--train-iters, --save-interval, --save, ...) may change
FIXED_ON_RESUME = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                   "seq_length", "context_parallel_size", "global_batch_size", "seed", "data")


def rng_state() -> dict:
    """The Python and torch (CPU and, if present, CUDA) random states of this process."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: Any, where: str = "value") -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` accepts: dicts, lists, tuples, tensors, numbers,
    strings, None. Str enums become their string, paths a string, numpy-style scalars a number; anything
    else is a ``TypeError`` naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        if isinstance(value, enum.Enum):
            return value.value
        return value
    if isinstance(value, Mapping):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and not hasattr(value, "__len__"):
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only tensors and plain data "
                    "(dicts, lists, numbers, strings)")


def save_checkpoint(path: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, losses: list[float], extra: dict | None = None) -> None:
    """Write the run's state to ``path`` atomically (a temporary file, then rename). ``extra`` (e.g. the
    run's configuration) must be plain data; everything saved loads with ``weights_only=True``."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             "step": int(step), "losses": [float(x) for x in losses], "rng": rng_state(),
             "extra": extra or {}}
    state = plain(state, "checkpoint")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str, mmap: bool = False) -> dict:
    """The state saved at ``path``, loaded with ``weights_only=True`` onto the CPU (``mmap``: tensors
    memory-mapped, read only when used, for a quick look at ``step`` and ``extra``);
    ``ValueError`` when it is missing or holds anything but tensors and plain data (a pickled callable or
    object, which could run code while loading)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"refusing to load checkpoint {path}: it holds more than tensors and plain data "
                         f"({first[:200]}); only load checkpoints you made yourself") from None
    except RuntimeError as exc:  # not a torch zip file (a truncated or foreign file)
        raise ValueError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None


def load_checkpoint(path: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Load ``path`` (``weights_only=True``, see ``read_checkpoint``) into ``model`` and ``optimizer`` and
    restore the RNG state; returns the whole state dict (``step``, ``losses``, ``extra``)."""
    state = read_checkpoint(path)
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state


def check_safe_to_load(paths: Iterable[str], allowed_globals: Iterable[str] = ()) -> None:
    """For checkpoints loaded by someone else's code with ``weights_only=False`` (DeepSpeed's): refuse unless
    each file would load with ``weights_only=True`` plus the named classes ``allowed_globals`` (the plain
    data classes that framework pickles, e.g. ``deepspeed.runtime.fp16.loss_scaler.LossScaler``). A static
    scan of the pickle, with no tensor data read; ``ValueError`` naming the file and what it holds."""
    allowed = set(allowed_globals)
    for path in paths:
        try:
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as exc:  # an opcode the weights-only unpickler does not allow, or not a torch zip file
            raise ValueError(f"refusing to load checkpoint {path}: it is not a plain-data torch checkpoint "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
        unexpected = sorted(found - allowed)
        if unexpected:
            raise ValueError(f"refusing to load checkpoint {path}: it pickles {', '.join(unexpected[:5])}, which "
                             "could run code while loading; only load checkpoints you made yourself")


def checkpoint_path(directory: str, step: int) -> str:
    """Where ``save_checkpoint`` files of a run in ``directory`` go: ``DIR/ckpt_step000040.pt``."""
    return os.path.join(directory, CHECKPOINT_FILE.format(step=step))


def latest_checkpoint(directory: str) -> tuple[int, str] | None:
    """``(step, path)`` of the newest ``ckpt_stepNNNNNN.pt`` in ``directory`` (None if there is none)."""
    if not os.path.isdir(directory):
        return None
    steps = [int(m.group(1)) for name in os.listdir(directory) if (m := _CHECKPOINT_RE.fullmatch(name))]
    if not steps:
        return None
    step = max(steps)
    return step, checkpoint_path(directory, step)


def corpus_fingerprint(data: bytes, path: str | None) -> dict:
    """What identifies a run's training text: its path (absolute; None for the default corpus), size and
    SHA-256 (first 16 hex digits)."""
    return {"path": os.path.abspath(path) if path is not None else None, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()[:16]}


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def resume_directory(save: str, load: str | None, latest_step: Callable[[str], int | None]) -> str | None:
    """Megatron-LM's checkpoint rule: the directory to continue from, or None to start at step 0.

    ``--save DIR`` is where checkpoints go and ``--load DIR`` continues the run whose latest checkpoint is in
    DIR (none there: start from step 0, so ``--save DIR --load DIR`` starts a run and continues it on every
    re-run). A ``--save`` directory that already holds checkpoints of a run not being continued is refused
    (starting over would overwrite some of them and leave later ones stale). ``latest_step(dir)`` is the
    newest checkpoint's step there or None."""
    saved = latest_step(save)
    if load is None:
        if saved is not None:
            raise ValueError(f"--save {save} already holds checkpoints (latest: step {saved}); pass --load {save} "
                             "to continue that run, or choose another --save to start a new one")
        return None
    if os.path.isfile(load):
        raise ValueError(f"--load takes the directory of a run's checkpoints, got the file {load}; pass "
                         f"--load {os.path.dirname(load) or '.'}")
    if saved is not None and not _same_dir(save, load):
        raise ValueError(f"--save {save} already holds checkpoints of another run (latest: step {saved}); choose "
                         f"another --save, or --save {load} to continue in place")
    return load if latest_step(load) is not None else None


def plan_data_and_resume(cfg: dict[str, Any], latest: Callable[[str], tuple[int, Any] | None]) -> str | None:
    """The part of planning a run that both examples share: load and fingerprint the corpus into
    ``cfg["data"]``, reset ``cfg["resume"]``, and return the directory to continue from by Megatron-LM's
    ``--save``/``--load`` rule (None: a new run); ``latest(dir)`` is the example's ``(step, where)`` of the
    newest checkpoint in ``dir``, or None. ``ValueError`` (one line) for a corpus too short for
    ``--seq-length`` or a run that would overwrite checkpoints."""
    from .data import load_corpus

    data = load_corpus(cfg["data_path"], cfg["max_corpus_bytes"])
    if len(data) < cfg["seq_length"] + 1:
        raise ValueError(f"the corpus has {len(data)} bytes, fewer than --seq-length + 1 = {cfg['seq_length'] + 1}")
    cfg["data"] = corpus_fingerprint(data, cfg["data_path"])
    cfg["resume"] = None
    return resume_directory(cfg["save"], cfg["load"], lambda d: (latest(d) or (None,))[0])


def _describe(key: str, value: Any) -> str:
    if key == "data" and isinstance(value, Mapping):
        where = "" if "path" not in value else f"{value['path'] or 'standard library sources'}, "
        return f"{where}{value.get('bytes')} bytes, sha256 {value.get('sha256')}"
    return repr(value) if isinstance(value, str) else str(value)


def check_resume(saved: Mapping[str, Any] | None, current: Mapping[str, Any], fixed: Sequence[str], step: int,
                 train_iters: int, where: str) -> None:
    """``ValueError`` (one line naming every difference) unless a run with settings ``current`` may continue
    the checkpoint at ``step`` in ``where`` whose recorded settings are ``saved``: the ``fixed`` settings
    must be equal and ``train_iters`` must not be below ``step``."""
    if saved is None:
        raise ValueError(f"the checkpoint at step {step} in {where} records no run configuration (made by an "
                         "older version?), so continuing it cannot be checked; start a new run with another "
                         "--save")
    diffs = []
    for key in fixed:
        if key not in saved:
            diffs.append(f"{key} (not recorded in the checkpoint)")
        elif saved[key] != current.get(key):
            here, there = current.get(key), saved[key]
            name = flag(key)
            if key == "data":
                name = "data (--data-path and its content)"
                if isinstance(here, Mapping) and isinstance(there, Mapping) and here.get("path") == there.get("path"):
                    here, there = ({k: v for k, v in d.items() if k != "path"} for d in (here, there))
            diffs.append(f"{name}: {_describe(key, here)} here, {_describe(key, there)} in the checkpoint")
    if diffs:
        raise ValueError(f"cannot continue the run in {where} (step {step}) with different settings: "
                         f"{'; '.join(diffs)}. Use the checkpoint's settings, or start a new run with another "
                         "--save and no --load")
    if train_iters < step:
        raise ValueError(f"--train-iters {train_iters} is below the step {step} of the latest checkpoint in "
                         f"{where}; pass --train-iters above {step} to train further")
