"""Megatron-LM's own loop (``examples/megatron/pretrain_gpt_megatron_lm.py``) on CPU, up to the point where
``initialize_megatron`` asserts CUDA: the documented command lines parse and pass Megatron's checks, ``--spec``
loads the TASP layer spec, the model config builds a GPT whose attention slots hold ``TASPCoreAttention``,
one step of the example's forward function trains it, and bad TASP settings fail before ``pretrain``.
Also the version table of ``integrations.megatron.versions`` (on every supported megatron-core)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import types
import warnings

import pytest
import torch

pytest.importorskip("megatron.core")
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402

from tasp_plugin.integrations.megatron import TASPCoreAttention, TASPTransformerLayer, tasp_gpt_layer_spec  # noqa: E402
from tasp_plugin.integrations.megatron.megatron_lm import check_megatron_lm_args  # noqa: E402
from tasp_plugin.integrations.megatron.versions import (  # noqa: E402
    CP_COMM_TYPE_LIST_OFF_BY_ONE,
    MEGATRON_CORE_VERSION,
    parse_version,
    require_megatron_training,
    use_shipped_dataset_helpers,
)
from tasp_plugin.planning import Algorithm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "megatron", "pretrain_gpt_megatron_lm.py")
HAS_TRAINING = MEGATRON_CORE_VERSION >= (0, 19) and importlib.util.find_spec("megatron.training") is not None
needs_training = pytest.mark.skipif(not HAS_TRAINING, reason="needs megatron.training (megatron-core >= 0.19)")


def test_version_strings_parse():
    assert parse_version("0.19.2") == (0, 19)
    assert parse_version("0.16.0rc0.dev100085") == (0, 16)
    with pytest.raises(ValueError, match="version"):
        parse_version("dev")


def test_layer_class_follows_the_per_layer_index_fix():
    """0.16 needs TASPTransformerLayer for per-layer cp_comm_type lists; 0.17+ index them right themselves."""
    expected = TASPTransformerLayer if CP_COMM_TYPE_LIST_OFF_BY_ONE else get_gpt_layer_local_spec().module
    assert tasp_gpt_layer_spec.module is expected
    assert CP_COMM_TYPE_LIST_OFF_BY_ONE == (MEGATRON_CORE_VERSION < (0, 17))


def test_the_newest_line_has_megatron_training():
    """CI's Python 3.12 line must run the Megatron-LM tests below, not skip them (pip resolves 0.19 there)."""
    if sys.version_info >= (3, 12):
        assert HAS_TRAINING, f"megatron-core {MEGATRON_CORE_VERSION} on Python 3.12: expected 0.19 with its loop"


def test_require_megatron_training_names_what_to_install():
    if HAS_TRAINING:
        require_megatron_training()
    else:
        with pytest.raises(ImportError, match="megatron-core>=0.19"):
            require_megatron_training()


def test_dataset_helper_build_uses_the_shipped_module(monkeypatch):
    """initialize_megatron runs `make` on megatron/core/datasets, whose Makefile the wheel leaves out (this
    failed the first GPU run of the example); with the compiled helper installed, nothing is built."""
    from megatron.core.datasets import utils

    if importlib.util.find_spec("megatron.core.datasets.helpers_cpp") is None:
        pytest.skip("this megatron-core has no compiled dataset helper")
    makefile = os.path.exists(os.path.join(os.path.dirname(utils.__file__), "Makefile"))
    monkeypatch.setattr(utils, "compile_helpers", utils.compile_helpers)  # restored after the test
    runs = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: runs.append(a) or types.SimpleNamespace(returncode=2))
    assert use_shipped_dataset_helpers() is not makefile
    if not makefile:
        utils.compile_helpers()
        assert runs == []


