"""Layer 5: one executor for every ring schedule (ring, zigzag, Hamilton), forward and backward."""

from .blocks import LAYOUTS, Block, StepPlan, plan_step, sub_chunk_lengths
from .executor import EngineConfig, RingAttentionFunction, run_backward, run_forward
from .timing import StepHook, StepTimer

__all__ = ["LAYOUTS", "Block", "EngineConfig", "RingAttentionFunction", "StepHook", "StepPlan", "StepTimer", "plan_step",
           "run_backward", "run_forward", "sub_chunk_lengths"]
