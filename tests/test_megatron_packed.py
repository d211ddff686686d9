"""TASPCoreAttention on packed documents (Megatron's ``packed_seq_params``, ``qkv_format="thd"``): out and
q/k/v gradients of every rank against float64 attention of each document alone, at CP = 1, 2, 3, 4."""

import pytest
import torch

pytest.importorskip("megatron.core")

from tasp_plugin.sharding import cu_seqlens_of, padded_document_lengths, shard_packed

from .distributed import run_distributed
from .test_packed_engine import packed_reference

DOCS = [5, 19, 2, 30]


def _packed_case(rank, n, algorithm, causal):
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
                               cuda_graph_scope=[])
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
    errors += [(x.grad - shard_packed(r.grad, cu, rank, n, 0)).abs().max().item() for x, r in zip(local, (q, k, v))]
    return max(errors)


@pytest.mark.distributed
@pytest.mark.parametrize("n,algorithm,causal", [(1, "hamilton", True), (2, "hamilton", True), (3, "hamilton", True),
                                                (3, "ring", False), (4, "zigzag", True)])
def test_core_attention_on_packed_documents_matches_per_document_attention(n, algorithm, causal):
    assert max(run_distributed(_packed_case, n, algorithm, causal)) < 1e-10
