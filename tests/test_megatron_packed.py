"""TASPCoreAttention on packed documents (Megatron's ``packed_seq_params``, ``qkv_format="thd"``): out and
q/k/v gradients of every rank against float64 attention of each document alone, at CP = 1, 2, 3, 4."""

import pytest
import torch

pytest.importorskip("megatron.core")

from tasp_plugin.sharding import cu_seqlens_of, padded_document_lengths, shard_packed

from .distributed import run_distributed
from .test_packed_engine import packed_reference

DOCS = [5, 19, 2, 30]


def _packed_case(rank, n, algorithm, causal, hierarchical=None):
    import torch.distributed as dist
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from tasp_plugin.integrations.megatron import TASPCoreAttention

    torch.manual_seed(5)
    h, hkv, d = 4, 2, 8
    cu = cu_seqlens_of(padded_document_lengths(DOCS, n))
    q, k, v = (torch.randn(cu[-1], heads, d, dtype=torch.float64, requires_grad=True) for heads in (h, hkv, hkv))
    ref, _ = packed_reference(q, k, v, cu, causal, d ** -0.5)
    ref.square().sum().backward()
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=h, num_query_groups=hkv,
                               context_parallel_size=n, cp_comm_type=algorithm, attention_dropout=0.0,
                               cuda_graph_scope=[], hierarchical_context_parallel_sizes=hierarchical)
    pg = ProcessGroupCollection(cp=dist.group.WORLD) if n > 1 else None
    attn = TASPCoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal if causal else
                             AttnMaskType.no_mask, attention_type="self", pg_collection=pg)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t, cu_seqlens_q_padded=cu_t,
                             cu_seqlens_kv_padded=cu_t, max_seqlen_q=max(DOCS), max_seqlen_kv=max(DOCS))
    local = [shard_packed(x.detach(), cu, rank, n, 0).requires_grad_(True) for x in (q, k, v)]
    out = attn(*local, None, packed_seq_params=params)
    assert out.shape == (local[0].shape[0], h * d)
    out.square().sum().backward()
    errors = [(out - shard_packed(ref.reshape(cu[-1], -1), cu, rank, n, 0)).abs().max().item()]
    errors += [(x.grad - shard_packed(r.grad, cu, rank, n, 0)).abs().max().item()
               for x, r in zip(local, (q, k, v), strict=True)]
    return max(errors)


@pytest.mark.distributed
@pytest.mark.parametrize("n,algorithm,causal", [(1, "hamilton", True), (2, "hamilton", True), (3, "hamilton", True),
                                                (3, "ring", False), (4, "zigzag", True)])
def test_core_attention_on_packed_documents_matches_per_document_attention(n, algorithm, causal):
    assert max(run_distributed(_packed_case, n, algorithm, causal)) < 1e-10


@pytest.mark.distributed
@pytest.mark.parametrize("algorithm,hierarchical,causal", [("a2a", None, True), ("a2a+hamilton", [2, 2], False)])
def test_hybrid_core_attention_on_packed_documents(algorithm, hierarchical, causal):
    """Megatron's a2a / a2a+hamilton with packed_seq_params (CP 4): per-document attention, exact."""
    assert max(run_distributed(_packed_case, 4, algorithm, causal, hierarchical)) < 1e-10


def _gpt_packed(rank, world, cp, algorithm):
    """Loss and all-reduced gradients of one packed step of the example's GPTModel at CP = ``cp``."""
    import warnings

    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.packed_seq_params import PackedSeqParams

    from tasp_plugin.training.batch import packed_batch_for_cp
    from tests.test_megatron_distributed import load_example

    warnings.filterwarnings("ignore")
    example = load_example()
    ps.initialize_model_parallel(context_parallel_size=cp, create_gloo_process_groups=False)
    cfg = example.parse_config(["--world-size", str(world), "--context-parallel-size", str(cp), "--num-layers", "2",
                                "--hidden-size", "32", "--ffn-hidden-size", "64", "--dtype", "float64",
                                "--global-batch-size", "2"])
    cfg["cp_comm_type"] = algorithm
    model = example.build_model(cfg, torch.device("cpu"))
    tokens = torch.randint(1, 50, (2, 41), generator=torch.Generator().manual_seed(1))
    tokens[0, [6, 20, 21, 30]] = 10
    tokens[1, [3, 39]] = 10
    batch = packed_batch_for_cp(tokens, 10, ps.get_context_parallel_rank(), cp)
    cu = batch["cu_seqlens"]
    longest = int((cu[1:] - cu[:-1]).max())
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                             cu_seqlens_kv_padded=cu, max_seqlen_q=longest, max_seqlen_kv=longest)
    per_token = model(batch["input_ids"], batch["position_ids"], None, labels=batch["labels"],
                      packed_seq_params=params)
    loss = (per_token * batch["loss_mask"]).sum()
    loss.backward()
    dist.all_reduce(loss)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    ps.destroy_model_parallel()
    return loss.item(), grads


@pytest.mark.distributed
@pytest.mark.slow
def test_gpt_model_on_packed_documents_matches_cp1():
    ref_loss, ref_grads = run_distributed(_gpt_packed, 1, 1, "hamilton")[0]
    for cp, algorithm in ((2, "hamilton"), (4, "zigzag"), (8, "hamilton")):
        loss, grads = run_distributed(_gpt_packed, cp, cp, algorithm)[0]
        # Megatron's cross entropy runs in float32 (the model in float64)
        assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss), (cp, loss, ref_loss)
        errors = {name: ((grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item()
                  for name, g in ref_grads.items()}
        assert max(errors.values()) < 1e-6, (cp, errors)


def _example_step_loss(rank, world):
    """The example's packed train_step loss against each document run alone through the same model (mean
    over the predictions that stay inside a document)."""
    import warnings

    from megatron.core import parallel_state as ps

    from tests.test_megatron_distributed import load_example

    warnings.filterwarnings("ignore")
    example = load_example()
    ps.initialize_model_parallel(context_parallel_size=1, create_gloo_process_groups=False)
    cfg = example.parse_config(["--world-size", "1", "--context-parallel-size", "1", "--num-layers", "2",
                                "--hidden-size", "32", "--ffn-hidden-size", "64", "--dtype", "float64"])
    model = example.build_model(cfg, torch.device("cpu"))
    tokens = torch.randint(1, 50, (2, 41), generator=torch.Generator().manual_seed(2))
    tokens[0, [6, 20, 21, 30]] = 0
    tokens[1, [3, 40]] = 0
    total, count = 0.0, 0
    with torch.no_grad():
        for row in tokens:
            inputs, labels = row[:-1], row[1:]
            ends = [i + 1 for i in (inputs == 0).nonzero().flatten().tolist()]
            for a, b in zip([0, *ends], [*ends, inputs.numel()], strict=True):
                if b <= a:
                    continue
                pad = (b - a) % 2  # the engine takes even lengths; a pad token at the end is seen by nothing
                x, y = (torch.nn.functional.pad(t[a:b], (0, pad)) for t in (inputs, labels))
                per_token = model(x[None], torch.arange(b - a + pad)[None], None, labels=y[None])[0][:b - a]
                keep = per_token if inputs[b - 1] != 0 else per_token[:-1]
                total, count = total + keep.sum().item(), count + keep.numel()
    loss = example.train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), tokens, eod=0)
    ps.destroy_model_parallel()
    return loss, total / count


@pytest.mark.distributed
def test_example_packed_loss_is_the_mean_over_predictions_inside_documents():
    loss, reference = run_distributed(_example_step_loss, 1)[0]
    assert abs(loss - reference) <= 1e-6 * reference, (loss, reference)
