"""Layer 5: one executor for every ring schedule (ring, zigzag, Hamilton), forward and backward."""

from .blocks import LAYOUTS, Block, plan_step
from .executor import EngineConfig, RingAttentionFunction
from .timing import StepHook, StepTimer

__all__ = ["LAYOUTS", "Block", "EngineConfig", "RingAttentionFunction", "StepHook", "StepTimer", "plan_step"]
