"""Bad input and rank disagreement: clear errors before anything is sent, the same on every rank, never a
hang, and a caught error leaves the group usable (issue 13, part 1)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist

from tasp_plugin import checks
from tasp_plugin.api import context_parallel_attention
from tasp_plugin.comm import ProcessGroupCommunicator
from tasp_plugin.engine import EngineConfig, RingAttentionFunction
from tasp_plugin.integrations.attention import TASPAttention, install_context_parallel
from tasp_plugin.kernels import CpuFlashKernel
from tasp_plugin.planning import Topology, resolve
from tasp_plugin.sharding import shard_sequence, unshard_sequence
from tasp_plugin.topology import detect_topology, local_world_size

from .distributed import run_distributed
from .reference import reference_attention

X = torch.randn(1, 4, 4, 8)


def _call(**overrides):
    args = {"q": X, "k": X, "v": X, **overrides}
    return context_parallel_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"q": X.int(), "k": X.int(), "v": X.int()}, TypeError, "dtype torch.int32"),
    ({"q": X.bool(), "k": X.bool(), "v": X.bool()}, TypeError, "dtype torch.bool"),
    ({"q": X.to(torch.complex64), "k": X.to(torch.complex64), "v": X.to(torch.complex64)}, TypeError, "complex"),
    ({"q": torch.randn(1, 4, 0, 8)}, ValueError, "at least one head"),
    ({"k": torch.randn(1, 4, 0, 8), "v": torch.randn(1, 4, 0, 8)}, ValueError, "at least one head"),
    ({"q": torch.randn(1, 4, 4, 0), "k": torch.randn(1, 4, 4, 0), "v": torch.randn(1, 4, 4, 0)}, ValueError,
     "head_dim must be >= 1"),
    ({"softmax_scale": 0.0}, ValueError, "softmax_scale"),
    ({"softmax_scale": -0.5}, ValueError, "softmax_scale"),
    ({"softmax_scale": math.nan}, ValueError, "softmax_scale"),
    ({"softmax_scale": math.inf}, ValueError, "softmax_scale"),
    ({"softmax_scale": "0.1"}, TypeError, "softmax_scale"),
    ({"softmax_scale": True}, TypeError, "softmax_scale"),
    ({"layout": None}, TypeError, "layout"),
    ({"algorithm": None}, TypeError, "algorithm"),
    ({"causal": "false"}, TypeError, "causal"),
    ({"return_lse": 1}, TypeError, "return_lse"),
    ({"backend": None}, TypeError, "backend"),
    ({"group": "cp"}, TypeError, "group must be"),
    ({"k": torch.randn(2, 4, 4, 8), "v": torch.randn(2, 4, 4, 8)}, ValueError, "batch size"),
    ({"k": torch.randn(1, 4, 4, 16), "v": torch.randn(1, 4, 4, 16)}, ValueError, "head_dim"),
    ({"topology": "2by4"}, ValueError, "topology"),
])
def test_every_argument_is_checked_and_named(single_rank_group, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _call(**kwargs)


def test_options_are_checked_before_the_group(monkeypatch):
    """Without torch.distributed, a bad option still names itself (not the missing group)."""
    with pytest.raises(TypeError, match="causal"):
        _call(causal="yes")


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("false", False), ("No", False),
                                             ("off", False), ("1", True), ("TRUE", True), ("yes", True),
                                             ("on", True)])
def test_boolean_environment_values(monkeypatch, value, expected):
    monkeypatch.setenv(checks.CHECK_ENV, value)
    assert checks.env_flag(checks.CHECK_ENV) is expected


def test_a_malformed_boolean_names_the_variable(monkeypatch):
    monkeypatch.setenv(checks.CHECK_ENV, "maybe")
    with pytest.raises(ValueError, match=r"\$TASP_CHECK_SHAPES"):
        checks.env_flag(checks.CHECK_ENV)


def test_topology_variables_are_named_in_their_errors(single_rank_group, monkeypatch):
    monkeypatch.setenv("TASP_TOPOLOGY", "two nodes")
    with pytest.raises(ValueError, match=r"\$TASP_TOPOLOGY"):
        detect_topology(single_rank_group)
    monkeypatch.delenv("TASP_TOPOLOGY")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "eight")
    with pytest.raises(ValueError, match=r"\$LOCAL_WORLD_SIZE"):
        local_world_size()


def test_double_backward_is_a_clear_error(single_rank_group):
    q, k, v = (torch.randn(1, 4, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = context_parallel_attention(q, k, v)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_unshard_rejects_odd_or_unequal_shards():
    with pytest.raises(ValueError, match="one even length"):
        unshard_sequence([torch.zeros(1, 3), torch.zeros(1, 3)], 1)
    with pytest.raises(ValueError, match="one even length"):
        unshard_sequence([torch.zeros(1, 4), torch.zeros(1, 2)], 1)


def test_module_options_reject_none():
    with pytest.raises(TypeError, match="layout"):
        TASPAttention(layout=None)
    with pytest.raises(TypeError, match="algorithm and backend"):
        install_context_parallel(None, algorithm=None)
    with pytest.raises(TypeError, match="group must be"):
        install_context_parallel("cp")


class _FailsAtSecondCall(CpuFlashKernel):
    """A kernel that raises on its second block call: after the first step's transfers were posted."""

    def __init__(self) -> None:
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("kernel failed")
        return super().forward(*args)


