"""DeepSpeed + context parallelism: losses, full gradients and the optimizer step under ZeRO 0-3 and every
algorithm equal a single-process full-sequence reference. One spawned process group (CP 3 x DP 2) runs
all cases, since DeepSpeed's start-up dominates the cost."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from tests.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

pytest.importorskip("deepspeed")

CP, DP, BATCH, SEQ, VOCAB, LR, CLIP = 3, 2, 2, 24, 40, 0.5, 0.1
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "deepspeed",
                       "pretrain_llama.py")
STAGES = (0, 1, 2, 3)
ALGORITHMS = ("ring", "zigzag", "hamilton")


class TinyLM(torch.nn.Module):
    """Embedding (+ learned positions) -> one GQA attention block through TASPAttention -> MLP -> head."""

    def __init__(self, group=None, dim: int = 16, heads: int = 4, kv_heads: int = 2) -> None:
        from tasp_plugin.integrations.deepspeed import TASPAttention

        super().__init__()
        self.hd, self.heads, self.kv_heads = dim // heads, heads, kv_heads
        self.embed, self.pos = torch.nn.Embedding(VOCAB, dim), torch.nn.Embedding(SEQ, dim)
        self.q = torch.nn.Linear(dim, heads * self.hd)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * self.hd)
        self.o = torch.nn.Linear(heads * self.hd, dim)
        self.attn = TASPAttention(group=group, layout="bshd")
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))
        self.head = torch.nn.Linear(dim, VOCAB)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(position_ids)
        b, s, _ = x.shape
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.hd).unbind(2)
        x = x + self.o(self.attn(self.q(x).view(b, s, self.heads, self.hd), k, v).reshape(b, s, -1))
        return self.head(x + self.mlp(x))


def _loss_share(logits: torch.Tensor, labels: torch.Tensor, global_tokens: int) -> torch.Tensor:
    """This rank's share of the batch's mean token loss (the CP ranks' shares sum to it)."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / global_tokens


def _batches() -> list[torch.Tensor]:
    """One ``[BATCH, SEQ + 1]`` token batch per DP rank, identical on every process."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen) for _ in range(DP)]


def _reference(model: torch.nn.Module, dp: int = DP) -> tuple[float, dict, dict]:
    """Full-sequence loss averaged over the batches of ``dp`` DP ranks, its gradients, and parameters after
    one SGD step with the gradients clipped to norm CLIP."""
    from tasp_plugin.training.batch import shard_batch_for_cp

    losses = []
    for tokens in _batches()[:dp]:
        full = shard_batch_for_cp(tokens, 0, 1)
        losses.append(_loss_share(model(full["input_ids"], full["position_ids"]), full["labels"], BATCH * SEQ))
    loss = torch.stack(losses).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert norm > 2 * CLIP, "CLIP must be small enough to take effect"
    scale = CLIP / (norm + 1e-6)
    stepped = {n: (p - LR * scale * p.grad).detach() for n, p in model.named_parameters()}
    return loss.item(), grads, stepped


def _ds_config(stage: int, algorithm: str | None, cp: int = CP, ulysses: int = 1) -> dict:
    cfg = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "gradient_clipping": CLIP,
           "steps_per_print": 10_000, "wall_clock_breakdown": False}
    if algorithm is not None:
        cfg["context_parallel"] = {"size": cp, "algorithm": algorithm}
        if ulysses > 1:
            cfg["context_parallel"]["ulysses_size"] = ulysses
    return cfg


def _rel_err(got: dict, want: dict) -> float:
    return max(((got[n].float() - want[n]).abs().max() / want[n].abs().max().clamp_min(1e-12)).item() for n in want)


def _train_step(engine) -> tuple[float, dict, dict]:
    """One CP step through ``engine``: (logged full-sequence loss, full gradients, parameters after step)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from tasp_plugin.training.batch import shard_batch_for_cp

    mpu = engine.mpu
    tokens = _batches()[mpu.get_data_parallel_rank()]
    shard = shard_batch_for_cp(tokens, mpu.get_sequence_parallel_rank(), mpu.get_sequence_parallel_world_size())
    share = _loss_share(engine(shard["input_ids"], shard["position_ids"]), shard["labels"], BATCH * SEQ)
    engine.backward(share)
    grads = {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}
    engine.step()
    params = {n: (safe_get_full_fp32_param(p) if engine.zero_optimization_stage() else p).detach().clone()
              for n, p in engine.module.named_parameters()}
    return mpu.reduce_loss(share).item(), grads, params


def _layout(engine) -> dict:
    """The groups initialize built and what DeepSpeed made of them."""
    import torch.distributed as dist

    mpu = engine.mpu
    return {"cp": dist.get_process_group_ranks(mpu.get_sequence_parallel_group()),
            "dp": dist.get_process_group_ranks(mpu.get_data_parallel_group()),
            "ds": (engine.dp_world_size, engine.seq_dp_world_size, engine.sequence_parallel_size,
                   engine.train_batch_size())}


def _example_runs(out_dir: str) -> dict:
    """The example's training loop at CP 3 x DP 2 on a small model: 2 steps, then continued to 3 with --load,
    and an uninterrupted 3-step run to hold the continued one to."""
    spec = importlib.util.spec_from_file_location("pretrain_llama", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    common = ["--context-parallel-size", str(CP), "--seq-length", "48", "--num-layers", "1", "--hidden-size", "32",
              "--num-attention-heads", "4", "--num-query-groups", "2", "--max-corpus-bytes", "100000",
              "--save-interval", "1"]

    def run(save: str, *extra: str) -> list[float]:
        cfg = example.parse_config([*common, "--save", save, *extra])
        example.plan_run(cfg)
        return example.train(cfg)

    first = run(out_dir, "--train-iters", "2")
    resumed = run(out_dir, "--train-iters", "3", "--load", out_dir)
    straight = run(out_dir + "_straight", "--train-iters", "3")
    saved = sorted(os.listdir(out_dir))
    return {"first": first, "resumed": resumed, "straight": straight,
            "curve": os.path.isfile(os.path.join(out_dir, "loss.png")),
            "saved": [name for name in saved if name.startswith("step")],
            "run_file": os.path.isfile(os.path.join(out_dir, "step000003", example.RUN_FILE))}


def _start(rank: int, world: int, dp: int) -> tuple[dict, tuple[float, dict, dict]]:
    """One rank's set-up for DeepSpeed on CPU: the initial weights every model starts from, and the
    single-process reference (loss, gradients, stepped parameters) over ``dp`` DP ranks' batches."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    single = [dist.new_group([r]) for r in range(world)][rank]
    torch.manual_seed(0)
    init = TinyLM().state_dict()
    reference = TinyLM(group=single)
    reference.load_state_dict(init)
    return init, _reference(reference, dp)


def _cases(rank: int, world: int, stages: tuple[int, ...], out_dir: str) -> dict:
    """Every (stage, algorithm) through our ``initialize``, plus raw ``deepspeed.initialize`` with our mpu
    (no compensation) under ZeRO-3, each compared with the reference; then the example's loop."""
    init, (ref_loss, ref_grads, ref_params) = _start(rank, world, DP)
    import deepspeed

    from tasp_plugin.integrations.deepspeed import ContextParallelMPU, build_groups, initialize

    results = {}
    for stage in stages:
        for algorithm in (*ALGORITHMS, "raw") if stage == 3 else ALGORITHMS:
            model = TinyLM()
            model.load_state_dict(init)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            if algorithm == "raw":
                mpu = ContextParallelMPU(build_groups(CP))
                if stage == 3:
                    deepspeed.zero.Init(module=model, data_parallel_group=mpu.get_sequence_data_parallel_group())
                engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=_ds_config(stage, None), mpu=mpu)
            else:
                engine, *_ = initialize(model=model, optimizer=opt, config=_ds_config(stage, algorithm))
            loss, grads, params = _train_step(engine)
            results.setdefault("layout", {})[(stage, algorithm)] = _layout(engine)
            results[(stage, algorithm)] = {
                "loss": abs(loss - ref_loss) / ref_loss,
                "grad": _rel_err(grads, ref_grads),
                "grad_times_cp": _rel_err({n: g * CP for n, g in grads.items()}, ref_grads),
                "param": _rel_err(params, ref_params),
            }
            engine.destroy()
    results["example"] = _example_runs(out_dir)
    return results


HYBRID = (4, 2)  # CP size and its all-to-all (Ulysses) size: all-to-all 2 x ring 2, no data parallelism


def _hybrid_cases(rank: int, world: int) -> dict:
    """``"ulysses_size": 2`` in a CP 4 section (ZeRO 1 and 3, Hamilton and zigzag across) against the
    reference of the one DP rank's batch."""
    init, (ref_loss, ref_grads, ref_params) = _start(rank, world, 1)
    from tasp_plugin.integrations.deepspeed import initialize

    results = {}
    for stage, algorithm in ((1, "hamilton"), (3, "zigzag")):
        model = TinyLM()
        model.load_state_dict(init)
        engine, *_ = initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                config=_ds_config(stage, algorithm, *HYBRID))
        loss, grads, params = _train_step(engine)
        results[(stage, algorithm)] = {"loss": abs(loss - ref_loss) / ref_loss, "grad": _rel_err(grads, ref_grads),
                                       "param": _rel_err(params, ref_params)}
        engine.destroy()
    return results


