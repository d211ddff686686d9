"""Process groups for context parallelism (CP) x data parallelism (DP), and the ``mpu`` object through
which DeepSpeed learns about them.

Ranks are laid out the way DeepSpeed orders its sequence-parallel groups: each CP group is a block of
``cp_size`` consecutive ranks, and rank ``r`` has CP rank ``r % cp_size`` and DP rank ``r // cp_size``.
The CP groups and their per-node and per-rail sub-groups come from ``tasp_plugin.topology``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...topology import CPGroups, Topology, build_cp_groups

__all__ = ["ContextParallelMPU", "ParallelGroups", "build_groups"]


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's CP group with its topology-aware sub-groups (``links``), DP group (same CP rank across
    CP groups), DP x CP group (every rank of the replica set) and its own single-rank group (there is no
    tensor or pipeline parallelism)."""

    cp_size: int
    links: CPGroups
    dp: dist.ProcessGroup
    dp_cp: dist.ProcessGroup
    single: dist.ProcessGroup
    dp_ranks: tuple[int, ...]

    @property
    def cp(self) -> dist.ProcessGroup:
        return self.links.cp


def build_groups(cp_size: int, topology: Topology | str | None = None) -> ParallelGroups:
    """Create the groups on every rank (a collective: all ranks must call it with the same ``cp_size``).
    ``topology`` describes the whole job (default: ``$TASP_TOPOLOGY`` or the launcher)."""
    if not dist.is_initialized():
        raise ValueError("torch.distributed is not initialised; call deepspeed.init_distributed() first")
    world, rank = dist.get_world_size(), dist.get_rank()
    if cp_size < 1 or world % cp_size:
        raise ValueError(f"cp_size {cp_size} must be a positive divisor of the world size {world}")
    links = build_cp_groups(cp_size, order="deepspeed", topology=topology)
    # every rank creates every group, in the same order, and keeps its own (rank r is in DP group r % cp_size)
    dp_lists = [list(range(j, world, cp_size)) for j in range(cp_size)]
    dp_groups = [dist.new_group(ranks) for ranks in dp_lists]
    dp_cp = dist.new_group(list(range(world)))
    single_groups = [dist.new_group([r]) for r in range(world)]
    return ParallelGroups(cp_size=cp_size, links=links, dp=dp_groups[rank % cp_size], dp_cp=dp_cp,
                          single=single_groups[rank], dp_ranks=tuple(dp_lists[rank % cp_size]))


class ContextParallelMPU:
    """The ``mpu`` handed to ``deepspeed.initialize``: DeepSpeed reduces gradients and partitions ZeRO
    state over ``get_sequence_data_parallel_group`` (DP x CP), sizes batches by the DP world size, and
    sees model parallelism of size 1 (a single-rank group), so gradient norms are not summed over CP."""

    def __init__(self, groups: ParallelGroups) -> None:
        self.groups = groups

    def get_sequence_parallel_group(self) -> dist.ProcessGroup:
        return self.groups.cp

    def get_sequence_parallel_world_size(self) -> int:
        return dist.get_world_size(self.groups.cp)

    def get_sequence_parallel_rank(self) -> int:
        return dist.get_rank(self.groups.cp)

    def get_sequence_data_parallel_group(self) -> dist.ProcessGroup:
        return self.groups.dp_cp

    def get_sequence_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.groups.dp_cp)

    def get_sequence_data_parallel_rank(self) -> int:
        return dist.get_rank(self.groups.dp_cp)

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.groups.dp

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.groups.dp)

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.groups.dp)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.groups.dp_ranks)

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.groups.single

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank

    def get_tensor_model_parallel_src_rank(self) -> int:
        return dist.get_rank()

    get_pipeline_model_parallel_group = get_model_parallel_group
    get_pipeline_model_parallel_world_size = get_model_parallel_world_size
    get_pipeline_model_parallel_rank = get_model_parallel_rank

    def reduce_loss(self, loss_share: torch.Tensor) -> torch.Tensor:
        """The full-sequence loss for logging: the CP ranks' shares summed, averaged over DP (no grad)."""
        total = loss_share.detach().clone().float()
        dist.all_reduce(total, group=self.groups.dp_cp)
        return total / self.get_data_parallel_world_size()
