"""Pretrain a small GPT on megatron-core with context-parallel Hamilton attention (tasp_plugin).

Default: a tiny model, 8 CPU processes (gloo), CP = 8, Hamilton, byte-level tokens of the Python standard
library's sources. Run it directly (it launches its own processes) or under torchrun:

    python examples/megatron/pretrain_gpt.py
    python examples/megatron/pretrain_gpt.py --world-size 8 --context-parallel-size 4 --cp-comm-type zigzag
    python examples/megatron/pretrain_gpt.py --world-size 2 --context-parallel-size 2   # 2 GPUs (NCCL)
    torchrun --nproc-per-node 2 examples/megatron/pretrain_gpt.py --context-parallel-size 2
    python examples/megatron/pretrain_gpt.py --load tasp_megatron_run --train-iters 60   # continue a run
    python examples/megatron/pretrain_gpt.py --topology 2x4     # 8 processes as 2 nodes: multi-node Hamilton
    python examples/megatron/pretrain_gpt.py --reset-attention-mask   # packed documents (one per source file)

Each step every rank builds the same global batch, takes its data-parallel rows and its zigzag
context-parallel shard (tokens, positions, next-token labels, loss mask), and all-reduces gradients over
the data-parallel x context-parallel group, so the loss equals a CP = 1 run on the same data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run from a checkout without installing

from tasp_plugin.training.args import (  # noqa: E402  (after the sys.path line above)
    OneLineErrorParser,
    add_training_args,
    apply_config_file,
    batch_sizes,
    check_parallel_layout,
    check_settings,
    default_seq_length,
)

DEFAULT_CONFIG = os.path.join(REPO, "configs", "megatron", "tiny_cp8_hamilton.json")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SEQ_LENGTH_BASE = 256
# the example's own defaults; DEFAULT_CONFIG sets most of them again, and --config FILE replaces it
DEFAULTS = {
    "world_size": 8, "context_parallel_size": 8, "cp_comm_type": "hamilton", "topology": None, "device": "auto",
    "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": None, "num_attention_heads": 4, "num_query_groups": 2,
    "seq_length": None, "train_iters": 40, "micro_batch_size": None, "global_batch_size": 4, "lr": 3e-3,
    "weight_decay": 0.0, "seed": 1234, "data_path": None, "max_corpus_bytes": 4_000_000,
    "save": "tasp_megatron_run", "load": None, "save_interval": 20, "reset_attention_mask": False,
}
DERIVED = {
    "seq_length": f"{SEQ_LENGTH_BASE} rounded up to a multiple of 2 x CP: 256 for CP 1, 2, 4, 8; 258 for CP 3; "
                  "260 for CP 5",
    "ffn_hidden_size": "4 x --hidden-size",
    "micro_batch_size": "--global-batch-size / data-parallel size",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="pretrain_gpt.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.json", default=DEFAULT_CONFIG,
                        help="JSON file of settings, keys as the flags with underscores (e.g. seq_length); "
                             "flags override it; relative paths in it are relative to its directory "
                             "(default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="parameter and compute dtype (default: %(default)s)")
    add_training_args(parser, DEFAULTS, DERIVED)
    return parser


def _given(argv: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def parse_config(argv: list[str] | None = None) -> dict:
    """The run's settings: the JSON ``--config`` file, overridden by any command-line flags, with derived
    defaults filled in and the parallel layout checked. A bad setting exits with one line (code 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=DEFAULT_CONFIG)
    try:
        apply_config_file(parser, pre.parse_known_args(argv)[0].config)
    except ValueError as exc:
        parser.error(str(exc))
    cfg = vars(parser.parse_args(argv))
    from tasp_plugin.training.launch import launched

    if launched():
        world = int(os.environ["WORLD_SIZE"])
        if _given(argv, "--world-size") and cfg["world_size"] != world:
            parser.error(f"--world-size {cfg['world_size']} differs from the launcher's WORLD_SIZE {world}; leave "
                         "--world-size out under torchrun")
        cfg["world_size"] = world
    try:
        finish_config(cfg)
    except ValueError as exc:
        parser.error(str(exc))
    return cfg


