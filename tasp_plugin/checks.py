"""What an attention call checks before its first transfer: every argument on its own (the same error on
every rank that passes it), then, across the CP group, that every rank makes the same call.

The cross-rank check gathers a fingerprint of the call (shapes, exact dtype, options, and everything the
schedule decision reads: topology override and environment, GPU name). It runs on the first call of each
new (group, fingerprint), so steady-state training runs no extra collective, and on every call with
``TASP_CHECK_SHAPES=1``. A rank whose own checks failed takes part with its error, so every rank raises.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .comm import TRANSPORTS, Communicator, ProcessGroupCommunicator
from .kernels import BACKENDS
from .planning import Algorithm, HybridLayout, Layout, Topology, parse_choice
from .sharding import check_cu_seqlens
from .topology import TOPOLOGY_ENV, gather_objects

__all__ = ["CHECK_ENV", "TRANSPORT_ENV", "CallOptions", "agree_across_ranks", "check_call", "check_hybrid",
           "check_options", "check_packed", "env_flag", "fingerprint", "gpu_name", "transport_choice"]

CHECK_ENV = "TASP_CHECK_SHAPES"
TRANSPORT_ENV = "TASP_TRANSPORT"  # one of comm.TRANSPORTS; how K/V and the gradients travel
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# communicator key -> fingerprints every rank of that group agreed on
_agreed: dict[Hashable, set[tuple[tuple[str, str], ...]]] = {}


def env_flag(name: str) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off/unset (any case)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"${name} must be one of {_TRUE + _FALSE[1:]}, got {os.environ[name]!r}")


@dataclass(frozen=True)
class CallOptions:
    """The checked options of one attention call."""

    algorithm: Algorithm
    layout: Layout
    causal: bool
    softmax_scale: float | None
    backend: str
    return_lse: bool
    transport: str = "auto"
    ulysses_size: int = 1


def _check_scale(softmax_scale: object) -> float | None:
    if softmax_scale is None:
        return None
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a positive finite number or None, got {softmax_scale!r}")
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        raise ValueError(f"softmax_scale must be a positive finite number or None, got {softmax_scale!r}")
    return float(softmax_scale)


def _check_tensors(q: object, k: object, v: object, layout: Layout) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != layout.ndim:
            raise TypeError(f"{name} must be {layout.ndim}-D in layout {layout.value!r} ({layout.meaning}), got "
                            f"shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} has dtype {t.dtype}; attention takes float16, bfloat16, float32 or float64")
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    perm = layout.to_bhsd
    (bq, hq, sq, dq), (bk, hk, sk, dk) = ([((1, *t.shape) if layout.ndim == 3 else t.shape)[i] for i in perm]
                                          for t in (q, k))
    if hq < 1 or hk < 1:
        raise ValueError(f"q and k/v need at least one head, got {hq} query and {hk} key/value heads")
    if dq < 1:
        raise ValueError(f"head_dim must be >= 1, got {dq}")
    if bq != bk:
        raise ValueError(f"q and k/v differ in batch size: {bq} vs {bk} (layout {layout.value!r})")
    if dq != dk:
        raise ValueError(f"q and k/v differ in head_dim: {dq} vs {dk} (layout {layout.value!r})")
    if hq % hk:
        raise ValueError(f"Q heads ({hq}) must be a multiple of K/V heads ({hk})")
    if sq != sk or sq < 2 or sq % 2:
        raise ValueError(f"local q and k/v must have the same even sequence length >= 2 (global length divisible "
                         f"by 2 * cp_size), got {sq} and {sk}")


def check_options(layout: str | None = None, algorithm: str | None = None, backend: str | None = None) -> None:
    """Raise naming the option for an unknown layout, algorithm or backend (None: not given), for modules
    that take options before they see any tensor."""
    if layout is not None:
        parse_choice(Layout, layout, "layout")
    if algorithm is not None:
        parse_choice(Algorithm, algorithm, "algorithm")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")


def check_call(q: object, k: object, v: object, *, algorithm: object, causal: object, softmax_scale: object,
               layout: object, backend: object, return_lse: object, ulysses_size: object = 1) -> CallOptions:
    """Every argument of ``context_parallel_attention`` on its own; ``TypeError``/``ValueError`` naming it."""
    chosen = parse_choice(Algorithm, algorithm, "algorithm")
    dims = parse_choice(Layout, layout, "layout")
    for name, flag in (("causal", causal), ("return_lse", return_lse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, one of {list(BACKENDS)}; got {backend!r}")
    check_options(backend=backend)
    scale = _check_scale(softmax_scale)
    _check_tensors(q, k, v, dims)
    if isinstance(ulysses_size, bool) or not isinstance(ulysses_size, int) or ulysses_size < 1:
        raise TypeError(f"ulysses_size must be a positive integer, got {ulysses_size!r}")
    assert isinstance(causal, bool) and isinstance(return_lse, bool)
    return CallOptions(chosen, dims, causal, scale, backend, return_lse, transport_choice(), ulysses_size)


def transport_choice() -> str:
    """``$TASP_TRANSPORT`` (unset: ``auto``), checked against ``comm.TRANSPORTS``."""
    raw = os.environ.get(TRANSPORT_ENV, "").strip().lower() or "auto"
    if raw not in TRANSPORTS:
        raise ValueError(f"${TRANSPORT_ENV} must be one of {TRANSPORTS}, got {os.environ[TRANSPORT_ENV]!r}")
    return raw


def check_packed(layout: Layout, cu_seqlens: object, q: torch.Tensor, cp_size: int) -> tuple[int, ...] | None:
    """``cu_seqlens`` checked against the layout and this rank's tokens (``thd`` and ``cu_seqlens`` go
    together; the documents must fill ``cp_size`` times the local tokens): the global padded cumulative
    lengths as a tuple, or None for an unpacked call."""
    if cu_seqlens is None:
        if layout is Layout.THD:
            raise ValueError("layout 'thd' (packed documents) needs cu_seqlens, the global cumulative document "
                             "lengths")
        return None
    if layout is not Layout.THD:
        raise ValueError(f"cu_seqlens (packed documents) needs layout 'thd' ([tokens, heads, head_dim]), got "
                         f"{layout.value!r}")
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.is_floating_point():
        raise TypeError(f"cu_seqlens must hold integers, got dtype {cu_seqlens.dtype}")
    if not isinstance(cu_seqlens, (torch.Tensor, list, tuple)):
        raise TypeError(f"cu_seqlens must be a 1-D integer tensor or a sequence of ints, got "
                        f"{type(cu_seqlens).__name__}")
    return tuple(check_cu_seqlens(cu_seqlens, cp_size, total=q.shape[0] * cp_size))


def check_hybrid(options: CallOptions, q: torch.Tensor, k: torch.Tensor, cp_size: int) -> HybridLayout | None:
    """The Ulysses x ring split for ``options.ulysses_size`` (None for 1): it must divide the CP group and the
    query heads, and the K/V heads must divide it or be divisible by it."""
    if options.ulysses_size == 1:
        return None
    if options.transport in ("peer_copy", "all_to_all"):
        raise ValueError(f"${TRANSPORT_ENV}={options.transport} does not work with ulysses_size > 1 (its ring groups "
                         "are views of the CP group); use auto or p2p")
    hybrid = HybridLayout.of(cp_size, options.ulysses_size)
    head_axis = 1 if options.layout is Layout.THD else options.layout.to_bhsd[1]
    hybrid.kv_repeats(q.shape[head_axis], k.shape[head_axis])
    return hybrid


@functools.cache
def gpu_name(index: int | None) -> str:
    """The CUDA device's name (a driver query: asked once per device, not on every call)."""
    return torch.cuda.get_device_name(index)