def _recover(rank, n, algorithm):
    """Every rank makes failing calls (a bad argument; a kernel error after the exchange started), catches
    them, then a valid call on the same group must match the reference."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 8 * n, 2, 8, dtype=torch.float64) for _ in range(3))
    local = [shard_sequence(x, rank, n, 1) for x in (q, k, v)]
    errors = []
    try:
        context_parallel_attention(local[0], local[1], local[2][..., :4], algorithm=algorithm)
    except ValueError as exc:
        errors.append(str(exc))
    comm = ProcessGroupCommunicator(None)
    schedule = resolve(algorithm, Topology.uniform(1, n)).schedule
    cfg = EngineConfig.create(schedule=schedule, comm=comm, kernel=_FailsAtSecondCall(), head_dim=8)
    try:
        RingAttentionFunction.apply(*(x.transpose(1, 2).contiguous() for x in local), cfg)
    except RuntimeError as exc:
        errors.append(str(exc))
    out = context_parallel_attention(*local, algorithm=algorithm)
    want, _ = reference_attention(q, k, v, True, 8 ** -0.5)
    dist.barrier()
    return errors, (out - shard_sequence(want, rank, n, 1)).abs().max().item()


@pytest.mark.distributed
@pytest.mark.parametrize("n, algorithm", [(2, "zigzag"), (2, "hamilton"), (3, "ring"), (3, "hamilton"),
                                          (4, "hamilton")])
def test_a_caught_error_leaves_the_group_usable(n, algorithm):
    for errors, err in run_distributed(_recover, n, algorithm):
        assert len(errors) == 2 and "same shape" in errors[0] and "kernel failed" in errors[1]
        assert err < 1e-12


def _disagree(rank, n, case):
    """One rank differs from the others in ``case``; every rank must raise, then a valid call works."""
    x = torch.randn(1, 8, 2, 8)
    kwargs = {}
    if case == "algorithm":
        kwargs["algorithm"] = "ring" if rank == 1 else "hamilton"
    elif case == "causal":
        kwargs["causal"] = rank != 1
    elif case == "dtype":
        x = x.to(torch.bfloat16 if rank == 1 else torch.float16)
    elif case == "topology env" and rank == 1:
        os.environ["TASP_TOPOLOGY"] = "1x3"
    elif case == "local error" and rank == 2:
        x = x.int()
    gathers = []
    real = checks.gather_objects
    checks.gather_objects = lambda obj, group=None: gathers.append(1) or real(obj, group)
    try:
        context_parallel_attention(x, x, x, **kwargs)
        message = "no error"
    except (TypeError, ValueError) as exc:
        message = str(exc)
    os.environ.pop("TASP_TOPOLOGY", None)
    y = torch.randn(1, 8, 2, 8)
    context_parallel_attention(y, y, y)
    before = len(gathers)
    context_parallel_attention(y, y, y)  # same call again: no gather
    checks.gather_objects = real
    dist.barrier()
    return message, before, len(gathers)


@pytest.mark.distributed
@pytest.mark.parametrize("case, expected", [
    ("algorithm", "algorithm: rank 0 hamilton, rank 1 ring"),
    ("causal", "causal: rank 0 True, rank 1 False"),
    ("dtype", "dtype: rank 0 torch.float16, rank 1 torch.bfloat16"),
    ("topology env", "$TASP_TOPOLOGY: rank 0 , rank 1 1x3"),
    ("local error", "dtype torch.int32"),
])
def test_rank_disagreement_raises_on_every_rank(case, expected):
    for rank, (message, before, after) in enumerate(run_distributed(_disagree, 3, case)):
        assert expected in message, (rank, message)
        assert before == after, "a repeated call gathered again"


def _unset_device_worker(rank: int, world: int, port: int) -> None:
    """NCCL with ``device_id`` bound but ``torch.cuda.set_device`` never called (current device stays 0)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NCCL_NVLS_ENABLE="0")
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    try:
        assert detect_topology(None).world_size == world
        x = torch.randn(1, 8, 2, 8, device=device)
        out = context_parallel_attention(x, x, x, algorithm="hamilton")
        assert out.device == device and torch.isfinite(out).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu(2)
@pytest.mark.distributed
def test_library_gathers_use_the_bound_device_before_set_device():
    import torch.multiprocessing as mp

    from tasp_plugin.training.launch import free_port

    mp.spawn(_unset_device_worker, args=(2, free_port()), nprocs=2, join=True)


def test_nodes_of_unequal_size_on_several_hosts_are_detected(single_rank_group, monkeypatch):
    """LOCAL_WORLD_SIZE differs across hosts whose nodes differ in size; the host names decide, no error."""
    from tasp_plugin.topology import detect

    gathered = [("host-a", 0, 2), ("host-a", 1, 2), ("host-b", 2, 1)]
    monkeypatch.setattr(detect, "gather_objects", lambda obj, group=None: gathered)
    assert detect.gathered_node_ids(None) == ["host-a", "host-a", "host-b"]
    monkeypatch.setattr(detect, "gather_objects", lambda obj, group=None: [("h", 0, 2), ("h", 1, 1)])
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE differs"):
        detect.gathered_node_ids(None)
