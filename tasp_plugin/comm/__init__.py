"""Layer 4: one step's exchange of a ring schedule over a process group."""

from .exchange import TRANSPORTS, RingExchange

__all__ = ["RingExchange", "TRANSPORTS"]
