"""Entry point of the ``tasp`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..costmodel import MACHINES
from ..planning import DTYPE_BYTES, Algorithm, Topology, link_traffic, resolve
from ..schedules import ScheduleError, multinode_links, validate_cycles
from .bench import add_bench_parser

# the flat schedule of n ranks has n - 1 cycles of n ranks and every rank prints n - 1 link volumes, so time,
# memory and output grow as n^2: n = 1024 takes about 9 s and 240 MB and prints 24 MB; n = 2048 would be 4x that
MAX_WORLD_SIZE = 1024
# paths a plan config may hold (resolved relative to the config file's directory)
CONFIG_PATHS = ("plot",)


def _rail(src: int, dst: int, m: int) -> str:
    """Which rail a NIC hop uses: local index i -> i stays on rail i, otherwise it crosses rails."""
    return f"rail {src % m}" if src % m == dst % m else f"crosses rails {src % m} -> {dst % m}"


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return str(nbytes)


def _plan(args: argparse.Namespace) -> int:
    n = args.world_size
    m = n if args.gpus_per_node is None else args.gpus_per_node
    if m < 1 or n % m:
        raise ValueError(f"world size {n} is not a multiple of gpus per node {m}")
    res = resolve(Algorithm.HAMILTON, Topology.uniform(n // m, m))
    sched = res.schedule
    print(f"world size {n}, {n // m} node(s) x {m} GPUs")
    print(f"schedule: {res.algorithm.value} ({sched.num_cycles} cycle{'s' if sched.num_cycles != 1 else ''})")
    print(f"why: {res.reason}")
    print("cycles (data flows left to right, then back to the first rank):")
    for c, cyc in enumerate(sched.cycles):
        print(f"  cycle {c:>3}: {' -> '.join(map(str, cyc))}")
    try:
        multinode = sched.kind == Algorithm.HAMILTON_MULTINODE
        flat = sched.kind == Algorithm.HAMILTON_FLAT
        links = multinode_links(sched.nodes, sched.gpus_per_node) if multinode else None
        validate_cycles(sched.cycles, n, complete=flat, allowed_arcs=links)
        covered = ", every ordered pair covered)" if flat else ")"
        print("validation: OK (each cycle Hamiltonian, arcs disjoint" + covered)
    except ScheduleError as exc:  # pragma: no cover - generated schedules are validated on creation
        print(f"validation: FAILED: {exc}")
        return 1
    kv_heads = args.kv_heads or args.heads
    kv = 2 * (args.seqlen // n) * kv_heads * args.head_dim * DTYPE_BYTES[args.dtype] * args.batch
    print(f"traffic per step for seqlen {args.seqlen}, {kv_heads} KV heads x {args.head_dim}, {args.dtype}, "
          f"batch {args.batch}: local K+V = {_human(kv)} per rank, {n - 1} steps")
    for r in range(n):
        t = link_traffic(sched, r, kv, m)
        intra = ", ".join(f"->{p}: {_human(b)}" for p, b in sorted(t.intra_peers.items()))
        line = f"  rank {r:>3}: intra-node [{intra}]"
        if t.inter_peers:
            inter = ", ".join(f"->{p} ({_rail(r, p, m)}): {_human(b)}" for p, b in sorted(t.inter_peers.items()))
            line += f"  NIC [{inter}]"
        print(line)
    if args.interconnect:
        _predict(args, n, m)
    if args.plot:
        from .plot import plot_schedule

        plot_schedule(sched, args.plot, f"{res.algorithm.value}: {n} ranks, {sched.num_cycles} cycles")
        print(f"plot written to {args.plot}")
    return 0


def _predict(args: argparse.Namespace, n: int, m: int) -> None:
    """The cost model's forward and forward+backward times of each candidate on ``--interconnect``."""
    from ..costmodel import Problem, choose_algorithm, choose_layout, interconnect_for

    machine = interconnect_for(n // m, m, args.interconnect)
    problem = Problem(args.seqlen, args.heads, args.kv_heads or args.heads, args.head_dim, args.batch,
                      DTYPE_BYTES[args.dtype], args.causal)
    choice = choose_algorithm(machine, problem)
    print(f"cost model on {machine.name} ({'causal' if args.causal else 'non-causal'}):")
    for name, p in choice.predictions.items():
        print(f"  {name.value:<20} forward {p.fwd_s * 1e3:9.3f} ms   forward+backward {p.fwd_bwd_s * 1e3:9.3f} ms")
    print(f"  algorithm='auto' on GPUs picks {choice.schedule.value}: {choice.reason}")
    layouts = choose_layout(machine, problem)
    print("head x sequence layouts (Ulysses all-to-all inside a node x ring schedule; ulysses_size, "
          "Megatron a2a / a2a+p2p / a2a+hamilton):")
    for label, layout in sorted(layouts.predictions.items(), key=lambda item: item[1].fwd_bwd_s):
        print(f"  {label:<32} forward {layout.fwd_s * 1e3:9.3f} ms   forward+backward "
              f"{layout.fwd_bwd_s * 1e3:9.3f} ms")
    print(f"  best layout: {layouts.reason}")


PLAN_DEFAULTS = {"world_size": None, "gpus_per_node": None, "seqlen": 131072, "heads": 32, "kv_heads": None,
                 "head_dim": 128, "batch": 1, "dtype": "bf16", "plot": None, "interconnect": None,
                 "causal": True}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasp", description="Topology-aware sequence parallelism tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="show which ring schedule runs for a CP group, its cycles and link traffic")
    p.add_argument("--config", metavar="FILE.json", default=None,
                   help="read option defaults from a JSON file (keys as the long options, e.g. world_size; a "
                        "relative \"plot\" path is relative to the file's directory)")
    p.add_argument("--world-size", type=int, help=f"ranks in the context-parallel group (1 to {MAX_WORLD_SIZE})")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: all on one node)")
    p.add_argument("--seqlen", type=int, help="global sequence length (default 131072)")
    p.add_argument("--heads", type=int, help="attention heads (default 32)")
    p.add_argument("--kv-heads", type=int, help="K/V heads for GQA (default: --heads)")
    p.add_argument("--head-dim", type=int, help="head dimension (default 128)")
    p.add_argument("--batch", type=int, help="micro-batch size (default 1)")
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), help="K/V dtype on the wire")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the cycles to a PNG, one panel per cycle (needs matplotlib; up to 32 ranks)")
    p.add_argument("--interconnect", choices=sorted(MACHINES),
                   help="also predict each algorithm's time on this machine with the cost model")
    p.add_argument("--no-causal", dest="causal", action="store_false", help="predict non-causal attention")
    p.set_defaults(func=_plan, **PLAN_DEFAULTS)
    add_bench_parser(sub)
    return parser


