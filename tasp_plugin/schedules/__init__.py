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
from .seed_helpers import (
    calculate_in_mapping_circle,
    calculate_inter_node_mapping,
    calculate_intra_node_in_mapping_two_nodes,
    calculate_intra_node_out_mapping_two_nodes,
    calculate_out_mapping_circle,
    calculate_source_rank_per_iter,
    gen_hamilton_circle,
    gen_hamilton_circle_two_nodes,
    gen_hamilton_path_local,
)
from .validation import ScheduleError, validate_cycles, validate_paths

__all__ = [
    "NoHamiltonianDecomposition",
    "NoPathDecomposition",
    "RingSchedule",
    "ScheduleError",
    "calculate_in_mapping_circle",
    "calculate_inter_node_mapping",
    "calculate_intra_node_in_mapping_two_nodes",
    "calculate_intra_node_out_mapping_two_nodes",
    "calculate_out_mapping_circle",
    "calculate_source_rank_per_iter",
    "gen_hamilton_circle",
    "gen_hamilton_circle_two_nodes",
    "gen_hamilton_path_local",
    "hamiltonian_decomposition",
    "hamiltonian_path_decomposition",
    "is_rail_aligned",
    "multinode_cycles",
    "multinode_links",
    "validate_cycles",
    "validate_paths",
    "zigzag_sequencing",
]
