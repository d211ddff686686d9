"""Pretrain a small GPT on megatron-core with context-parallel Hamilton attention (tasp_plugin).

Default: a tiny model, 8 CPU processes (gloo), CP = 8, Hamilton, byte-level tokens of the Python standard
library's sources. Run it directly (it launches its own processes) or under torchrun:

    python examples/megatron/pretrain_gpt.py
    python examples/megatron/pretrain_gpt.py --context-parallel-size 4 --world-size 8 --cp-comm-type zigzag
    torchrun --nproc-per-node 8 examples/megatron/pretrain_gpt.py          # NCCL when GPUs are present
    python examples/megatron/pretrain_gpt.py --resume tasp_megatron_run/ckpt_step000020.pt
    python examples/megatron/pretrain_gpt.py --topology 2x4     # 8 processes as 2 nodes: multi-node Hamilton

Each step every rank builds the same global batch, takes its data-parallel rows and its zigzag
context-parallel shard (tokens, positions, next-token labels, loss mask), and all-reduces gradients over
the data-parallel x context-parallel group, so the loss equals a CP = 1 run on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run from a checkout without installing
DEFAULT_CONFIG = os.path.join(REPO, "configs", "megatron", "tiny_cp8_hamilton.json")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# command-line flag -> config key; every flag overrides the JSON config when given
FLAGS = {
    "world_size": int, "context_parallel_size": int, "cp_comm_type": str, "num_layers": int,
    "hidden_size": int, "num_attention_heads": int, "num_query_groups": int, "ffn_hidden_size": int,
    "seq_length": int, "global_batch_size": int, "train_steps": int, "lr": float, "weight_decay": float,
    "seed": int, "data_path": str, "max_corpus_bytes": int, "save_interval": int, "out_dir": str,
    "dtype": str, "device": str, "resume": str, "topology": str,
}


def parse_config(argv: list[str] | None = None) -> dict:
    """The run's settings: the JSON ``--config`` file, overridden by any command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="JSON file of settings (keys as the flags)")
    for key, kind in FLAGS.items():
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=None)
    args = parser.parse_args(argv)
    with open(args.config) as f:
        cfg = {"dtype": "float32", "device": "auto", "resume": None, "topology": None, **json.load(f)}
    unknown = set(cfg) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {args.config}; allowed: {sorted(FLAGS)}")
    cfg.update({k: v for k, v in vars(args).items() if k in FLAGS and v is not None})
    if cfg["dtype"] not in DTYPES:
        raise ValueError(f"dtype {cfg['dtype']!r} is not one of {sorted(DTYPES)}")
    if cfg["world_size"] % cfg["context_parallel_size"]:
        raise ValueError(f"world_size {cfg['world_size']} must be a multiple of context_parallel_size "
                         f"{cfg['context_parallel_size']}")
    return cfg