def _namespace(**overrides) -> argparse.Namespace:
    settings = {"cp_comm_type": ["hamilton"], "spec": ["tasp_plugin.integrations.megatron", "tasp_gpt_layer_spec"],
                "num_layers": 2, "attention_dropout": 0.0, "transformer_impl": "local", "no_persist_layer_norm": True,
                "gradient_accumulation_fusion": False, "reset_attention_mask": False,
                "create_attention_mask_in_dataloader": False, "context_parallel_size": 4,
                "hierarchical_context_parallel_sizes": None, **overrides}
    return argparse.Namespace(**settings)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"spec": None}, "--cp-comm-type hamilton needs --spec tasp_plugin.integrations.megatron tasp_gpt_layer_spec"),
    ({"spec": ["local"], "cp_comm_type": ["p2p", "zigzag"]}, "--cp-comm-type zigzag needs --spec"),
    ({"cp_comm_type": ["all_gather"]}, "--cp-comm-type all_gather is not supported with --spec"),
    ({"cp_comm_type": ["ring", "zigzag", "hamilton"]}, "3 values for 2 layers"),
    ({"cp_comm_type": ["a2a+hamilton"]}, "needs --hierarchical-context-parallel-sizes A R with A x R = "
                                         "--context-parallel-size 4"),
    ({"cp_comm_type": ["a2a+p2p"], "hierarchical_context_parallel_sizes": [2, 4]}, "got [2, 4]"),
    ({"attention_dropout": 0.1}, "--attention-dropout 0.1 is not supported"),
    ({"transformer_impl": "transformer_engine"}, "pass --transformer-impl local"),
    ({"no_persist_layer_norm": False}, "pass --no-persist-layer-norm"),
    ({"num_experts": 4}, "--num-experts (MoE) and --multi-latent-attention need a layer spec"),
    ({"multi_latent_attention": True}, "--num-experts (MoE) and --multi-latent-attention need a layer spec"),
    ({"reset_attention_mask": True}, "--reset-attention-mask and --dataloader-inter-document-masking"),
    ({"dataloader_inter_document_masking": True}, "--reset-attention-mask and --dataloader-inter-document"),
    ({"create_attention_mask_in_dataloader": True}, "pass --no-create-attention-mask-in-dataloader"),
    ({"gradient_accumulation_fusion": True}, "pass --no-gradient-accumulation-fusion"),
])
def test_bad_tasp_settings_raise_one_line(overrides, message):
    if "no_persist_layer_norm" in overrides or "gradient_accumulation_fusion" in overrides:
        if importlib.util.find_spec("apex") is not None:
            pytest.skip("Apex is installed: Megatron's fusions work with the TASP spec")
    with pytest.raises(ValueError, match=re.escape(message)):
        check_megatron_lm_args(_namespace(**overrides))


@pytest.mark.parametrize("overrides", [
    {},
    {"cp_comm_type": ["ring", "hamilton"]},
    {"cp_comm_type": "P2P"},
    {"cp_comm_type": ["a2a"]},
    {"cp_comm_type": ["a2a+hamilton"], "hierarchical_context_parallel_sizes": [2, 2]},
    {"spec": ["tasp_plugin.integrations.megatron.layer_spec", "tasp_gpt_layer_spec"]},
    {"spec": None, "cp_comm_type": ["p2p"], "attention_dropout": 0.1, "transformer_impl": "transformer_engine"},
])
def test_good_settings_pass(overrides):
    check_megatron_lm_args(_namespace(**overrides))


def documented_command_lines() -> list[list[str]]:
    """The arguments of every ``pretrain_gpt_megatron_lm.py`` command line in the README, the docs and the
    example's own docstring (backslash continuations joined)."""
    sources = [os.path.join(REPO, "README.md"), EXAMPLE,
               *(os.path.join(REPO, "docs", name) for name in sorted(os.listdir(os.path.join(REPO, "docs")))
                 if name.endswith(".md"))]
    commands = []
    for path in sources:
        text = open(path, encoding="utf-8").read().replace("\\\\\n", " ").replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line.split("#")[0]) if "pretrain_gpt_megatron_lm.py" in line else []
            if "torchrun" in words:
                commands.append(words[next(i for i, w in enumerate(words) if w.endswith("megatron_lm.py")) + 1:])
    return commands


def test_the_docs_show_the_megatron_lm_command_line():
    commands = documented_command_lines()
    assert len(commands) >= 3, "README, docs/MEGATRON.md and the example each show the torchrun line"
    for words in commands:
        assert "--spec" in words and "--cp-comm-type" in words


