"""The pretraining examples' shared command line: one flag vocabulary (Megatron-LM's names where it has one),
defined once with help, defaults and choices, and the checks a launching process runs before it starts any
worker, so that a bad setting is one line (``prog: error: ...``, exit code 2) instead of a traceback from
every rank."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any, NoReturn

from ..planning import Algorithm
from .launch import DEVICES, launched

__all__ = ["CP_COMM_TYPES", "OneLineErrorParser", "add_training_args", "algorithm_of", "apply_config_file",
           "batch_sizes", "check_parallel_layout", "check_seq_length", "check_settings", "default_seq_length", "flag",
           "read_json_object"]

# Megatron-LM's --cp-comm-type accepts "p2p" (Transformer Engine's zigzag ring); the rest are our algorithms
CP_COMM_TYPES = (*Algorithm.values(), "p2p")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, ``prog: error: message``, exit code 2
    (argparse's own ``error`` prints the whole usage first, about ten lines for the examples). Under a
    launcher only global rank 0 prints it; the other ranks exit with the same code silently."""

    def error(self, message: str) -> NoReturn:
        if launched() and os.environ.get("RANK") != "0":
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag(dest: str) -> str:
    """The command-line spelling of a setting: ``seq_length`` -> ``--seq-length``."""
    return "--" + dest.replace("_", "-")


def _help(text: str, derived: Mapping[str, str], dest: str) -> str:
    if dest in derived:
        return f"{text} (default: {derived[dest]})"
    return text if "(default:" in text else f"{text} (default: %(default)s)"


def add_training_args(parser: argparse.ArgumentParser, defaults: Mapping[str, Any],
                      derived: Mapping[str, str] | None = None) -> None:
    """Add the flags both pretraining examples take to ``parser``, with an example's ``defaults``
    (``dest -> value``). ``derived`` names the settings whose default (None) the example works out itself,
    with the rule shown in ``--help`` (e.g. ``{"seq_length": "256 rounded up to a multiple of 2 x CP"}``)."""
    derived = dict(derived or {})
    missing = sorted(set(derived) - set(defaults))
    if missing:
        raise ValueError(f"derived defaults {missing} need an entry (None) in defaults")

    def add(group: argparse._ArgumentGroup, dest: str, text: str, **kwargs: Any) -> None:
        group.add_argument(flag(dest), dest=dest, help=_help(text, derived, dest), **kwargs)

    model = parser.add_argument_group("model")
    add(model, "num_layers", "transformer layers", type=int, metavar="N")
    add(model, "hidden_size", "hidden size", type=int, metavar="N")
    add(model, "ffn_hidden_size", "MLP hidden size", type=int, metavar="N")
    add(model, "num_attention_heads", "query heads", type=int, metavar="N")
    add(model, "num_query_groups", "key/value heads (GQA); must divide --num-attention-heads", type=int,
        metavar="N")
    add(model, "seq_length", "tokens per sequence; a multiple of 2 x --context-parallel-size (zigzag shards)",
        type=int, metavar="N")

    parallel = parser.add_argument_group("parallelism")
    add(parallel, "world_size", "processes to start when no launcher started this one (under torchrun or "
        "deepspeed: the launcher's WORLD_SIZE)", type=int, metavar="N")
    add(parallel, "context_parallel_size", "ranks per context-parallel group; must divide the world size "
        "(the rest is data parallelism)", type=int, metavar="CP")
    add(parallel, "cp_comm_type", "attention schedule: " + ", ".join(
        f"{a.value}" for a in Algorithm) + "; p2p = zigzag (Megatron-LM's name)", choices=CP_COMM_TYPES)
    add(parallel, "topology", "the job's nodes, e.g. 2x4 (default: $TASP_TOPOLOGY or the launcher's "
        "LOCAL_WORLD_SIZE); 2x4 makes 8 local processes two emulated nodes (multi-node Hamilton)",
        metavar="NODESxGPUS")
    add(parallel, "device", "auto: one GPU per process when CUDA is available (NCCL), else the CPU (gloo)",
        choices=DEVICES)

    training = parser.add_argument_group("training")
    add(training, "train_iters", "train until this step (on --load: the total, counting the checkpoint's "
        "steps)", type=int, metavar="N")
    add(training, "micro_batch_size", "sequences per data-parallel rank and step", type=int, metavar="N")
    add(training, "global_batch_size", "sequences per step over all data-parallel ranks (= micro batch x "
        "data-parallel size: the examples do not accumulate gradients)", type=int, metavar="N")
    add(training, "lr", "AdamW learning rate", type=float)
    add(training, "weight_decay", "AdamW weight decay", type=float)
    add(training, "seed", "seed of the initial weights and of the data order", type=int)

    data = parser.add_argument_group("data")
    add(data, "data_path", "text file to train on, as byte tokens (default: the Python standard "
        "library's sources)", metavar="FILE")
    add(data, "max_corpus_bytes", "read at most this many bytes of the corpus", type=int, metavar="N")
    add(data, "reset_attention_mask", "packed documents: the corpus's source files (in a --data-path file: its "
        "NUL-separated parts) are documents ending in an end-of-document token (byte 0); attention and "
        "positions restart at each (Megatron-LM's --reset-attention-mask with --reset-position-ids) and the "
        "model never predicts across documents", action="store_true")

    ckpt = parser.add_argument_group("checkpoints (Megatron-LM's habits)")
    add(ckpt, "save", "directory for checkpoints and the loss curve; refused when it already holds "
        "checkpoints, unless --load names it", metavar="DIR")
    add(ckpt, "load", "continue the run whose latest checkpoint is in DIR (same model, sequence length, CP "
        "size, batch, data and seed); without a checkpoint there, start from step 0. --save DIR --load DIR "
        "starts a run and continues it on every re-run", metavar="DIR")
    add(ckpt, "save_interval", "save a checkpoint every N steps (and after the last)", type=int, metavar="N")

    unknown = sorted(set(defaults) - {a.dest for a in parser._actions})
    if unknown:
        raise ValueError(f"defaults for unknown settings {unknown}")
    parser.set_defaults(**defaults)