def build_model(cfg: dict, device: torch.device) -> torch.nn.Module:
    """A GPTModel with rotary embeddings and the TASP layer spec, on Megatron's initialised groups."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    from tasp_plugin.integrations.megatron import make_rotary_cpu_safe, tasp_gpt_layer_spec

    config = TransformerConfig(
        num_layers=cfg["num_layers"], hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["ffn_hidden_size"],
        num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_query_groups"],
        context_parallel_size=cfg["context_parallel_size"], cp_comm_type=cfg["cp_comm_type"],
        attention_dropout=0.0, hidden_dropout=0.0, use_cpu_initialization=True, cuda_graph_scope=[],
        params_dtype=DTYPES[cfg["dtype"]])
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank and for every CP size
    model = GPTModel(config, tasp_gpt_layer_spec(config), vocab_size=256, max_sequence_length=cfg["seq_length"],
                     position_embedding_type="rope")
    make_rotary_cpu_safe(model)
    return model.to(device=device, dtype=DTYPES[cfg["dtype"]])  # Megatron's torch LayerNorm ignores params_dtype


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    """One optimizer step on the global batch ``tokens [batch, seq + 1]``; returns its mean token loss."""
    from megatron.core import parallel_state as ps

    from tasp_plugin.training.batch import shard_batch_for_cp

    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    if tokens.shape[0] % dp_size:
        raise ValueError(f"global batch {tokens.shape[0]} must divide by the data-parallel size {dp_size}")
    rows = tokens.chunk(dp_size)[dp_rank]
    batch = shard_batch_for_cp(rows, ps.get_context_parallel_rank(), ps.get_context_parallel_world_size())
    dp_cp = ps.get_data_parallel_group(with_context_parallel=True)
    total_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    optimizer.zero_grad(set_to_none=True)
    per_token = model(batch["input_ids"], batch["position_ids"], None, labels=batch["labels"])
    loss = (per_token * batch["loss_mask"].to(per_token.dtype)).sum() / total_tokens
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce per step, not one per tensor
    dist.all_reduce(flat, group=dp_cp)
    for g, reduced in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(reduced.view_as(g))
    optimizer.step()
    reported = loss.detach().clone()
    dist.all_reduce(reported, group=dp_cp)
    return reported.item()


def _checkpoint_path(cfg: dict, step: int) -> str:
    return os.path.join(cfg["out_dir"], f"ckpt_step{step:06d}.pt")


def train(cfg: dict, device: torch.device) -> list[float]:
    """The training loop on an initialised process group: returns the loss of every step so far."""
    from megatron.core import parallel_state as ps

    from tasp_plugin.integrations.megatron import initialize_tasp_groups
    from tasp_plugin.training.checkpoint import load_checkpoint, save_checkpoint
    from tasp_plugin.training.curves import save_loss_curve
    from tasp_plugin.training.data import load_corpus, token_batches
    from tasp_plugin.training.progress import Progress

    ps.initialize_model_parallel(context_parallel_size=cfg["context_parallel_size"],
                                 create_gloo_process_groups=False)
    # per-node and per-rail sub-groups of the CP group ("topology": e.g. "2x4" to emulate two nodes)
    initialize_tasp_groups(cfg["topology"])
    rank0 = dist.get_rank() == 0
    model = build_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start, losses = 0, []
    if cfg["resume"]:
        state = load_checkpoint(cfg["resume"], model=model, optimizer=optimizer)
        start, losses = state["step"], state["losses"]
    data = load_corpus(cfg["data_path"], cfg["max_corpus_bytes"])
    batches = token_batches(data, cfg["seq_length"], cfg["global_batch_size"], cfg["seed"], start_step=start)
    if rank0:
        n, cp = dist.get_world_size(), cfg["context_parallel_size"]
        params = sum(p.numel() for p in model.parameters())
        print(f"GPT {params / 1e6:.2f}M params, {cfg['num_layers']} layers | {n} ranks on {device.type} "
              f"({dist.get_backend()}): CP={cp} ({cfg['cp_comm_type']}), DP={n // cp} | corpus "
              f"{len(data) / 1e6:.1f} MB, {cfg['global_batch_size']}x{cfg['seq_length']} tokens per step"
              + (f" | resumed at step {start}" if start else ""), flush=True)
    tokens_per_step = cfg["global_batch_size"] * cfg["seq_length"]
    with Progress(cfg["train_steps"], start=start, enabled=rank0, desc="pretrain") as progress:
        for step in range(start + 1, cfg["train_steps"] + 1):
            losses.append(train_step(model, optimizer, next(batches).to(device)))
            progress.update(losses[-1], tokens_per_step)
            if rank0 and (step % cfg["save_interval"] == 0 or step == cfg["train_steps"]):
                save_checkpoint(_checkpoint_path(cfg, step), model=model, optimizer=optimizer, step=step,
                                losses=losses, extra={"config": cfg})
    if rank0 and losses:
        curve = os.path.join(cfg["out_dir"], "loss.png")
        save_loss_curve(losses, curve, f"GPT on megatron-core, CP={cfg['context_parallel_size']} "
                                       f"{cfg['cp_comm_type']}")
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} | curve {curve} | checkpoint "
              f"{_checkpoint_path(cfg, cfg['train_steps'])}", flush=True)
    ps.destroy_model_parallel()
    return losses


def _device(cfg: dict, local_rank: int) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() > local_rank else "cpu"
    if want == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    torch.set_num_threads(1)
    return torch.device("cpu")


def _run(cfg: dict) -> None:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    device = _device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        train(cfg, device)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Run under torchrun when launched by it, else spawn ``world_size`` local processes."""
    cfg = parse_config(argv)
    from tasp_plugin.training.launch import launched, run_local

    if launched():
        cfg["world_size"] = int(os.environ["WORLD_SIZE"])
        _run(cfg)
        return
    start = time.perf_counter()
    # fork where the OS has it: the workers inherit the imported megatron-core instead of each spending
    # seconds re-importing it (this process has run no torch ops or CUDA yet, so forking is safe)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if method == "fork":
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
        import megatron.core.models.gpt  # noqa: F401

        import tasp_plugin.integrations.megatron  # noqa: F401
    run_local(_run, cfg["world_size"], cfg, start_method=method)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
