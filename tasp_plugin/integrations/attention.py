"""``TASPAttention``: a drop-in attention core for any model, plus the process-wide CP settings that an
integration installs (DeepSpeed's ``initialize``) and that attention modules built without an explicit
group use (``TASPAttention``, the Hugging Face ``"tasp"`` attention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..api import check_options, context_parallel_attention
from ..topology import CPGroups

__all__ = ["CPSettings", "TASPAttention", "install_context_parallel", "installed_context_parallel"]


@dataclass(frozen=True)
class CPSettings:
    """The CP group attention runs over (None: the default process group; a ``CPGroups`` also routes
    intra-node and rail transfers), algorithm, backend and all-to-all (Ulysses) size."""

    group: dist.ProcessGroup | CPGroups | None = None
    algorithm: str = "hamilton"
    backend: str = "auto"
    ulysses_size: int = 1


_installed = CPSettings()


def install_context_parallel(group: dist.ProcessGroup | CPGroups | None, algorithm: str = "hamilton",
                             backend: str = "auto", ulysses_size: int = 1) -> CPSettings:
    """Make ``group``/``algorithm``/``backend``/``ulysses_size`` the defaults of every TASP attention call in
    this process; ``group=None`` means the default process group (it must exist when attention runs)."""
    global _installed
    if group is not None and not isinstance(group, (dist.ProcessGroup, CPGroups)):
        raise TypeError(f"group must be a torch.distributed ProcessGroup, the CPGroups of build_cp_groups or None "
                        f"(the default group), got {type(group).__name__}")
    if algorithm is None or backend is None:
        raise TypeError("algorithm and backend must be given (strings such as 'hamilton' and 'auto'), not None")
    check_options(algorithm=algorithm, backend=backend)
    if isinstance(ulysses_size, bool) or not isinstance(ulysses_size, int) or ulysses_size < 1:
        raise TypeError(f"ulysses_size must be a positive integer, got {ulysses_size!r}")
    _installed = CPSettings(group, algorithm, backend, ulysses_size)
    return _installed


def installed_context_parallel() -> CPSettings:
    """The CP settings last installed (by ``initialize`` or ``install_context_parallel``)."""
    return _installed


class TASPAttention(torch.nn.Module):
    """Context-parallel attention of local zigzag shards ``q, k, v`` (GQA allowed) -> local output.

    Arguments left as None follow ``installed_context_parallel()`` at call time, so modules can be built
    before ``initialize`` creates the CP group.
    """

    def __init__(self, *, causal: bool = True, softmax_scale: float | None = None, layout: str = "bshd",
                 group: dist.ProcessGroup | CPGroups | None = None, algorithm: str | None = None,
                 backend: str | None = None, ulysses_size: int | None = None) -> None:
        super().__init__()
        if layout is None:
            raise TypeError("layout must be one of 'bshd', 'sbhd', 'bhsd', not None")
        check_options(layout, algorithm, backend)
        self.causal, self.softmax_scale, self.layout = causal, softmax_scale, layout
        self.group, self.algorithm, self.backend, self.ulysses_size = group, algorithm, backend, ulysses_size

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Local attention output, same layout as the inputs."""
        settings = installed_context_parallel()
        return context_parallel_attention(
            q, k, v, group=self.group if self.group is not None else settings.group,
            algorithm=self.algorithm or settings.algorithm, causal=self.causal,
            softmax_scale=self.softmax_scale, layout=self.layout, backend=self.backend or settings.backend,
            ulysses_size=self.ulysses_size or settings.ulysses_size)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, layout={self.layout!r}, algorithm={self.algorithm or 'installed'}"
