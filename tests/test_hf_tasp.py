"""Hugging Face Llama with ``attn_implementation="tasp"`` under CP equals the plain model on the full
sequence (logits, loss, every gradient), and the batch adapter shifts labels before sharding."""

from __future__ import annotations

import pytest
import torch

from tasp_plugin.sharding import shard_sequence, unshard_sequence
from tests.distributed import run_distributed

pytest.importorskip("transformers")

CP, BATCH, SEQ, VOCAB = 3, 2, 24, 64
ALGORITHMS = ("ring", "zigzag", "hamilton")


def _llama(attn: str, dropout: float = 0.0) -> torch.nn.Module:
    """A tiny random Llama with GQA (4 query heads, 2 K/V heads) in float64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                      attention_dropout=dropout, attn_implementation=attn)
    return LlamaForCausalLM(cfg).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels = input_ids.clone()
    labels[0, 5:9] = -100
    return input_ids, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _worker(rank: int, world: int) -> dict:
    """Every algorithm against the sdpa model, plus the errors tasp attention must raise."""
    import torch.distributed as dist

    from tasp_plugin.integrations.attention import install_context_parallel
    from tasp_plugin.integrations.hf import register_tasp_attention, shard_causal_lm_batch

    register_tasp_attention()
    torch.manual_seed(0)
    reference = _llama("sdpa")
    input_ids, labels = _batch()
    ref = reference(input_ids=input_ids, labels=labels)
    ref.loss.backward()
    results = {}
    for algorithm in ALGORITHMS:
        install_context_parallel(None, algorithm)
        model = _llama("tasp")
        model.load_state_dict(reference.state_dict())
        out = model(**shard_causal_lm_batch(input_ids, labels, cp_rank=rank, cp_size=world))
        out.loss.backward()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = _rel(p.grad, dict(reference.named_parameters())[name].grad)
        results[algorithm] = {"logits": _rel(out.logits, shard_sequence(ref.logits, rank, world, 1)),
                              "loss": abs(loss.item() - ref.loss.item()) / ref.loss.item(),
                              "grad": max(grads.values()), "implementation": model.config._attn_implementation}
    shard = shard_causal_lm_batch(input_ids, cp_rank=rank, cp_size=world)
    for case, build, extra in (
            ("padding", lambda: _llama("tasp"), {"attention_mask": torch.ones_like(shard["input_ids"]).tril()}),
            ("dropout", lambda: _llama("tasp", dropout=0.1).train(), {})):
        try:
            build()(**shard, **extra)
            results[case] = "no error"
        except ValueError as exc:
            results[case] = str(exc)
    return results


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_distributed(_worker, CP)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_llama_tasp_matches_plain_model(results, algorithm):
    for rank, per_rank in enumerate(results):
        err = per_rank[algorithm]
        assert err["implementation"] == "tasp"
        # transformers computes the loss in float32 (logits.float()); everything else runs in float64
        assert err["logits"] < 1e-10 and err["loss"] < 1e-6 and err["grad"] < 1e-9, (rank, err)


@pytest.mark.distributed
@pytest.mark.slow
def test_llama_tasp_rejects_padding_and_dropout(results):
    for per_rank in results:
        assert "padded batches" in per_rank["padding"]
        assert "attention dropout" in per_rank["dropout"]


def test_shard_causal_lm_batch_shifts_labels_before_sharding():
    from tasp_plugin.integrations.hf import shard_causal_lm_batch

    input_ids, labels = _batch()
    shards = [shard_causal_lm_batch(input_ids, labels, cp_rank=r, cp_size=CP) for r in range(CP)]
    full_labels = unshard_sequence([s["labels"] for s in shards], seq_dim=1)
    assert torch.equal(full_labels[:, :-1], labels[:, 1:])
    assert (full_labels[:, -1] == -100).all()
    assert torch.equal(unshard_sequence([s["input_ids"] for s in shards], 1), input_ids)
    assert torch.equal(unshard_sequence([s["position_ids"] for s in shards], 1)[0], torch.arange(SEQ))
    assert all(s["shift_labels"] is s["labels"] for s in shards)
    assert all(s["num_items_in_batch"].item() == (labels[:, 1:] != -100).sum().item() for s in shards)


def test_shard_causal_lm_batch_rejects_bad_shapes():
    from tasp_plugin.integrations.hf import shard_causal_lm_batch

    input_ids, labels = _batch()
    with pytest.raises(ValueError, match="labels"):
        shard_causal_lm_batch(input_ids, labels[:, 1:], cp_rank=0, cp_size=CP)
    with pytest.raises(ValueError, match="divisible by 2 \\* cp_size"):
        shard_causal_lm_batch(input_ids[:, :-1], cp_rank=0, cp_size=CP)
