"""Pretrain a tiny Llama with DeepSpeed and context-parallel Hamilton attention (tasp_plugin).

Default: a randomly initialised Llama with GQA (Hugging Face transformers, ``attn_implementation="tasp"``),
ZeRO-1, 8 CPU processes (gloo) forming one CP = 8 Hamilton group, byte-level tokens of the Python standard
library's sources. Run it directly (it launches its own processes) or under a launcher:

    python examples/deepspeed/pretrain_llama.py
    python examples/deepspeed/pretrain_llama.py --deepspeed-config configs/deepspeed/cp4_zigzag_dp2_zero2.json
    python examples/deepspeed/pretrain_llama.py --world-size 8 --context-parallel-size 4 --zero-stage 3
    python examples/deepspeed/pretrain_llama.py --world-size 2 --context-parallel-size 2   # 2 GPUs (NCCL)
    torchrun --nproc-per-node 2 examples/deepspeed/pretrain_llama.py --context-parallel-size 2
    python examples/deepspeed/pretrain_llama.py --load tasp_deepspeed_run --train-iters 40   # continue a run

The DeepSpeed JSON (``--deepspeed-config``) carries the ``"context_parallel"`` section that
``tasp_plugin.integrations.deepspeed.initialize`` reads; the flags override it. Each step every rank builds
the same global batch, takes its data-parallel rows and its zigzag shard (labels shifted before sharding);
each rank's loss is its share of the mean token loss, so the logged loss and the gradients equal a CP = 1
run on the same data.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import sys
import time
import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run from a checkout without installing

from tasp_plugin.training.args import (  # noqa: E402  (after the sys.path line above)
    OneLineErrorParser,
    add_training_args,
    algorithm_of,
    batch_sizes,
    check_parallel_layout,
    check_settings,
    default_seq_length,
    read_json_object,
)

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

DEFAULT_CONFIG = os.path.join(REPO, "configs", "deepspeed", "cp8_hamilton_zero1.json")
SEQ_LENGTH_BASE = 512
DEFAULTS = {
    "world_size": None, "context_parallel_size": None, "cp_comm_type": None, "topology": None, "device": "auto",
    "num_layers": 2, "hidden_size": 128, "ffn_hidden_size": None, "num_attention_heads": 8, "num_query_groups": 2,
    "seq_length": None, "train_iters": 30, "micro_batch_size": None, "global_batch_size": None, "lr": None,
    "weight_decay": None, "seed": 0, "data_path": None, "max_corpus_bytes": 4_000_000,
    "save": "tasp_deepspeed_run", "load": None, "save_interval": 10, "reset_attention_mask": False,
}
DERIVED = {
    "world_size": "CP size x the DeepSpeed config's data-parallel size, train_batch_size / "
                  "train_micro_batch_size_per_gpu (1 without train_batch_size)",
    "context_parallel_size": 'the DeepSpeed config\'s "context_parallel.size"',
    "cp_comm_type": 'the DeepSpeed config\'s "context_parallel.algorithm"',
    "topology": 'the DeepSpeed config\'s "context_parallel.topology", else $TASP_TOPOLOGY or the launcher',
    "seq_length": f"{SEQ_LENGTH_BASE} rounded up to a multiple of 2 x CP",
    "ffn_hidden_size": "2 x --hidden-size",
    "micro_batch_size": "the DeepSpeed config's train_micro_batch_size_per_gpu",
    "global_batch_size": "micro batch x data-parallel size",
    "lr": "the DeepSpeed config's optimizer lr",
    "weight_decay": "the DeepSpeed config's optimizer weight_decay",
}
# the classes DeepSpeed 0.19 pickles into its checkpoints besides tensors and plain data (checked before
# DeepSpeed loads a checkpoint, which it does with weights_only=False)
DEEPSPEED_PICKLED = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.utils.tensor_fragment.fragment_address")
# on top of FIXED_ON_RESUME: ZeRO shards its state per rank, and the optimizer state holds lr and weight decay
FIXED = ("zero_stage", "world_size", "lr", "weight_decay")
RUN_FILE = "tasp_run.json"  # next to DeepSpeed's files in each checkpoint's tag directory


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="pretrain_llama.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepspeed-config", metavar="FILE.json", default=DEFAULT_CONFIG,
                        help="DeepSpeed JSON with a context_parallel section (default: %(default)s)")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="ZeRO stage (default: the DeepSpeed config's zero_optimization.stage)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher
    add_training_args(parser, DEFAULTS, DERIVED)
    return parser


def _given(argv: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def parse_config(argv: list[str] | None = None) -> dict:
    """The run's settings: flags over the DeepSpeed JSON, derived defaults filled in, the parallel layout and
    batch sizes checked; ``cfg["ds_config"]`` is the DeepSpeed config to run. A bad setting exits with one
    line (code 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    cfg = vars(parser.parse_args(argv))
    cfg.pop("local_rank")
    from tasp_plugin.training.launch import launched

    if launched():
        world = int(os.environ["WORLD_SIZE"])
        if _given(argv, "--world-size") and cfg["world_size"] != world:
            parser.error(f"--world-size {cfg['world_size']} differs from the launcher's WORLD_SIZE {world}; leave "
                         "--world-size out under a launcher")
        cfg["world_size"] = world
    try:
        finish_config(cfg)
    except ValueError as exc:
        parser.error(str(exc))
    return cfg


def finish_config(cfg: dict) -> None:
    """Merge the flags into the DeepSpeed config (``cfg["ds_config"]``), fill the derived defaults and check
    everything; ``ValueError`` with a one-line message."""
    from tasp_plugin.integrations.deepspeed.config import parse_config as check_ds_config

    path = cfg["deepspeed_config"]
    ds = read_json_object(path, "--deepspeed-config")
    section = ds.setdefault("context_parallel", {})
    if not isinstance(section, dict):
        raise ValueError(f'--deepspeed-config {path}: "context_parallel" must be an object')
    for key, flag_key, convert in (("size", "context_parallel_size", None), ("algorithm", "cp_comm_type", algorithm_of),
                                   ("topology", "topology", None)):
        if cfg[flag_key] is not None:
            section[key] = convert(cfg[flag_key]) if convert else cfg[flag_key]
    cfg["context_parallel_size"] = cp = section.setdefault("size", 1)
    cfg["cp_comm_type"] = section.setdefault("algorithm", "hamilton")
    cfg["topology"] = section.get("topology")
    if not isinstance(cp, int) or cp < 1:
        raise ValueError(f'"context_parallel.size" in {path} must be a positive integer, got {cp!r}')
    zero = ds.setdefault("zero_optimization", {})
    if cfg["zero_stage"] is not None:
        zero["stage"] = cfg["zero_stage"]
    cfg["zero_stage"] = zero.get("stage", 0)
    if ds.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(f"--deepspeed-config {path}: gradient_accumulation_steps must be 1 (the example makes one "
                         "optimizer step per batch)")
    config_micro, config_global = ds.get("train_micro_batch_size_per_gpu"), ds.get("train_batch_size")
    if cfg["world_size"] is None:  # the layout the config names: CP x (train_batch_size / micro batch)
        divides = config_micro and config_global and config_global % config_micro == 0
        cfg["world_size"] = cp * (config_global // config_micro if divides else 1)
    micro, global_ = cfg["micro_batch_size"], cfg["global_batch_size"]
    if micro is None and global_ is None:  # a batch flag replaces both of the config's batch settings
        micro, global_ = config_micro, config_global
    if cfg["seq_length"] is None:
        cfg["seq_length"] = default_seq_length(SEQ_LENGTH_BASE, cp)
    if cfg["ffn_hidden_size"] is None:
        cfg["ffn_hidden_size"] = 2 * cfg["hidden_size"]
    check_parallel_layout(cfg["world_size"], cp, cfg["seq_length"])
    try:
        micro, global_ = batch_sizes(micro, global_, cfg["world_size"] // cp)
    except ValueError as exc:
        raise ValueError(f"{exc} (train_micro_batch_size_per_gpu and train_batch_size of {path} count as "
                         "--micro-batch-size and --global-batch-size)") from None
    cfg["micro_batch_size"], cfg["global_batch_size"] = micro, global_
    ds.update(train_micro_batch_size_per_gpu=micro, train_batch_size=global_, gradient_accumulation_steps=1)
    params = ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True}}).setdefault("params", {})
    for key in ("lr", "weight_decay"):
        if cfg[key] is not None:
            params[key] = cfg[key]
        cfg[key] = params.get(key)
    check_settings(cfg)
    check_ds_config(ds, cfg["world_size"])
    cfg["ds_config"] = ds