@pytest.fixture
def megatron_lm(monkeypatch):
    """The example module, with Megatron-LM's globals cleared afterwards and the environment of rank 0 of a
    2-process torchrun job; Megatron's one CUDA query in its argument checks answers "Hopper"."""
    from megatron.core.datasets import utils
    from megatron.training import arguments
    from megatron.training.global_vars import unset_global_variables

    monkeypatch.setattr(utils, "compile_helpers", utils.compile_helpers)  # main() may replace it
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    monkeypatch.setattr(arguments, "get_device_arch_version", lambda: 9)
    spec = importlib.util.spec_from_file_location("pretrain_gpt_megatron_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        unset_global_variables()


def _run_main(module, monkeypatch, words: list[str]) -> tuple:
    """``module.main()`` on ``words`` with ``pretrain`` recorded instead of run; returns its arguments."""
    calls = []
    monkeypatch.setattr(module, "pretrain", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt_megatron_lm.py", *words])
    module.main()
    (args, kwargs), = calls
    return args


@needs_training
@pytest.mark.parametrize("index", range(3))
def test_documented_command_line_reaches_pretrain(megatron_lm, monkeypatch, index):
    words = documented_command_lines()[index]
    config, provider, _, forward_step = _run_main(megatron_lm, monkeypatch, words)
    transformer = config.model.transformer
    assert config.model.transformer_layer_spec.submodules.self_attention.submodules.core_attention \
        is TASPCoreAttention
    assert transformer.context_parallel_size == int(words[words.index("--context-parallel-size") + 1])
    assert transformer.cp_comm_type == words[words.index("--cp-comm-type") + 1]
    assert provider is megatron_lm.datasets_provider and forward_step is megatron_lm.forward_step
    from megatron.core.datasets import utils

    assert utils.compile_helpers.__module__ == "tasp_plugin.integrations.megatron.versions"  # no `make`


def _benchmark():
    spec = importlib.util.spec_from_file_location("megatron_lm_gpu", os.path.join(REPO, "benchmarks",
                                                                                  "megatron_lm_gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reads_megatrons_log_line():
    """The line format of megatron.training's training_log, as 0.19 prints it."""
    line = (" [2026-11-30 10:00:00.000000] iteration       12/     100 | consumed samples:           48 | elapsed "
            "time per iteration (ms): 153.2 | throughput per GPU (TFLOP/s/GPU): 210.4 | learning rate: 2.9E-04 | "
            "global batch size:     4 | lm loss: 7.512345E+00 | loss scale: 1.0 | grad norm: 1.234 |")
    bench = _benchmark()
    records = bench.parse_log("noise\n" + line + "\n")
    assert records == [{"iteration": 12, "ms": 153.2, "loss": 7.512345, "tflops_per_gpu": 210.4}]
    summary = bench.summarize(records * 3, tokens_per_iteration=4 * 16384, warmup=0)
    assert summary["tokens_per_s"] == pytest.approx(4 * 16384 / 0.1532)


@needs_training
@pytest.mark.parametrize("name", ["hamilton", "zigzag", "a2a", "cp1"])
def test_benchmark_runs_pass_the_example_checks(megatron_lm, monkeypatch, name):
    gpus, words = _benchmark().command(name, 16384, 100, 4)
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    config, *_ = _run_main(megatron_lm, monkeypatch, words)
    assert config.model.transformer.context_parallel_size == gpus
    assert config.model.transformer.hidden_dropout == 0 == config.model.transformer.attention_dropout


@needs_training
def test_bad_settings_stop_before_pretrain(megatron_lm, monkeypatch):
    words = documented_command_lines()[0]
    words = [*words[:words.index("--spec")], *words[words.index("--spec") + 3:]]
    with pytest.raises(ValueError, match="needs --spec"):
        _run_main(megatron_lm, monkeypatch, words)


@needs_training
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU stop; on GPUs the loop runs (device runs)")
def test_pretrain_stops_at_the_cuda_assertion_on_cpu(megatron_lm, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt_megatron_lm.py", *documented_command_lines()[0]])
    with pytest.raises(AssertionError, match="Megatron requires CUDA"):
        megatron_lm.main()


@needs_training
def test_model_config_builds_tasp_attention_with_its_flags(megatron_lm, monkeypatch, single_rank_group):
    """CP = 1 on CPU: the model Megatron-LM's builder makes from the config the example hands to ``pretrain``
    (bf16, as documented, plus --qk-layernorm) has TASPCoreAttention and query/key norms in every layer, and
    one forward/backward through the example's loss function gives a finite loss and gradients everywhere."""
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.module import Float16Module

    from tasp_plugin.integrations.megatron import make_rotary_cpu_safe

    monkeypatch.setenv("WORLD_SIZE", "1")
    words = [*documented_command_lines()[0], "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads",
             "4", "--seq-length", "64", "--max-position-embeddings", "64", "--vocab-size", "128",
             "--context-parallel-size", "1", "--global-batch-size", "1", "--use-cpu-initialization", "--qk-layernorm"]
    config, *_ = _run_main(megatron_lm, monkeypatch, words)
    parallel_state.initialize_model_parallel()
    try:
        torch.manual_seed(0)
        model = config.model.get_builder_cls()(config.model).build_model(
            ProcessGroupCollection.use_mpu_process_groups(), pre_process=True, post_process=True)
        make_rotary_cpu_safe(model)
        model = Float16Module(config.model.transformer, model)  # what pretrain wraps a --bf16 model in
        attentions = [m for m in model.modules() if isinstance(m, TASPCoreAttention)]
        assert len(attentions) == 2 and all(a.algorithm is Algorithm.HAMILTON for a in attentions)
        norms = [type(m.q_layernorm).__name__ for m in model.modules() if hasattr(m, "q_layernorm")]
        assert len(norms) == 2 and "IdentityOp" not in norms, norms  # the spec was built for this config
        tokens = torch.randint(0, 128, (1, 64))
        positions = torch.arange(64).unsqueeze(0)
        mask = torch.ones(1, 64)
        output = model(tokens, positions, None, labels=tokens.roll(-1, 1), loss_mask=mask)
        loss, count, report = megatron_lm.loss_func(mask, output)
        (loss / count).backward()
        assert count == 64 and torch.isfinite(loss) and report["lm loss"][1] == 64
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    finally:
        parallel_state.destroy_model_parallel()
