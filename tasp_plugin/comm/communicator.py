"""The ``Communicator`` interface: one rank's view of a CP group (size, rank, its topology) and the
asynchronous point-to-point exchange of one step. ``as_communicator`` turns whatever a user passes as a
group into one, once, at the API boundary; nothing below it looks at group types again."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Protocol

import torch
import torch.distributed as dist

from ..planning import Topology
from ..topology import CPGroups, detect_topology, resolve_topology
from .peer_memory import PeerMemory, symmetric_memory_available

__all__ = ["Communicator", "Handle", "ProcessGroupCommunicator", "RoutedCommunicator", "as_communicator"]

Transfers = Sequence[tuple[int, torch.Tensor]]


class Handle(Protocol):
    """A posted transfer; ``wait()`` blocks until its tensors may be read (receives) or reused (sends). Its
    result is unused (``torch.distributed.Work.wait`` returns a bool and takes an optional timeout)."""

    def wait(self) -> object: ...


class Communicator(ABC):
    """One rank of a CP group: ``size``, ``rank`` (group ranks) and ``start`` of one step's transfers."""

    def __init__(self, size: int, rank: int) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside 0..{size - 1}")
        self._size, self._rank = size, rank

    @property
    def size(self) -> int:
        """Ranks in the group."""
        return self._size

    @property
    def rank(self) -> int:
        """This process's (or thread's) rank in the group."""
        return self._rank

    @property
    def key(self) -> Hashable:
        """What identifies the group across calls (per-group caches and one-time warnings use it)."""
        return id(self)

    @abstractmethod
    def start(self, sends: Transfers, recvs: Transfers) -> list[Handle]:
        """Post ``(peer, tensor)`` sends and receives (peers are group ranks); return their handles."""

    def topology(self, override: Topology | str | None = None) -> Topology:
        """The group's topology: ``override`` if given, else one node (emulated groups)."""
        return resolve_topology(override, self.size) or Topology.uniform(1, self.size)

    @property
    def supports_all_to_all(self) -> bool:
        """Whether :meth:`all_to_all` can carry a step in which every rank sends to every other rank."""
        return False

    def all_to_all(self, recv: torch.Tensor, send: torch.Tensor, recv_splits: list[int],
                   send_splits: list[int]) -> Handle:
        """One asynchronous all-to-all of flat buffers split per group rank."""
        raise NotImplementedError(f"{type(self).__name__} has no all-to-all")

    def peer_memory(self, device: torch.device) -> PeerMemory | None:
        """The group's symmetric memory on ``device`` for copy-engine transfers, if it can have one."""
        return None

    @staticmethod
    def wait(handles: Sequence[Handle]) -> None:
        """Block until every handle completed."""
        for h in handles:
            h.wait()


class ProcessGroupCommunicator(Communicator):
    """A ``torch.distributed`` process group (``None``: the default group): batched P2P on NCCL or gloo."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        rank = dist.get_rank(group)
        if rank < 0:
            raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of the group passed "
                             "as group=; pass the CP group this rank belongs to")
        super().__init__(dist.get_world_size(group), rank)
        self.group = group

    @property
    def key(self) -> Hashable:
        """The group's global ranks and the group object (a group built later over the same ranks is new)."""
        ranks = tuple(dist.get_process_group_ranks(self.group)) if self.group is not None else ()
        return ranks, id(self.group)

    @property
    def backend(self) -> str:
        """The group's backend name (``nccl`` moves CUDA tensors, ``gloo`` CPU tensors)."""
        return str(dist.get_backend(self.group))

    def _global(self, peer: int) -> int:
        return dist.get_global_rank(self.group, peer) if self.group is not None else peer

    def _via(self, peer: int) -> dist.ProcessGroup | None:
        """The communicator that carries traffic to group rank ``peer``."""
        return self.group

    def _order(self) -> tuple[dist.ProcessGroup | None, ...]:
        """The communicators in the fixed order their batches are posted (the same on every rank)."""
        return (self.group,)

    def start(self, sends: Transfers, recvs: Transfers) -> list[Handle]:
        by_group: dict[dist.ProcessGroup | None, list[dist.P2POp]] = {}
        for peer, s in sends:
            if s.numel():
                via = self._via(peer)
                by_group.setdefault(via, []).append(dist.P2POp(dist.isend, s.contiguous(), self._global(peer), via))
        for peer, r in recvs:
            if not r.is_contiguous():
                raise ValueError("receive tensors must be contiguous")
            if r.numel():
                via = self._via(peer)
                by_group.setdefault(via, []).append(dist.P2POp(dist.irecv, r, self._global(peer), via))
        # one batch per communicator, always in the same order on every rank (no two ranks wait on different
        # communicators first): NCCL runs them concurrently
        return [h for g in self._order() if g in by_group for h in dist.batch_isend_irecv(by_group[g])]

    def topology(self, override: Topology | str | None = None) -> Topology:
        """``override``, else detected (``$TASP_TOPOLOGY`` or host names; collective the first time)."""
        return detect_topology(self.group, override)

    @property
    def supports_all_to_all(self) -> bool:
        return True

    def peer_memory(self, device: torch.device) -> PeerMemory | None:
        """On an NCCL group over CUDA devices with symmetric memory: the group's ``PeerMemory`` on ``device``,
        one per group and device for the life of the process (the caller checks that the group shares a node)."""
        if device.type != "cuda" or "nccl" not in self.backend or not symmetric_memory_available():
            return None
        return PeerMemory.of(self.key, self.group, device)

    def all_to_all(self, recv: torch.Tensor, send: torch.Tensor, recv_splits: list[int],
                   send_splits: list[int]) -> Handle:
        work = dist.all_to_all_single(recv, send, recv_splits, send_splits, group=self.group, async_op=True)
        assert work is not None
        return work


class RoutedCommunicator(ProcessGroupCommunicator):
    """The CP group of ``build_cp_groups``: traffic to a peer on this node goes over the intra-node group,
    to a peer on this rank's rail over the rail group, anything else over the CP group."""

    def __init__(self, groups: CPGroups) -> None:
        super().__init__(groups.cp)
        self.groups = groups

    def _via(self, peer: int) -> dist.ProcessGroup | None:
        return self.groups.route(peer)

    def _order(self) -> tuple[dist.ProcessGroup | None, ...]:
        return (self.groups.intra, self.groups.inter, self.groups.cp)

    def topology(self, override: Topology | str | None = None) -> Topology:
        """The topology the groups were built for, unless ``override`` says otherwise."""
        return self.groups.topology if override is None else detect_topology(self.group, override)


def as_communicator(group: object) -> Communicator:
    """The communicator for a user's ``group=``: a ``Communicator`` as is, a ``CPGroups`` routed, a process
    group (``None``: the default one, which must exist) as is. Anything else is a ``TypeError``."""
    if isinstance(group, Communicator):
        return group
    if isinstance(group, CPGroups):
        return RoutedCommunicator(group)
    if group is None:
        if not dist.is_initialized():
            raise ValueError("group is None and torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group first or pass the CP process group as group=")
        return ProcessGroupCommunicator(None)
    if isinstance(group, dist.ProcessGroup):
        return ProcessGroupCommunicator(group)
    raise TypeError(f"group must be a torch.distributed ProcessGroup, the CPGroups of build_cp_groups, a "
                    f"Communicator or None (the default group); got {type(group).__name__} {group!r}")
