"""Planning: everything decided before a tensor exists, in pure Python (nothing below imports torch).

The vocabulary (``Algorithm``, ``Sharding``, ``Layout``), the ``Topology`` value type, ``resolve`` (the one
place an algorithm name becomes a schedule), the per-step plans the engine runs and the cost model counts,
the varlen calls of packed documents, the Ulysses x ring split of a CP group, and the bytes each step puts on
each link.
"""

from .hybrid import HybridLayout
from .packed import PackedLayout, VarlenBlock, varlen_blocks
from .resolve import Resolution, resolve
from .steps import Block, StepPlan, plan_step, step_plans, step_work, sub_chunk_lengths
from .topology import Topology
from .traffic import DTYPE_BYTES, LinkTraffic, link_traffic, step_sends
from .vocabulary import Algorithm, Layout, Sharding, parse_choice

__all__ = [
    "DTYPE_BYTES",
    "Algorithm",
    "Block",
    "HybridLayout",
    "Layout",
    "LinkTraffic",
    "PackedLayout",
    "Resolution",
    "Sharding",
    "StepPlan",
    "Topology",
    "VarlenBlock",
    "link_traffic",
    "parse_choice",
    "plan_step",
    "resolve",
    "step_plans",
    "step_sends",
    "step_work",
    "sub_chunk_lengths",
    "varlen_blocks",
]