def finish_config(cfg: dict) -> None:
    """Fill the derived defaults of ``cfg`` and check it; ``ValueError`` with a one-line message."""
    cp = cfg["context_parallel_size"]
    if cfg["seq_length"] is None:
        cfg["seq_length"] = default_seq_length(SEQ_LENGTH_BASE, max(cp, 1))
    if cfg["ffn_hidden_size"] is None:
        cfg["ffn_hidden_size"] = 4 * cfg["hidden_size"]
    check_parallel_layout(cfg["world_size"], cp, cfg["seq_length"])
    check_settings(cfg)
    cfg["micro_batch_size"], cfg["global_batch_size"] = batch_sizes(
        cfg["micro_batch_size"], cfg["global_batch_size"], cfg["world_size"] // cp)


# on top of tasp_plugin.training.checkpoint.FIXED_ON_RESUME (the optimizer state saved with a checkpoint
# holds its learning rate and weight decay: a changed value would be silently ignored)
FIXED = ("dtype", "lr", "weight_decay")


def run_config(cfg: dict) -> dict:
    """What a checkpoint records about its run (plain data; ``data`` identifies the corpus)."""
    return {k: v for k, v in cfg.items() if k not in ("resume", "config")}


def plan_run(cfg: dict) -> None:
    """Decide, before any worker starts, where the run begins: ``cfg["resume"]`` = the checkpoint to continue
    (``{"path", "step"}``) or None, following Megatron-LM's ``--save``/``--load`` rule, and
    ``cfg["data"]`` = the corpus's fingerprint. ``ValueError`` (one line) for a run that would overwrite
    checkpoints or continue one with different settings."""
    from tasp_plugin.training.checkpoint import (
        FIXED_ON_RESUME,
        check_resume,
        latest_checkpoint,
        plan_data_and_resume,
        read_checkpoint,
    )

    directory = plan_data_and_resume(cfg, latest_checkpoint)
    if directory is not None:
        found = latest_checkpoint(directory)
        assert found is not None
        step, path = found
        saved = read_checkpoint(path, mmap=True).get("extra", {}).get("run")
        check_resume(saved, run_config(cfg), FIXED_ON_RESUME + FIXED, step, cfg["train_iters"], directory)
        cfg["resume"] = {"path": path, "step": step}


def build_model(cfg: dict, device: torch.device) -> torch.nn.Module:
    """A GPTModel with rotary embeddings and the TASP layer spec, on Megatron's initialised groups."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    from tasp_plugin.integrations.megatron import make_rotary_cpu_safe, tasp_gpt_layer_spec

    config = TransformerConfig(
        num_layers=cfg["num_layers"], hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["ffn_hidden_size"],
        num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_query_groups"],
        context_parallel_size=cfg["context_parallel_size"], cp_comm_type=cfg["cp_comm_type"],
        hierarchical_context_parallel_sizes=cfg.get("hierarchical_context_parallel_sizes"), attention_dropout=0.0,
        hidden_dropout=0.0, use_cpu_initialization=True, cuda_graph_scope=[],
        params_dtype=DTYPES[cfg["dtype"]])
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank and for every CP size
    model = GPTModel(config, tasp_gpt_layer_spec(config), vocab_size=256, max_sequence_length=cfg["seq_length"],
                     position_embedding_type="rope")
    make_rotary_cpu_safe(model)
    return model.to(device=device, dtype=DTYPES[cfg["dtype"]])  # Megatron's torch LayerNorm ignores params_dtype


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               eod: int | None = None) -> float:
    """One optimizer step on the global batch ``tokens [batch, seq + 1]``; returns its mean token loss.
    ``eod``: the rows hold packed documents ending in this token (THD batches, ``packed_seq_params``)."""
    from megatron.core import parallel_state as ps
    from megatron.core.packed_seq_params import PackedSeqParams

    from tasp_plugin.training.batch import packed_batch_for_cp, shard_batch_for_cp

    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    if tokens.shape[0] % dp_size:
        raise ValueError(f"global batch {tokens.shape[0]} must divide by the data-parallel size {dp_size}")
    rows = tokens.chunk(dp_size)[dp_rank]
    cp_rank, cp_size = ps.get_context_parallel_rank(), ps.get_context_parallel_world_size()
    packed = None
    if eod is None:
        batch = shard_batch_for_cp(rows, cp_rank, cp_size)
        total_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
    else:
        batch = packed_batch_for_cp(rows, eod, cp_rank, cp_size)
        cu = batch["cu_seqlens"]
        longest = int((cu[1:] - cu[:-1]).max())
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                                 cu_seqlens_kv_padded=cu, max_seqlen_q=longest, max_seqlen_kv=longest)
        total_tokens = int((tokens[:, :-1] != eod).sum())  # an end-of-document token predicts nothing
    dp_cp = ps.get_data_parallel_group(with_context_parallel=True)
    optimizer.zero_grad(set_to_none=True)
    per_token = model(batch["input_ids"], batch["position_ids"], None, labels=batch["labels"],
                      packed_seq_params=packed)
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


def _schedule(cfg: dict, groups, device: torch.device) -> str:
    """The schedule line: what ``planning.resolve`` makes of --cp-comm-type on this CP group's topology."""
    from tasp_plugin.planning import Topology
    from tasp_plugin.training.report import describe_schedule

    topology = groups.topology if groups is not None else Topology.uniform(1, cfg["context_parallel_size"])
    heads, cp = cfg["num_attention_heads"], cfg["context_parallel_size"]
    shape = (cfg["micro_batch_size"], heads, cfg["num_query_groups"], cfg["seq_length"] // cp,
             cfg["hidden_size"] // heads)
    cuda = device.type == "cuda"
    return describe_schedule(cfg["cp_comm_type"], topology, cuda=cuda, shape=shape,
                             nbytes=DTYPES[cfg["dtype"]].itemsize,
                             device_name=torch.cuda.get_device_name(device) if cuda else None)


def train(cfg: dict, device: torch.device) -> list[float]:
    """The training loop on an initialised process group, for settings from ``parse_config`` and
    ``plan_run``: returns the loss of every step of the run (the checkpoint's steps included)."""
    from megatron.core import parallel_state as ps

    from tasp_plugin.integrations.megatron import initialize_tasp_groups
    from tasp_plugin.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from tasp_plugin.training.curves import save_loss_curve
    from tasp_plugin.training.data import EOD, load_corpus, token_batches
    from tasp_plugin.training.progress import Progress
    from tasp_plugin.training.report import final_line

    ps.initialize_model_parallel(context_parallel_size=cfg["context_parallel_size"],
                                 create_gloo_process_groups=False)
    # per-node and per-rail sub-groups of the CP group ("topology": e.g. "2x4" to emulate two nodes)
    groups = initialize_tasp_groups(cfg["topology"])
    rank0 = dist.get_rank() == 0
    model = build_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    start, losses = 0, []
    if cfg["resume"]:
        state = load_checkpoint(cfg["resume"]["path"], model=model, optimizer=optimizer)
        start, losses = state["step"], state["losses"]
    data = load_corpus(cfg["data_path"], cfg["max_corpus_bytes"], documents=cfg["reset_attention_mask"])
    batches = token_batches(data, cfg["seq_length"], cfg["global_batch_size"], cfg["seed"], start_step=start)
    eod = EOD if cfg["reset_attention_mask"] else None
    if rank0:
        n, cp = dist.get_world_size(), cfg["context_parallel_size"]
        params = sum(p.numel() for p in model.parameters())
        print(f"GPT {params / 1e6:.2f}M params, {cfg['num_layers']} layers | {n} ranks on {device.type} "
              f"({dist.get_backend()}): CP={cp}, DP={n // cp} | corpus {len(data) / 1e6:.1f} MB, "
              f"{cfg['global_batch_size']}x{cfg['seq_length']} tokens per step", flush=True)
        print(f"schedule: {_schedule(cfg, groups, device)}", flush=True)
        if cfg["resume"]:
            print(f"continuing from {cfg['resume']['path']} (step {start})", flush=True)
        elif cfg["load"]:
            print(f"no checkpoint in --load {cfg['load']}: starting at step 0", flush=True)
    tokens_per_step = cfg["global_batch_size"] * cfg["seq_length"]
    last = checkpoint_path(cfg["save"], cfg["train_iters"])
    with Progress(cfg["train_iters"], start=start, enabled=rank0, desc="pretrain") as progress:
        for step in range(start + 1, cfg["train_iters"] + 1):
            losses.append(train_step(model, optimizer, next(batches).to(device), eod))
            progress.update(losses[-1], tokens_per_step)
            if rank0 and (step % cfg["save_interval"] == 0 or step == cfg["train_iters"]):
                save_checkpoint(checkpoint_path(cfg["save"], step), model=model, optimizer=optimizer, step=step,
                                losses=losses, extra={"run": run_config(cfg)})
    if rank0 and losses:
        curve = os.path.join(cfg["save"], "loss.png")
        save_loss_curve(losses, curve, f"GPT on megatron-core, CP={cfg['context_parallel_size']} "
                                       f"{cfg['cp_comm_type']}")
        print(final_line(losses, cfg["train_iters"] - start, progress.tokens_per_second, progress.seconds,
                         curve=curve, checkpoint=last), flush=True)
    dist.barrier()  # every rank leaves after rank 0 has written the last checkpoint
    ps.destroy_model_parallel()
    return losses


def _run(cfg: dict) -> None:
    from tasp_plugin.training.launch import init_process_group, local_device

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    device = local_device(cfg["device"])  # before any collective: NCCL binds the current GPU
    init_process_group(device)
    try:
        train(cfg, device)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Run under torchrun when launched by it, else start ``--world-size`` local processes. Every setting
    and the checkpoint plan are checked here, before any worker starts."""
    from tasp_plugin.training.launch import gpus_for_local_ranks, launched, run_local, start_method

    cfg = parse_config(argv)
    try:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", cfg["world_size"])) if launched() else cfg["world_size"]
        gpus_for_local_ranks(cfg["device"], per_node)
        plan_run(cfg)
    except ValueError as exc:
        build_parser().error(str(exc))
    if cfg["resume"] and cfg["resume"]["step"] == cfg["train_iters"]:
        if not launched() or os.environ.get("RANK") == "0":
            print(f"{cfg['resume']['path']} is already at --train-iters {cfg['train_iters']}: nothing to train "
                  f"(pass a larger --train-iters to continue)", flush=True)
        return
    if launched():
        _run(cfg)
        return
    start = time.perf_counter()
    method = start_method()
    if method == "fork":
        # CPU only: the workers inherit the imported megatron-core instead of each spending seconds
        # re-importing it (this process has run no torch ops, so forking is safe)
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
        import megatron.core.models.gpt  # noqa: F401

        import tasp_plugin.integrations.megatron  # noqa: F401
    run_local(_run, cfg["world_size"], cfg, start_method=method)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