def read_json_object(path: str, flag: str) -> dict[str, Any]:
    """The JSON object in the file ``flag`` names; ``ValueError`` (one line, naming the flag) otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read {flag} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {path}: expected a JSON object")
    return value


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Make the settings of a JSON file (keys: the flags' names with underscores, e.g. ``seq_length``) the
    parser's defaults, so the command line still overrides them and ``--help`` shows them. Relative paths in
    the file (``data_path``, ``save``, ``load``) are relative to the file's directory. Returns the values;
    ``ValueError`` naming the key for an unknown key or a value of the wrong kind."""
    values = read_json_object(path, "--config")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"--config {path}: unknown key(s) {unknown}; valid: {sorted(actions)}")
    base = os.path.dirname(os.path.abspath(path))
    for key, value in values.items():
        action = actions[key]
        if value is None:
            continue
        kind: type = action.type if isinstance(action.type, type) else str
        ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int))
        if not ok or (action.choices is not None and value not in action.choices):
            wanted = f"one of {list(action.choices)}" if action.choices is not None else f"a {kind.__name__}"
            raise ValueError(f"--config {path}: {key} must be {wanted}, got {value!r}")
        if key in ("data_path", "save", "load"):
            values[key] = os.path.normpath(os.path.join(base, value))
    parser.set_defaults(**values)
    return values


def algorithm_of(cp_comm_type: str) -> str:
    """The algorithm name a ``--cp-comm-type`` runs (``p2p`` is Megatron-LM's word for ``zigzag``)."""
    return Algorithm.ZIGZAG.value if cp_comm_type == "p2p" else cp_comm_type