def fingerprint(options: CallOptions, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                topology: Topology | str | None,
                cu_seqlens: tuple[int, ...] | None = None) -> tuple[tuple[str, str], ...]:
    """What every rank of the group must agree on, as (field, value) strings."""
    gpu = gpu_name(q.device.index) if q.is_cuda else ""
    fields = {
        "q shape": tuple(q.shape), "k shape": tuple(k.shape), "v shape": tuple(v.shape), "dtype": q.dtype,
        "device type": q.device.type, "algorithm": options.algorithm.value, "causal": options.causal,
        "softmax_scale": options.softmax_scale, "layout": options.layout.value, "backend": options.backend,
        "topology": topology, f"${TOPOLOGY_ENV}": os.environ.get(TOPOLOGY_ENV, ""),
        "$TASP_INTERCONNECT": os.environ.get("TASP_INTERCONNECT", ""), "transport": options.transport, "GPU": gpu,
        "ulysses_size": options.ulysses_size,
        # packed or not always; the documents themselves change every batch, so they are compared only with
        # TASP_CHECK_SHAPES=1 (a new fingerprint per batch would gather on every step)
        "cu_seqlens": None if cu_seqlens is None else (
            hashlib.sha1(repr(cu_seqlens).encode()).hexdigest() if env_flag(CHECK_ENV) else "packed"),
    }
    return tuple((key, str(value)) for key, value in fields.items())


def agree_across_ranks(comm: Communicator, mine: tuple[tuple[str, str], ...] | None,
                       error: Exception | None) -> None:
    """Make the ranks of a process group fail together: when a check is due, gather every rank's fingerprint
    (``mine``, None where this rank's own checks raised ``error``) and raise on every rank if any rank failed
    or the fingerprints differ. Finally re-raise ``error``.

    Due: with ``TASP_CHECK_SHAPES=1`` on every call; else on the first call over the group and on a new
    fingerprint. A rank that fails its own checks on a group that already agreed raises without gathering
    (the others cannot know a check is due), and ranks switching to different, each already agreed call
    shapes gather nothing: such rank-local differences are caught only when they show up on
    the group's first call or with ``TASP_CHECK_SHAPES=1``."""
    if isinstance(comm, ProcessGroupCommunicator) and comm.size > 1:
        key = comm.key
        seen = _agreed.get(key)
        every_call = env_flag(CHECK_ENV)
        due = every_call or seen is None or (error is None and mine not in seen)
        if due:
            report = None if error is None else f"{type(error).__name__}: {error}"
            everyone = gather_objects((mine, report), comm.group)
            failed = [(r, msg) for r, (_, msg) in enumerate(everyone) if msg is not None]
            if failed and error is None:
                rank, msg = failed[0]
                raise ValueError(f"rank {rank} of the CP group rejected its attention call ({msg}); every rank "
                                 f"stops (this is rank {comm.rank})")
            if not failed:
                _raise_on_difference([fp for fp, _ in everyone], comm.rank)
                assert mine is not None
                _agreed.setdefault(key, set()).add(mine)
    if error is not None:
        raise error


def _raise_on_difference(prints: list[tuple[tuple[str, str], ...] | None], me: int) -> None:
    """``ValueError`` naming each field on which some rank differs from rank 0, with the ranks' values."""
    reference = dict(prints[0] or ())
    differences = []
    for field, value in reference.items():
        values = {r: dict(p or ()).get(field) for r, p in enumerate(prints)}
        if len(set(values.values())) > 1:
            differences.append(f"{field}: " + ", ".join(f"rank {r} {v}" for r, v in values.items()
                                                          if v != value or r == 0))
    if differences:
        raise ValueError("the ranks of the CP group disagree on the attention call (every rank must pass the "
                         f"same shapes, dtype and options; this is rank {me}): " + "; ".join(differences))
