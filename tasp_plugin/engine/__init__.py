"""Layer 5: one executor for every ring schedule (ring, zigzag, Hamilton), forward and backward."""

from .blocks import LAYOUTS, Block, plan_step
from .executor import EngineConfig, RingAttentionFunction

__all__ = ["LAYOUTS", "Block", "EngineConfig", "RingAttentionFunction", "plan_step"]