def run_config(cfg: dict) -> dict:
    """What a checkpoint records about its run (plain data; ``data`` identifies the corpus)."""
    return {k: v for k, v in cfg.items() if k != "resume"}


def _tag(step: int) -> str:
    return f"step{step:06d}"


def latest_tag(directory: str) -> tuple[int, str] | None:
    """``(step, tag)`` of the checkpoint DeepSpeed's ``latest`` file names in ``directory`` (step -1 for a tag
    this example did not write), or None."""
    try:
        with open(os.path.join(directory, "latest"), encoding="utf-8") as fh:
            tag = fh.read().strip()
    except OSError:
        return None
    match = re.fullmatch(r"step(\d+)", tag)
    return (int(match.group(1)) if match else -1), tag


def plan_run(cfg: dict) -> None:
    """Decide, before any worker starts, where the run begins: ``cfg["resume"]`` = ``{"dir", "tag", "step"}``
    of the checkpoint to continue, or None (Megatron-LM's ``--save``/``--load`` rule), and ``cfg["data"]`` =
    the corpus's fingerprint. ``ValueError`` (one line) for a run that would overwrite checkpoints, continue
    one with different settings, or load a checkpoint that pickles more than DeepSpeed's data classes."""
    from tasp_plugin.training.checkpoint import (
        FIXED_ON_RESUME,
        check_resume,
        check_safe_to_load,
        plan_data_and_resume,
    )

    directory = plan_data_and_resume(cfg, latest_tag)
    if directory is None:
        return
    found = latest_tag(directory)
    assert found is not None
    step, tag = found
    saved = None
    if os.path.isfile(os.path.join(directory, tag, RUN_FILE)):
        with open(os.path.join(directory, tag, RUN_FILE), encoding="utf-8") as fh:
            saved = json.load(fh).get("run")
    check_resume(saved, run_config(cfg), FIXED_ON_RESUME + FIXED, step, cfg["train_iters"], directory)
    check_safe_to_load(sorted(glob.glob(os.path.join(directory, tag, "*.pt"))), DEEPSPEED_PICKLED)
    cfg["resume"] = {"dir": directory, "tag": tag, "step": step}