def _apply_config(args: argparse.Namespace) -> None:
    """Fill options from a JSON config; options given on the command line (non-default values) win."""
    with open(args.config, encoding="utf-8") as fh:
        values = json.load(fh)
    if not isinstance(values, dict):
        raise ValueError(f"{args.config}: expected a JSON object of option names to values")
    unknown = sorted(set(values) - set(PLAN_DEFAULTS))
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {unknown}; valid: {sorted(PLAN_DEFAULTS)}")
    base = os.path.dirname(os.path.abspath(args.config))
    for key, value in values.items():
        if key in CONFIG_PATHS and isinstance(value, str):
            value = os.path.join(base, value)  # an absolute value stays as it is
        if getattr(args, key) == PLAN_DEFAULTS[key]:
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    """Run ``tasp``; errors are one line on stderr and exit code 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return args.func(args)
        if getattr(args, "config", None):
            _apply_config(args)
        if args.world_size is None:
            raise ValueError("--world-size is required (on the command line or in --config)")
        if not 1 <= args.world_size <= MAX_WORLD_SIZE:
            raise ValueError(f"--world-size must be between 1 and {MAX_WORLD_SIZE}, got {args.world_size} (a plan "
                             f"lists n - 1 cycles of n ranks: time, memory and output grow as n^2)")
        if args.plot:
            from .plot import check_plottable

            check_plottable(args.world_size)
        if args.seqlen < 1 or args.heads < 1 or args.head_dim < 1 or args.batch < 1:
            raise ValueError("--seqlen, --heads, --head-dim and --batch must be positive")
        return args.func(args)
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"tasp: error: {exc}", file=sys.stderr)
        return 2

