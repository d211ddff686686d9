"""Hugging Face Llama with ``attn_implementation="tasp"`` on a packed batch under CP equals each document
run alone through the plain model: per-token logits, the loss (predictions stay inside documents), and
every gradient; at CP = 1 and 3, every algorithm."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_distributed
from tests.test_hf_tasp import VOCAB, _llama, _rel

pytest.importorskip("transformers")

LENGTHS = (7, 13, 2)


def _documents() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    return [torch.randint(1, VOCAB, (n,), generator=gen) for n in LENGTHS]


def _worker(rank: int, world: int, algorithm: str) -> dict:
    import torch.distributed as dist

    from tasp_plugin.integrations.attention import install_context_parallel
    from tasp_plugin.integrations.hf import register_tasp_attention, shard_packed_lm_batch
    from tasp_plugin.sharding import cu_seqlens_of, padded_document_lengths, shard_packed

    register_tasp_attention()
    torch.manual_seed(0)
    reference = _llama("sdpa")
    docs = _documents()
    # the reference: every document alone (its loss summed over documents, then the mean over predictions)
    total_loss, count, logits = 0.0, 0, []
    for doc in docs:
        out = reference(input_ids=doc[None])
        pred = out.logits[0, :-1]
        total_loss = total_loss + torch.nn.functional.cross_entropy(pred.float(), doc[1:], reduction="sum")
        count += doc.numel() - 1
        logits.append(out.logits[0])
    (total_loss / count).backward()
    install_context_parallel(None, algorithm)
    model = _llama("tasp")
    model.load_state_dict(reference.state_dict())
    batch = shard_packed_lm_batch(docs, cp_rank=rank, cp_size=world)
    out = model(**batch)
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    lengths = padded_document_lengths(LENGTHS, world)
    cu = cu_seqlens_of(lengths)
    real = torch.cat([torch.arange(n) < len(d) for n, d in zip(lengths, docs, strict=True)])
    padded_logits = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[0])) for x, n in
                               zip(logits, lengths, strict=True)])
    mine = shard_packed(real, cu, rank, world, 0)
    grads = {}
    for name, p in model.named_parameters():
        dist.all_reduce(p.grad)
        grads[name] = _rel(p.grad, dict(reference.named_parameters())[name].grad)
    return {"logits": _rel(out.logits[0][mine], shard_packed(padded_logits, cu, rank, world, 0)[mine]),
            "loss": abs(loss.item() - (total_loss / count).item()) / loss.item(), "grad": max(grads.values())}


@pytest.mark.distributed
@pytest.mark.parametrize("world,algorithm", [(1, "hamilton"), (3, "hamilton"), (3, "zigzag"), (2, "ring")])
def test_llama_on_packed_documents_equals_each_document_alone(world, algorithm):
    for rank, err in enumerate(run_distributed(_worker, world, algorithm)):
        assert err["logits"] < 1e-10 and err["loss"] < 1e-6 and err["grad"] < 1e-9, (rank, err)


def _positions_only(rank: int, world: int) -> dict:
    """Packed documents given only by restarting position_ids: at CP = 1 they are honoured (the same
    logits as with cu_seq_lens), under CP they raise instead of attending across documents."""
    from tasp_plugin.integrations.attention import install_context_parallel
    from tasp_plugin.integrations.hf import register_tasp_attention, shard_packed_lm_batch

    register_tasp_attention()
    install_context_parallel(None, "hamilton")
    torch.manual_seed(0)
    model = _llama("tasp")
    batch = shard_packed_lm_batch(_documents(), cp_rank=rank, cp_size=world)
    with_cu = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"]).logits
    try:
        positions = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    except ValueError as exc:
        return {"error": str(exc)}
    return {"diff": (positions - with_cu).abs().max().item()}


@pytest.mark.distributed
def test_restarting_position_ids_are_honoured_at_cp1_and_refused_under_cp():
    assert run_distributed(_positions_only, 1)[0]["diff"] == 0.0
    assert all("cu_seq_lens_q" in r["error"] for r in run_distributed(_positions_only, 2))


def _reused_positions(rank: int, world: int) -> bool:
    """A new position tensor over the memory of an earlier one (same address, shape and version, other
    values: here a NumPy array changed in between, as a reused allocation would be) is looked at afresh."""
    import numpy as np

    from tasp_plugin.integrations.attention import install_context_parallel
    from tasp_plugin.integrations.hf import register_tasp_attention

    register_tasp_attention()
    install_context_parallel(None, "hamilton")
    torch.manual_seed(0)
    model = _llama("tasp")
    ids = torch.randint(1, VOCAB, (1, 12))
    alone = torch.cat([model(input_ids=ids[:, :6]).logits, model(input_ids=ids[:, 6:]).logits], dim=1)
    memory = np.arange(12)[None]
    model(input_ids=ids, position_ids=torch.from_numpy(memory))  # one document: no restart
    memory[:] = np.arange(12)[None] % 6  # two documents, in the same memory
    packed = model(input_ids=ids, position_ids=torch.from_numpy(memory)).logits
    return torch.allclose(packed, alone, atol=1e-10)


@pytest.mark.distributed
def test_position_restarts_are_not_cached_across_tensors():
    assert run_distributed(_reused_positions, 1)[0]