def build_model(cfg: dict) -> torch.nn.Module:
    """A random-init Llama (GQA) over byte tokens using the registered "tasp" attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasp_plugin.integrations.hf import ATTN_IMPLEMENTATION, register_tasp_attention
    from tasp_plugin.training.data import ByteTokenizer

    register_tasp_attention()
    config = LlamaConfig(vocab_size=ByteTokenizer().vocab_size, hidden_size=cfg["hidden_size"],
                         intermediate_size=cfg["ffn_hidden_size"], num_hidden_layers=cfg["num_layers"],
                         num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_query_groups"],
                         max_position_embeddings=cfg["seq_length"], attn_implementation=ATTN_IMPLEMENTATION)
    torch.manual_seed(cfg["seed"])  # identical initial weights on every rank and for every CP size
    return LlamaForCausalLM(config)


def train_step(engine: DeepSpeedEngine, tokens: torch.Tensor, rows_per_rank: int, eod: int | None = None) -> float:
    """One optimizer step on the global batch ``tokens [batch, seq + 1]``; returns its mean token loss.
    ``eod``: the rows hold packed documents ending in this token (one packed row per rank, passed to the
    model with transformers' ``cu_seq_lens_q``/``cu_seq_lens_k``)."""
    from tasp_plugin.training.batch import packed_batch_for_cp, shard_batch_for_cp

    mpu = engine.mpu
    rows = tokens[mpu.get_data_parallel_rank() * rows_per_rank:][:rows_per_rank]
    cp_rank, cp_size = mpu.get_sequence_parallel_rank(), mpu.get_sequence_parallel_world_size()
    if eod is None:
        batch = {k: v.to(engine.device) for k, v in shard_batch_for_cp(rows, cp_rank, cp_size).items()}
        documents = {}
    else:
        batch = {k: v.to(engine.device) for k, v in packed_batch_for_cp(rows, eod, cp_rank, cp_size).items()}
        documents = {"cu_seq_lens_q": batch["cu_seqlens"], "cu_seq_lens_k": batch["cu_seqlens"]}
    logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **documents).logits
    per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                                  reduction="none")
    count = batch["loss_mask"].sum()
    dist.all_reduce(count, group=mpu.get_sequence_parallel_group())
    share = (per_token * batch["loss_mask"].flatten()).sum() / count  # the CP ranks' shares sum to the mean
    engine.backward(share)
    engine.step()
    return mpu.reduce_loss(share).item()


