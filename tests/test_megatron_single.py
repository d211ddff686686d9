"""Megatron-core integration in one process: argument checks, CP = 1 attention against float64 reference
attention, the layer spec as Megatron-LM's ``--spec`` loads it, CPU-safe RoPE, and the example script
end to end (torchrun-style in this process, and as a user launches it)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

from tasp_plugin.training.launch import free_port
from tests.reference import reference_attention

pytest.importorskip("megatron.core")
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

# E402 on purpose: these need megatron-core, so they come after the importorskip above (skips the module
# when it is absent) and after the filter for its import-time Transformer Engine / Apex warnings
from megatron.core.process_groups_config import ProcessGroupCollection  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402

from tasp_plugin.integrations.megatron import (  # noqa: E402
    CPUSafeRotaryEmbedding,
    TASPCoreAttention,
    layer_split,
    resolve_cp_comm_type,
    tasp_gpt_layer_spec,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides) -> TransformerConfig:
    settings = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_query_groups": 2,
                "attention_dropout": 0.0, "cuda_graph_scope": [], **overrides}
    return TransformerConfig(**settings)


def _attention(config=None, mask=AttnMaskType.causal, layer_number=1, **kwargs) -> TASPCoreAttention:
    return TASPCoreAttention(config or _config(), layer_number=layer_number, attn_mask_type=mask,
                             attention_type="self", **kwargs)


@pytest.mark.parametrize("mask", [AttnMaskType.padding, AttnMaskType.padding_causal, AttnMaskType.arbitrary])
def test_unsupported_mask_types_raise(mask):
    with pytest.raises(ValueError, match="attn_mask_type"):
        _attention(mask=mask)


def test_dropout_softmax_window_and_comm_type_errors():
    with pytest.raises(ValueError, match="config.attention_dropout"):
        _attention(_config(attention_dropout=0.1))
    with pytest.raises(ValueError, match="attention dropout 0.2 .* the attention_dropout argument"):
        _attention(attention_dropout=0.2)
    with pytest.raises(ValueError, match="sliding-window"):
        _attention(_config(window_size=(8, 0)))
    with pytest.raises(ValueError, match="cp_comm_type 'all_gather'"):
        _attention(cp_comm_type="all_gather")
    with pytest.raises(ValueError, match="'a2a\\+p2p' needs hierarchical_context_parallel_sizes"):
        layer_split("a2a+p2p", 1, 4, None)
    with pytest.raises(ValueError, match="whose product is the CP size 4"):
        layer_split("a2a+hamilton", 1, 4, [2, 4])
    with pytest.raises(ValueError, match="ulysses_size 8 must divide the 4 query heads"):  # at build, not in forward
        _attention(_config(context_parallel_size=8, cp_comm_type="a2a"))
    with pytest.raises(ValueError, match="2 entries"):
        resolve_cp_comm_type(["ring", "hamilton"], 3)


@pytest.mark.parametrize(("value", "hierarchical", "expected"), [
    ("hamilton", None, ("hamilton", 1)), ("p2p", None, ("zigzag", 1)), ("a2a", None, ("zigzag", 8)),
    ("A2A+P2P", [2, 4], ("zigzag", 2)), ("a2a+hamilton", [4, 2], ("hamilton", 4)),
])
def test_layer_split_follows_transformer_engine_names(value, hierarchical, expected):
    algorithm, ulysses = layer_split(value, 1, 8, hierarchical)
    assert (algorithm.value, ulysses) == expected


def test_forward_rejects_other_packed_formats_bias_and_padding_masks():
    from megatron.core.packed_seq_params import PackedSeqParams

    attn = _attention()
    q = torch.randn(8, 1, 4, 8)
    kv = torch.randn(8, 1, 2, 8)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="qkv_format 'sbhd'"):
        attn(q, kv, kv, None, packed_seq_params=PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu))
    padded = torch.tensor([0, 8], dtype=torch.int32)
    real = torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="attend to the padding"):
        attn(q[:, 0], kv[:, 0], kv[:, 0], None, attn_mask_type=AttnMaskType.no_mask,
             packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real,
                                               cu_seqlens_q_padded=padded, cu_seqlens_kv_padded=padded))
    with pytest.raises(ValueError, match="cu_seqlens_kv"):
        attn(q[:, 0], kv[:, 0], kv[:, 0], None, packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu))
    with pytest.raises(ValueError, match="attention_bias"):
        attn(q, kv, kv, None, attention_bias=torch.zeros(1))
    with pytest.raises(ValueError, match="attn_mask_type"):
        attn(q, kv, kv, None, attn_mask_type=AttnMaskType.padding)


def test_cp_comm_type_values():
    assert [resolve_cp_comm_type(v, 1) for v in ("hamilton", "RING", "zigzag", "auto", "p2p", None)] == [
        "hamilton", "ring", "zigzag", "auto", "zigzag", "auto"]
    assert resolve_cp_comm_type(["ring", "hamilton"], 2) == "hamilton"
    assert _attention(_config(cp_comm_type="ring")).algorithm == "ring"
    assert _attention(_config(cp_comm_type="ring"), cp_comm_type="zigzag").algorithm == "zigzag"


def _check_against_reference(attn: TASPCoreAttention, causal: bool, scale: float) -> None:
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(16, 2, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(16, 2, 2, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = attn(q, k, v, torch.ones(1, dtype=torch.bool))  # the mask tensor is not read (mask type rules)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    full = [t.detach().transpose(0, 1).clone().requires_grad_() for t in (q, k, v)]
    ref, _ = reference_attention(*full, causal=causal, scale=scale)
    ref = ref.transpose(0, 1).reshape(out.shape)
    (ref * grad).sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for mine, theirs in zip((q, k, v), full, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad.transpose(0, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask", [AttnMaskType.causal, AttnMaskType.no_mask])
def test_cp1_without_a_group_is_plain_attention(mask):
    _check_against_reference(_attention(mask=mask, softmax_scale=0.3), mask == AttnMaskType.causal, 0.3)


def test_cp1_group_runs_the_engine(single_rank_group):
    attn = _attention(_config(apply_query_key_layer_scaling=True), layer_number=2,
                      pg_collection=ProcessGroupCollection(cp=single_rank_group))
    assert attn.cp_group is single_rank_group
    _check_against_reference(attn, True, 8 ** -0.5)  # query-key layer scaling leaves the net scale alone


def test_cp_size_above_one_needs_a_group():
    with pytest.raises(ValueError, match="no CP group"):
        _attention(_config(context_parallel_size=2))


def test_layer_spec_is_what_spec_flag_loads_and_builds_a_gpt_model(single_rank_group):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.spec_utils import import_module

    loaded = import_module(("tasp_plugin.integrations.megatron", "tasp_gpt_layer_spec"))  # --spec MODULE NAME
    assert loaded is tasp_gpt_layer_spec
    config = _config(use_cpu_initialization=True, qk_layernorm=True, normalization="RMSNorm")
    built = tasp_gpt_layer_spec(config, vp_stage=None)
    assert built.submodules.self_attention.submodules.core_attention is TASPCoreAttention
    ps.initialize_model_parallel(create_gloo_process_groups=False)
    try:
        for spec in (loaded, built):
            model = GPTModel(config, spec, vocab_size=64, max_sequence_length=16, position_embedding_type="none")
            cores = [m for m in model.modules() if isinstance(m, TASPCoreAttention)]
            assert len(cores) == 2
            tokens = torch.randint(0, 64, (2, 16))
            loss = model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens)
            assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    finally:
        ps.destroy_model_parallel()


def test_layer_spec_rejects_multi_latent_attention():
    with pytest.raises(ValueError, match="multi-latent"):
        tasp_gpt_layer_spec(types.SimpleNamespace(multi_latent_attention=True))


@pytest.mark.parametrize("interleaved", [False, True])
def test_cpu_rotary_embedding_gives_each_rank_its_zigzag_positions(interleaved):
    rope = CPUSafeRotaryEmbedding(kv_channels=8, rotary_percent=1.0, rotary_interleaved=interleaved,
                                  use_cpu_initialization=True, cp_group=None)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    angles = torch.arange(16, dtype=torch.float32)[:, None] * inv_freq
    expected = angles.repeat_interleave(2, -1) if interleaved else torch.cat((angles, angles), -1)
    torch.testing.assert_close(rope(16)[:, 0, 0], expected)
    for rank in range(4):
        group = types.SimpleNamespace(size=lambda: 4, rank=lambda rank=rank: rank)
        positions = [rank * 2, rank * 2 + 1, 15 - rank * 2 - 1, 15 - rank * 2]  # blocks r and 2n-1-r
        torch.testing.assert_close(rope(16, cp_group=group)[:, 0, 0], expected[positions])


def test_example_under_torchrun_environment(tmp_path, monkeypatch, capsys):
    """``main`` as torchrun starts it (RANK/WORLD_SIZE set), one rank, CP = 1, in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_gpt_torchrun", os.path.join(
        REPO, "examples", "megatron", "pretrain_gpt.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    threads = torch.get_num_threads()
    try:
        example.main(["--context-parallel-size", "1", "--seq-length", "32", "--train-iters", "2",
                      "--max-corpus-bytes", "100000", "--save", str(tmp_path), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "1 ranks on cpu (gloo): CP=1, DP=1" in out and "schedule: none (CP = 1: plain attention on each rank)" in out
    assert out.strip().splitlines()[-1].startswith("final loss ") and "tokens/s" in out
    assert (tmp_path / "loss.png").is_file() and (tmp_path / "ckpt_step000002.pt").is_file()
    with pytest.raises(SystemExit):  # under torchrun the world size is the launcher's
        example.parse_config(["--world-size", "6", "--context-parallel-size", "4"])
    assert "differs from the launcher's WORLD_SIZE 1" in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.slow
def test_example_launches_its_own_processes(tmp_path):
    """The README command with 2 processes (CP = 2, Hamilton) and 2 steps, as a user runs it; a plain re-run
    into the same --save is refused in one line, --load continues it."""
    base = [sys.executable, os.path.join(REPO, "examples", "megatron", "pretrain_gpt.py"), "--world-size", "2",
            "--context-parallel-size", "2", "--seq-length", "32", "--max-corpus-bytes", "100000", "--save",
            str(tmp_path), "--device", "cpu"]
    cmd = [*base, "--train-iters", "2"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CP=2, DP=1" in proc.stdout and "schedule: hamilton -> hamilton_flat: K_2, 1 cycles" in proc.stdout
    assert proc.stdout.count("schedule:") == 1  # rank 0 only
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("done in") and lines[-2].startswith("final loss ") and "tokens/s" in lines[-2]
    state = torch.load(tmp_path / "ckpt_step000002.pt", weights_only=True)
    assert state["step"] == 2 and len(state["losses"]) == 2 and (tmp_path / "loss.png").is_file()
    assert state["extra"]["run"]["seq_length"] == 32 and state["extra"]["run"]["data"]["bytes"] == 100000
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == "" and again.stderr.count("\n") == 1
    assert "already holds checkpoints (latest: step 2)" in again.stderr
    more = subprocess.run([*base, "--train-iters", "4", "--load", str(tmp_path)], check=False, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "continuing from" in more.stdout and (tmp_path / "ckpt_step000004.pt").is_file()
