"""``initialize``: ``deepspeed.initialize`` with a ``"context_parallel"`` config section."""

from __future__ import annotations

import copy
from typing import Any

from ..attention import install_context_parallel
from .config import parse_config
from .groups import ContextParallelMPU, build_groups

__all__ = ["initialize", "zero_cp_loss_scale"]

_DEFAULT_PORT = 29500


def zero_cp_loss_scale(zero_stage: int, cp_size: int) -> float:
    """Factor on each rank's loss share that makes DeepSpeed's reduced gradient the full-sequence one.

    Each CP rank's loss is its share of the full-sequence loss (the shares sum to it), so the right
    gradient is the sum over CP ranks. DeepSpeed 0.19 divides the all-reduce over the DP x CP group by
    the DP size only in ZeRO 0-2 (a sum over CP ranks), but by the whole group size in ZeRO-3's
    reduce-scatter (a mean over CP ranks), which the factor ``cp_size`` undoes.
    """
    return float(cp_size) if zero_stage == 3 else 1.0


def _load_config(args: Any, config: Any, config_params: Any) -> tuple[dict, Any]:
    """The DeepSpeed config as a dict (from ``config``, ``config_params`` or ``args.deepspeed_config``),
    and ``args`` with its config path cleared so that DeepSpeed takes the dict we pass."""
    from deepspeed.runtime.tensor_parallel.init_utils import load_ds_config

    config = config if config is not None else config_params
    path = getattr(args, "deepspeed_config", None)
    if path is not None:
        if config is not None:
            raise ValueError("pass the DeepSpeed config either as args.deepspeed_config or as config=, not both")
        config, args = path, copy.copy(args)
        args.deepspeed_config = None
    if config is None:
        raise ValueError("no DeepSpeed config: pass config= (a dict or a JSON path) or args.deepspeed_config")
    return load_ds_config(config), args


def _partition_zero3(model: Any, ds_config: dict, mpu: ContextParallelMPU) -> None:
    """Partition ZeRO-3 parameters over the DP x CP group. Left to itself, DeepSpeed partitions them over
    ``mpu.get_data_parallel_group()`` (DP only), so the CP ranks' gradients would never be reduced."""
    import deepspeed
    import torch.distributed as dist

    params = list(model.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        group = mpu.get_sequence_data_parallel_group()
        if any(dist.get_world_size(p.ds_process_group) != dist.get_world_size(group) for p in params):
            raise ValueError("the model was partitioned by deepspeed.zero.Init over a group smaller than the "
                             "DP x CP group; build it under zero.Init(data_parallel_group=None) (all ranks)")
        return
    offload = ds_config.get("zero_optimization", {}).get("offload_param") or {}
    deepspeed.zero.Init(module=model, data_parallel_group=mpu.get_sequence_data_parallel_group(),
                        config_dict_or_path=ds_config, mpu=mpu, remote_device=offload.get("device"),
                        pin_memory=offload.get("pin_memory", False))


def _scale_loss(engine: Any, factor: float) -> None:
    """Multiply the loss by ``factor`` in ``engine.backward`` and ``engine.scale`` (manual backward)."""
    backward, scale = engine.backward, engine.scale

    def scaled_backward(loss, *args, **kwargs):
        return backward(loss * factor, *args, **kwargs) / factor

    def scaled_scale(loss):
        return scale(loss * factor)

    engine.backward, engine.scale = scaled_backward, scaled_scale


def initialize(args: Any = None, model: Any = None, optimizer: Any = None, model_parameters: Any = None,
               training_data: Any = None, lr_scheduler: Any = None, distributed_port: int = _DEFAULT_PORT,
               mpu: Any = None, dist_init_required: bool | None = None, collate_fn: Any = None,
               config: Any = None, mesh_param: Any = None, config_params: Any = None) -> tuple:
    """``deepspeed.initialize`` plus context parallelism from the config's ``"context_parallel"`` section.

    Builds the CP, DP and DP x CP groups, installs them as the default of TASP attention (``TASPAttention``
    and the Hugging Face ``"tasp"`` implementation), passes DeepSpeed an ``mpu`` describing them, and
    makes ``engine.backward(loss)`` produce full-sequence gradients in every ZeRO stage, where ``loss`` is
    this rank's share (the CP ranks' losses sum to the full-sequence loss). Returns
    ``(engine, optimizer, training_dataloader, lr_scheduler)`` like DeepSpeed; ``engine.mpu`` is the mpu.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if mpu is not None or mesh_param is not None:
        raise ValueError("mpu and mesh_param must be None: initialize builds the CP/DP groups from the "
                         '"context_parallel" config section')
    ds_config, args = _load_config(args, config, config_params)
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                               distributed_port=distributed_port, dist_init_required=dist_init_required)
    import torch.distributed as dist

    cp, ds_config = parse_config(ds_config, dist.get_world_size())
    groups = build_groups(cp.size, cp.topology)
    install_context_parallel(groups.links, cp.algorithm, cp.backend, cp.ulysses_size)
    ds_mpu = ContextParallelMPU(groups)
    if ds_config.get("zero_optimization", {}).get("stage", 0) == 3 and model is not None:
        _partition_zero3(model, ds_config, ds_mpu)
    engine, engine_optimizer, loader, scheduler = deepspeed.initialize(
        args=args, model=model, optimizer=optimizer, model_parameters=model_parameters,
        training_data=training_data, lr_scheduler=lr_scheduler, distributed_port=distributed_port,
        mpu=ds_mpu, dist_init_required=dist_init_required, collate_fn=collate_fn,
        config=ds_config)
    factor = zero_cp_loss_scale(engine.zero_optimization_stage(), cp.size)
    if factor != 1.0:
        _scale_loss(engine, factor)
    return engine, engine_optimizer, loader, scheduler
