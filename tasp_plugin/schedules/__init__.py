"""Layer 1: topology graph to ring schedule (pure Python, no torch).

Decompositions of the complete digraph into Hamiltonian cycles, multi-node cycles, their validation, and
the `RingSchedule` routing tables the engine runs.
"""

from .decomposition import (
    NoHamiltonianDecomposition,
    NoPathDecomposition,
    hamiltonian_decomposition,
    hamiltonian_path_decomposition,
    zigzag_sequencing,
)
from .multinode import is_rail_aligned, multinode_cycles, multinode_links
from .ring_schedule import RingSchedule
from .validation import ScheduleError, validate_cycles, validate_paths

__all__ = [
    "NoHamiltonianDecomposition",
    "NoPathDecomposition",
    "RingSchedule",
    "ScheduleError",
    "hamiltonian_decomposition",
    "hamiltonian_path_decomposition",
    "is_rail_aligned",
    "multinode_cycles",
    "multinode_links",
    "validate_cycles",
    "validate_paths",
    "zigzag_sequencing",
]