def default_seq_length(base: int, cp: int) -> int:
    """``base`` rounded up to a multiple of ``2 * cp`` (each CP rank holds two equal zigzag blocks)."""
    unit = 2 * cp
    return -(-base // unit) * unit


def check_parallel_layout(world_size: int, cp: int, seq_length: int) -> None:
    """``ValueError`` (one line, naming valid values) unless the world size is a multiple of the CP size and
    the sequence length of ``2 * cp``."""
    if cp < 1:
        raise ValueError(f"--context-parallel-size must be >= 1, got {cp}")
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    if world_size % cp:
        below = world_size // cp * cp
        options = f"{below} or {below + cp}" if below else f"{cp}"
        raise ValueError(f"world size {world_size} is not a multiple of --context-parallel-size {cp}; use a "
                         f"world size of {options}, or a CP size that divides {world_size}")
    check_seq_length(seq_length, cp, "--seq-length", "--context-parallel-size")


def check_seq_length(seq_length: int, ranks: int, flag: str, ranks_name: str) -> None:
    """``ValueError`` (one line, naming the nearest valid lengths) unless ``seq_length`` is a positive
    multiple of ``2 * ranks`` (each rank holds two equal zigzag blocks)."""
    if seq_length < 1 or seq_length % (2 * ranks):
        unit = 2 * ranks
        low, high = seq_length // unit * unit, default_seq_length(max(seq_length, 1), ranks)
        options = f"{low} or {high}" if low else f"{high}"
        raise ValueError(f"{flag} {seq_length} is not a multiple of 2 x {ranks_name} = {unit} (each rank holds "
                         f"two zigzag blocks); use {options}, or leave {flag} out to get a valid default")


def batch_sizes(micro: int | None, global_: int | None, dp: int) -> tuple[int, int]:
    """``(micro_batch_size, global_batch_size)`` from whichever is given, for ``dp`` data-parallel ranks
    without gradient accumulation (global = micro x dp); ``ValueError`` when they disagree."""
    if micro is None and global_ is None:
        raise ValueError("give --micro-batch-size or --global-batch-size")
    if micro is not None and micro < 1 or global_ is not None and global_ < 1:
        raise ValueError("--micro-batch-size and --global-batch-size must be >= 1")
    if global_ is None:
        assert micro is not None
        return micro, micro * dp
    if micro is None:
        if global_ % dp:
            raise ValueError(f"--global-batch-size {global_} does not divide over the data-parallel size {dp} "
                             f"(world size / CP size); use a multiple of {dp}")
        return global_ // dp, global_
    if micro * dp != global_:
        raise ValueError(f"--global-batch-size {global_} is not --micro-batch-size {micro} x data-parallel size "
                         f"{dp} = {micro * dp} (the examples do not accumulate gradients); give only one of them")
    return micro, global_


def check_settings(cfg: Mapping[str, Any]) -> None:
    """The checks both examples make on their settings (after ``check_parallel_layout``): positive sizes,
    heads that divide, a ``--data-path`` that exists, a ``--topology`` that parses, and a
    ``--cp-comm-type`` that exists for the CP size. ``ValueError`` with a one-line message."""
    from ..planning import Topology, resolve

    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "train_iters", "save_interval", "max_corpus_bytes"):
        if cfg[key] < 1:
            raise ValueError(f"{flag(key)} must be >= 1, got {cfg[key]}")
    heads, groups, hidden = cfg["num_attention_heads"], cfg["num_query_groups"], cfg["hidden_size"]
    if heads % groups or hidden % heads:
        raise ValueError(f"--num-query-groups {groups} must divide --num-attention-heads {heads}, which must "
                         f"divide --hidden-size {hidden}")
    if cfg["data_path"] is not None and not os.path.isfile(cfg["data_path"]):
        raise ValueError(f"--data-path {cfg['data_path']} is not a file; pass a text file, or leave it out to "
                         "train on the standard library's sources")
    if cfg["topology"] is not None:
        Topology.parse(cfg["topology"])
    if algorithm_of(cfg["cp_comm_type"]) == Algorithm.HAMILTON_FLAT:
        resolve(Algorithm.HAMILTON_FLAT, Topology.uniform(1, cfg["context_parallel_size"]))  # none for CP 4, 6
    if not cfg["save"]:
        raise ValueError("--save must name a directory")
