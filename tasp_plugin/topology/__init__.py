"""Layer 2: what a CP group looks like (which ranks share a node) and the process groups built from it."""

from .detect import TOPOLOGY_ENV, detect_topology, resolve_topology, world_topology
from .groups import ORDERS, CPGroups, build_cp_groups, build_subgroups, cp_rank_lists, subgroup_rank_lists
from .model import Topology

__all__ = ["ORDERS", "TOPOLOGY_ENV", "CPGroups", "Topology", "build_cp_groups", "build_subgroups", "cp_rank_lists",
           "detect_topology", "resolve_topology", "subgroup_rank_lists", "world_topology"]