def _schedule(cfg: dict, engine: DeepSpeedEngine) -> str:
    """The schedule line: what ``planning.resolve`` makes of the algorithm on this CP group's topology."""
    from tasp_plugin.integrations.attention import installed_context_parallel
    from tasp_plugin.planning import Topology
    from tasp_plugin.training.report import describe_schedule

    group = installed_context_parallel().group
    cp = cfg["context_parallel_size"]
    topology = getattr(group, "topology", None) or Topology.uniform(1, cp)
    heads = cfg["num_attention_heads"]
    shape = (cfg["micro_batch_size"], heads, cfg["num_query_groups"], cfg["seq_length"] // cp,
             cfg["hidden_size"] // heads)
    cuda = engine.device.type == "cuda"
    bf16 = cfg["ds_config"].get("bf16", {}).get("enabled") or cfg["ds_config"].get("fp16", {}).get("enabled")
    return describe_schedule(cfg["cp_comm_type"], topology, cuda=cuda, shape=shape, nbytes=2 if bf16 else 4,
                             device_name=torch.cuda.get_device_name(engine.device) if cuda else None)


def _save(engine: DeepSpeedEngine, cfg: dict, step: int, losses: list[float]) -> None:
    """A DeepSpeed checkpoint tagged ``stepNNNNNN`` in --save, with the run's settings in ``tasp_run.json``
    (written first: DeepSpeed's ``latest`` file, written last, only ever names a tag that has it)."""
    tag = _tag(step)
    if dist.get_rank() == 0:
        os.makedirs(os.path.join(cfg["save"], tag), exist_ok=True)
        path = os.path.join(cfg["save"], tag, RUN_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump({"step": step, "run": run_config(cfg)}, fh, indent=1)
        os.replace(path + ".tmp", path)
    engine.save_checkpoint(cfg["save"], tag=tag, client_state={"step": step, "losses": losses})


def train(cfg: dict) -> list[float]:
    """The training loop on an initialised process group, for settings from ``parse_config`` and
    ``plan_run``: returns the loss of every step of the run (the checkpoint's steps included)."""
    from tasp_plugin.integrations.deepspeed import initialize
    from tasp_plugin.training.curves import save_loss_curve
    from tasp_plugin.training.data import EOD, load_corpus, token_batches
    from tasp_plugin.training.progress import Progress
    from tasp_plugin.training.report import final_line

    model = build_model(cfg)
    engine, *_ = initialize(model=model, model_parameters=model.parameters(), config=copy.deepcopy(cfg["ds_config"]))
    rank0 = dist.get_rank() == 0
    start, losses = 0, []
    if cfg["resume"]:
        path, state = engine.load_checkpoint(cfg["resume"]["dir"], tag=cfg["resume"]["tag"])
        if path is None:
            raise ValueError(f"DeepSpeed could not load {cfg['resume']['tag']} from {cfg['resume']['dir']}")
        start, losses = state["step"], list(state["losses"])
    rows_per_rank = engine.train_micro_batch_size_per_gpu()
    dp, cp = engine.mpu.get_data_parallel_world_size(), engine.mpu.get_sequence_parallel_world_size()
    data = load_corpus(cfg["data_path"], cfg["max_corpus_bytes"], documents=cfg["reset_attention_mask"])
    batches = token_batches(data, cfg["seq_length"], rows_per_rank * dp, cfg["seed"], start_step=start)
    eod = EOD if cfg["reset_attention_mask"] else None
    if rank0:
        params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
        print(f"Llama {params / 1e6:.2f}M params, {cfg['num_layers']} layers, {cfg['num_attention_heads']}/"
              f"{cfg['num_query_groups']} heads | {dist.get_world_size()} ranks on {engine.device.type} "
              f"({dist.get_backend()}): CP={cp}, DP={dp}, ZeRO-{engine.zero_optimization_stage()} | corpus "
              f"{len(data) / 1e6:.1f} MB, {rows_per_rank * dp}x{cfg['seq_length']} tokens per step", flush=True)
        print(f"schedule: {_schedule(cfg, engine)}", flush=True)
        if cfg["resume"]:
            print(f"continuing from {os.path.join(cfg['resume']['dir'], cfg['resume']['tag'])} (step {start})",
                  flush=True)
        elif cfg["load"]:
            print(f"no checkpoint in --load {cfg['load']}: starting at step 0", flush=True)
    with Progress(cfg["train_iters"], start=start, enabled=rank0, desc="pretrain") as progress:
        for step in range(start + 1, cfg["train_iters"] + 1):
            losses.append(train_step(engine, next(batches), rows_per_rank, eod))
            progress.update(losses[-1], rows_per_rank * dp * cfg["seq_length"])
            if step % cfg["save_interval"] == 0 or step == cfg["train_iters"]:
                _save(engine, cfg, step, losses)
    if rank0 and losses:
        curve = os.path.join(cfg["save"], "loss.png")
        save_loss_curve(losses, curve, f"Llama on DeepSpeed ZeRO-{engine.zero_optimization_stage()}, CP={cp} "
                                       f"{cfg['cp_comm_type']}")
        print(final_line(losses, cfg["train_iters"] - start, progress.tokens_per_second, progress.seconds,
                         curve=curve, checkpoint=os.path.join(cfg["save"], _tag(cfg["train_iters"]))), flush=True)
    dist.barrier()  # every rank leaves after the last checkpoint is complete
    return losses


def _run(cfg: dict) -> None:
    from tasp_plugin.training.launch import local_device

    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.")
    device = local_device(cfg["device"])  # before any collective: NCCL binds the current GPU
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.utils.logger.setLevel("WARNING")
    deepspeed.init_distributed()  # on GPUs it passes device_id=cuda:LOCAL_RANK to init_process_group itself
    try:
        train(cfg)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Run under a launcher when started by one, else start ``--world-size`` local processes. Every setting
    and the checkpoint plan are checked here, before any worker starts."""
    from tasp_plugin.training.launch import gpus_for_local_ranks, launched, run_local

    cfg = parse_config(argv)
    try:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", cfg["world_size"])) if launched() else cfg["world_size"]
        gpus_for_local_ranks(cfg["device"], per_node)
        plan_run(cfg)
    except ValueError as exc:
        build_parser().error(str(exc))
    if cfg["resume"] and cfg["resume"]["step"] == cfg["train_iters"]:
        if not launched() or os.environ.get("RANK") == "0":
            print(f"{os.path.join(cfg['resume']['dir'], cfg['resume']['tag'])} is already at --train-iters "
                  f"{cfg['train_iters']}: nothing to train (pass a larger --train-iters to continue)", flush=True)
        return
    if launched():
        _run(cfg)
        return
    start = time.perf_counter()
    run_local(_run, cfg["world_size"], cfg)  # spawn: each worker sets DS_ACCELERATOR before importing DeepSpeed
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