def test_ulysses_hybrid_step_matches_full_sequence_reference():
    for rank, per_rank in enumerate(run_distributed(_hybrid_cases, HYBRID[0])):
        for case, err in per_rank.items():
            assert err["loss"] < 1e-5 and err["grad"] < 1e-4 and err["param"] < 1e-4, (rank, case, err)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_distributed(_cases, CP * DP, STAGES, str(tmp_path_factory.mktemp("ds_example")))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cp_training_step_matches_full_sequence_reference(results, stage, algorithm):
    for rank, per_rank in enumerate(results):
        err = per_rank[(stage, algorithm)]
        assert err["loss"] < 1e-5, (rank, err)
        assert err["grad"] < 1e-4, (rank, err)
        assert err["param"] < 1e-4, (rank, err)


def test_deepspeed_zero3_averages_cp_gradients(results):
    """The fact initialize compensates for: with our mpu and parameters partitioned over DP x CP, ZeRO-3
    alone yields the full gradient / CP (an average over CP ranks). ZeRO 0-2 sum over CP ranks, which is
    why the uncompensated (factor 1) cases above match the reference there."""
    for per_rank in results:
        err = per_rank[(3, "raw")]
        assert err["grad_times_cp"] < 1e-4 and err["grad"] > 0.5, err


def test_groups_are_contiguous_cp_blocks_and_deepspeed_sees_dp(results):
    for rank, per_rank in enumerate(results):
        for case, layout in per_rank["layout"].items():
            block = rank // CP * CP
            assert layout["cp"] == list(range(block, block + CP)), (rank, case)
            assert layout["dp"] == list(range(rank % CP, CP * DP, CP)), (rank, case)
            if case[1] != "raw":
                assert layout["ds"] == (DP, CP * DP, CP, BATCH * DP), (rank, case)


def test_example_trains_checkpoints_and_resumes(results):
    run = results[0]["example"]
    assert len(run["first"]) == 2 and len(run["resumed"]) == 3 and run["resumed"][:2] == run["first"]
    assert all(math.isfinite(x) for x in run["resumed"]) and run["resumed"][0] > run["resumed"][2]
    assert run["resumed"] == pytest.approx(run["straight"], rel=1e-6)
    assert run["curve"] and run["saved"] == ["step000001", "step000002", "step000003"] and run["run_file"]
    assert all(per_rank["example"]["resumed"] == run["resumed"] for per_rank in results)
