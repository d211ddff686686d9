"""Megatron-core integration on 8 gloo processes, spawned once for the whole module (megatron-core takes
seconds to import per process): ``TASPCoreAttention`` at CP = 2, 3, 4, 5, 8 against float64 single-process
attention, and GPTModel training with CP = 2, 4, 8 (every algorithm) against CP = 1 on the same data."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from tasp_plugin.training.launch import free_port
from tests.distributed import rank_main
from tests.reference import reference_attention

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "megatron",
                       "pretrain_gpt.py")
ATTENTION_CASES = [(2, "hamilton", True), (3, "hamilton", True), (3, "ring", False), (4, "hamilton", True),
                   (4, "zigzag", True), (5, "auto", True), (8, "hamilton", True), (8, "p2p", False)]
GPT_CASES = [(cp, algo) for cp in (2, 4, 8) for algo in ("hamilton", "ring", "zigzag")]
# head x sequence hybrids: (CP size, cp_comm_type, hierarchical_context_parallel_sizes)
HYBRID_ATTENTION_CASES = [(4, "a2a", None, True), (4, "a2a+p2p", (2, 2), False), (8, "a2a+hamilton", (4, 2), True),
                          (8, "a2a+p2p", (2, 4), True), (6, "a2a+hamilton", (2, 3), True)]
HYBRID_GPT_CASES = [(4, "a2a", None), (4, "a2a+hamilton", (2, 2)), (8, "a2a+p2p", (2, 4)),
                    (8, "a2a+hamilton", (4, 2))]
CURVE_STEPS = 20


def load_example():
    """The example script as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pretrain_gpt_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(cp: int, cp_comm_type, hierarchical=None, **extra):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                             context_parallel_size=cp, cp_comm_type=cp_comm_type, attention_dropout=0.0,
                             cuda_graph_scope=[],
                             hierarchical_context_parallel_sizes=hierarchical and list(hierarchical), **extra)


def _attention_case(rank: int, group, n: int, algorithm: str, causal: bool, hierarchical=None) -> dict[str, float]:
    """Max abs error of this rank's output and q/k/v gradients against float64 reference attention."""
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.enums import AttnMaskType

    from tasp_plugin.integrations.megatron import TASPCoreAttention
    from tasp_plugin.sharding import shard_sequence

    gen = torch.Generator().manual_seed(7)
    s, b, h, hkv, d = 8 * n, 2, 4, 2, 8
    q, k, v = (torch.randn(s, b, heads, d, generator=gen, dtype=torch.float64) for heads in (h, hkv, hkv))
    grad_out = torch.randn(s, b, h * d, generator=gen, dtype=torch.float64)
    pg = ProcessGroupCollection(cp=group) if group is not None else None
    mask = AttnMaskType.causal if causal else AttnMaskType.no_mask
    attn = TASPCoreAttention(_config(n, algorithm, hierarchical), layer_number=1, attn_mask_type=mask,
                             attention_type="self", pg_collection=pg)
    local = [shard_sequence(t, rank, n, seq_dim=0).requires_grad_() for t in (q, k, v)]
    out = attn(*local, None)
    (out * shard_sequence(grad_out, rank, n, seq_dim=0)).sum().backward()

    full = [t.transpose(0, 1).clone().requires_grad_() for t in (q, k, v)]
    ref, _ = reference_attention(*full, causal=causal, scale=d ** -0.5)
    ref = ref.transpose(0, 1).reshape(s, b, h * d)
    (ref * grad_out).sum().backward()
    errors = {"out": (out - shard_sequence(ref, rank, n, seq_dim=0)).abs().max().item()}
    for name, mine, whole in zip("qkv", local, full, strict=True):
        errors["d" + name] = (mine.grad - shard_sequence(whole.grad.transpose(0, 1), rank, n, 0)).abs().max().item()
    return errors


