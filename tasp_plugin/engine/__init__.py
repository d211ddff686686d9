"""The one executor for every ring schedule (ring, zigzag, Hamilton), forward and backward, and its
timing hook. The step plans it runs come from ``tasp_plugin.planning``."""

from .executor import EngineConfig, RingAttentionFunction, kv_rows, run_backward, run_forward
from .timing import PHASES, StepHook, StepTimer

__all__ = ["PHASES", "EngineConfig", "RingAttentionFunction", "StepHook", "StepTimer", "kv_rows", "run_backward",
           "run_forward"]
