"""The one executor for every ring schedule (ring, zigzag, Hamilton), forward and backward, its timing hook,
and the Ulysses all-to-all stage that hybrid layouts put around it. The step plans it runs come from
``tasp_plugin.planning``."""

from .executor import EngineConfig, RingAttentionFunction, kv_rows, run_backward, run_forward
from .timing import PHASES, StepHook, StepTimer
from .ulysses import heads_to_seq, seq_to_heads

__all__ = ["PHASES", "EngineConfig", "RingAttentionFunction", "StepHook", "StepTimer", "heads_to_seq", "kv_rows",
           "run_backward", "run_forward", "seq_to_heads"]