def _gpt_run(example, cp: int, algo, steps: int, dtype: str, layers: int = 2,
             hierarchical=None) -> tuple[list[float], dict, list]:
    """Losses of ``steps`` training steps, the gradients of the last step, and the algorithm (with the
    all-to-all size, for hybrids) each layer's core attention resolved, on Megatron's initialised groups."""
    from tasp_plugin.integrations.megatron import TASPCoreAttention
    from tasp_plugin.training.data import load_corpus, token_batches

    cfg = example.parse_config(["--world-size", "8", "--context-parallel-size", str(cp), "--num-layers", str(layers),
                                "--hidden-size", "32", "--ffn-hidden-size", "64", "--dtype", dtype,
                                "--global-batch-size", "8"])
    cfg["cp_comm_type"] = algo
    cfg["hierarchical_context_parallel_sizes"] = hierarchical and list(hierarchical)
    model = example.build_model(cfg, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = token_batches(load_corpus(max_bytes=200_000), seq_len=32, batch_size=8, seed=3)
    losses = [example.train_step(model, optimizer, next(batches)) for _ in range(steps)]
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    algorithms = [m.algorithm if hierarchical is None and "a2a" not in str(algo) else (m.algorithm, m.ulysses_size)
                  for m in model.modules() if isinstance(m, TASPCoreAttention)]
    return losses, grads, algorithms


def _example_train_and_resume(example, out_dir: str) -> dict:
    """The example's own training loop (CP = 8, Hamilton, the default config with a short sequence): 2 steps,
    then continued to 3 with --load (Megatron-LM's --save/--load), and an uninterrupted 3-step run."""
    def run(save: str, *extra: str) -> list[float]:
        cfg = example.parse_config(["--seq-length", "64", "--save-interval", "1", "--save", save,
                                    "--max-corpus-bytes", "200000", *extra])
        example.plan_run(cfg)
        return example.train(cfg, torch.device("cpu"))

    first = run(out_dir, "--train-iters", "2")
    resumed = run(out_dir, "--train-iters", "3", "--load", out_dir)
    straight = run(out_dir + "_straight", "--train-iters", "3")
    return {"first": first, "resumed": resumed, "straight": straight,
            "curve": os.path.isfile(os.path.join(out_dir, "loss.png")),
            "saved": sorted(f for f in os.listdir(out_dir) if f.endswith(".pt"))}


def _world8(rank: int, world: int, out_dir: str) -> dict:
    """Every distributed check, on one set of 8 processes."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    warnings.filterwarnings("ignore")
    result: dict = {"attention": {}, "gpt": {}}
    sizes = {c[0] for c in ATTENTION_CASES + HYBRID_ATTENTION_CASES}
    subgroups = {n: dist.new_group(list(range(n))) for n in sorted(sizes) if n < world}
    subgroups[world] = dist.group.WORLD
    for n, algorithm, causal in ATTENTION_CASES:
        if rank < n:
            result["attention"][(n, algorithm, causal)] = _attention_case(rank, subgroups[n], n, algorithm, causal)
    for n, algorithm, hierarchical, causal in HYBRID_ATTENTION_CASES:
        if rank < n:
            result["attention"][(n, algorithm, hierarchical, causal)] = _attention_case(
                rank, subgroups[n], n, algorithm, causal, hierarchical)

    example = load_example()
    for cp in (1, 2, 4, 8):  # one parallel_state per CP size: gloo groups are not freed between runs
        ps.initialize_model_parallel(context_parallel_size=cp, create_gloo_process_groups=False)
        if cp == 1:
            result["gpt"]["baseline64"] = _gpt_run(example, 1, "hamilton", 2, "float64")
            result["gpt"]["curve1"] = _gpt_run(example, 1, "hamilton", CURVE_STEPS, "float32", layers=1)[0]
        for algo in ("hamilton", "ring", "zigzag") if cp > 1 else ():
            result["gpt"][(cp, algo)] = _gpt_run(example, cp, algo, 2, "float64")
        for case in HYBRID_GPT_CASES:
            if case[0] == cp:
                result["gpt"][case] = _gpt_run(example, cp, case[1], 2, "float64", hierarchical=case[2])
        if cp == 2:
            result["gpt"]["per_layer"] = _gpt_run(example, 2, ["ring", "hamilton"], 1, "float64")
        if cp == 8:
            result["attention"][("parallel_state", "hamilton", True)] = _attention_case(rank, None, 8, "hamilton", True)
            result["gpt"]["curve8"] = _gpt_run(example, 8, "hamilton", CURVE_STEPS, "float32", layers=1)[0]
        ps.destroy_model_parallel()
    result["example"] = _example_train_and_resume(example, out_dir)
    return result


def _zygote(_: int, world: int, port: int, outdir: str, fn, args) -> None:
    """A fresh process that imports megatron-core once and forks the ranks from it (it has run no torch
    ops, so forking is safe); 8 spawned ranks would each spend seconds importing megatron-core."""
    import megatron.core.models.gpt  # noqa: F401

    import tasp_plugin.integrations.megatron  # noqa: F401

    mp.start_processes(rank_main, args=(world, port, outdir, "gloo", fn, args), nprocs=world, start_method="fork")


def run_forked(fn, world: int, *args) -> list:
    """``tests.distributed.run_distributed`` with the ranks forked from one spawned zygote."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_zygote, args=(world, free_port(), outdir, fn, args), nprocs=1)
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def world8(tmp_path_factory) -> list[dict]:
    return run_forked(_world8, 8, str(tmp_path_factory.mktemp("megatron_run")))


@pytest.mark.parametrize("case", ATTENTION_CASES + HYBRID_ATTENTION_CASES + [("parallel_state", "hamilton", True)],
                         ids=str)
def test_core_attention_matches_reference(world8, case):
    n = 8 if case[0] == "parallel_state" else case[0]
    for rank in range(n):
        errors = world8[rank]["attention"][case]
        assert max(errors.values()) < 1e-10, (rank, errors)


@pytest.mark.parametrize("case", GPT_CASES, ids=str)
def test_gpt_loss_and_gradients_equal_cp1(world8, case):
    base_losses, base_grads, _ = world8[0]["gpt"]["baseline64"]
    for rank in (0, 7):
        losses, grads, algorithms = world8[rank]["gpt"][case]
        # Megatron returns the per-token loss in float32; the float64 gradients agree to ~1e-14
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(base_losses), rtol=3e-7, atol=0)
        assert grads.keys() == base_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], base_grads[name], rtol=1e-10, atol=1e-13, msg=name)
        assert algorithms == [case[1]] * 2  # --cp-comm-type reached every layer's core attention
    assert base_losses[1] < base_losses[0]


