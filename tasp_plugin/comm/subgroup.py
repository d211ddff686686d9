"""``SubCommunicator``: some ranks of a CP group as a group of their own, carried by the parent's transfers.

The Ulysses x ring split needs an all-to-all group and a ring group inside one CP group. Built as views of the
parent communicator they need no new process groups (no collective creation, nothing to cache or tear down)
and work on every kind of communicator, emulated ones included.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from ..planning import Topology
from .communicator import Communicator, Handle, Transfers
from .peer_memory import PeerMemory

__all__ = ["SubCommunicator"]


class SubCommunicator(Communicator):
    """The ranks ``members`` (parent ranks, this rank among them) of ``parent``, renumbered ``0..len - 1``."""

    def __init__(self, parent: Communicator, members: Sequence[int]) -> None:
        members = tuple(members)
        if parent.rank not in members or len(set(members)) != len(members):
            raise ValueError(f"members {members} must be distinct and hold this rank {parent.rank}")
        super().__init__(len(members), members.index(parent.rank))
        self.parent, self.members = parent, members

    @property
    def key(self) -> Hashable:
        return (self.parent.key, self.members)

    def start(self, sends: Transfers, recvs: Transfers) -> list[Handle]:
        return self.parent.start([(self.members[p], t) for p, t in sends], [(self.members[p], t) for p, t in recvs])

    def topology(self, override: Topology | str | None = None) -> Topology:
        """The parent's topology (``override`` overrides the parent's, as everywhere a user names the CP
        group's topology) restricted to the members: which of them share a node."""
        parent = self.parent.topology(override)
        return Topology.from_node_ids([parent.node_of(m) for m in self.members])

    def peer_memory(self, device: torch.device) -> PeerMemory | None:
        """None: symmetric memory belongs to a whole process group (``peer_copy`` needs the plain group)."""
        return None
