"""Which ranks of a running job share a node (detection) and the process groups built from it. The
``Topology`` value type itself is pure Python and lives in ``tasp_plugin.planning``."""

from ..planning import Topology
from .detect import TOPOLOGY_ENV, detect_topology, local_world_size, resolve_topology, world_topology
from .gather import gather_objects
from .groups import ORDERS, CPGroups, build_cp_groups, build_subgroups, cp_rank_lists, subgroup_rank_lists

__all__ = ["ORDERS", "TOPOLOGY_ENV", "CPGroups", "Topology", "build_cp_groups", "build_subgroups", "cp_rank_lists",
           "detect_topology", "gather_objects", "local_world_size", "resolve_topology", "subgroup_rank_lists",
           "world_topology"]