@pytest.mark.parametrize("case", HYBRID_GPT_CASES, ids=str)
def test_hybrid_gpt_loss_and_gradients_equal_cp1(world8, case):
    """Megatron's a2a / a2a+p2p / a2a+hamilton (all-to-all inside the first hierarchical level) train exactly
    as CP = 1."""
    from tasp_plugin.integrations.megatron import layer_split

    base_losses, base_grads, _ = world8[0]["gpt"]["baseline64"]
    expected = layer_split(case[1], 1, case[0], case[2] and list(case[2]))
    for rank in (0, case[0] - 1):
        losses, grads, splits = world8[rank]["gpt"][case]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(base_losses), rtol=3e-7, atol=0)
        for name in grads:
            torch.testing.assert_close(grads[name], base_grads[name], rtol=1e-10, atol=1e-13, msg=name)
        assert splits == [expected] * 2 and expected[1] > 1


def test_per_layer_cp_comm_type_reaches_each_layer(world8):
    losses, _, algorithms = world8[0]["gpt"]["per_layer"]
    assert algorithms == ["ring", "hamilton"]
    assert losses[0] == pytest.approx(world8[0]["gpt"]["baseline64"][0][0], rel=3e-7)


def test_loss_curves_close_over_20_steps(world8):
    curve1, curve8 = world8[0]["gpt"]["curve1"], world8[0]["gpt"]["curve8"]
    assert len(curve8) == CURVE_STEPS
    torch.testing.assert_close(torch.tensor(curve8), torch.tensor(curve1), rtol=2e-3, atol=0)
    assert curve8[-1] < curve8[0] - 0.5  # it learns
    assert world8[7]["gpt"]["curve8"] == curve8  # every rank reports the same global loss


def test_example_training_loop_saves_and_resumes(world8):
    run = world8[0]["example"]
    assert len(run["first"]) == 2 and run["resumed"][:2] == run["first"]
    assert run["resumed"] == pytest.approx(run["straight"], rel=1e-6)  # --load continues the same run
    assert run["curve"] and run["saved"] == ["ckpt_step000001.pt", "ckpt_step000002.pt", "ckpt_step000003.pt"]
    assert world8[5]["example"]["resumed"] == run["resumed"]
