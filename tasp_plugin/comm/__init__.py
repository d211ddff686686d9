"""Layer 4: one step's exchange of a ring schedule over a process group (or an emulated one)."""

from .emulation import EmulatedGroup, LoopbackGroup, ThreadGroup
from .exchange import TRANSPORTS, RingExchange, group_size_rank

__all__ = ["EmulatedGroup", "LoopbackGroup", "RingExchange", "TRANSPORTS", "ThreadGroup", "group_size_rank"]
