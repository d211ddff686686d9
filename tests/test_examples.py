"""The pretraining examples' launching process, without training: one flag vocabulary, the layout each shipped
config names, one-line argument errors before any worker starts, and the checkpoint rules (never overwrite,
never continue a run with different settings, never unpickle code)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tasp_plugin.training.checkpoint import checkpoint_path, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEGATRON = os.path.join(REPO, "examples", "megatron", "pretrain_gpt.py")
DEEPSPEED = os.path.join(REPO, "examples", "deepspeed", "pretrain_llama.py")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _load(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def gpt(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return _load(MEGATRON)


@pytest.fixture
def llama(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return _load(DEEPSPEED)


def _flags(parser) -> dict[str, object]:
    return {a.option_strings[-1]: a.choices for a in parser._actions if a.option_strings}


def test_both_examples_share_one_flag_vocabulary(gpt, llama):
    from tasp_plugin.planning import Algorithm

    megatron, deepspeed = _flags(gpt.build_parser()), _flags(llama.build_parser())
    shared = ("--seq-length", "--context-parallel-size", "--cp-comm-type", "--train-iters", "--save", "--load",
              "--save-interval", "--micro-batch-size", "--global-batch-size", "--lr", "--seed", "--data-path",
              "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--num-query-groups",
              "--world-size", "--topology", "--device", "--max-corpus-bytes", "--weight-decay")
    for name in shared:
        assert name in megatron and name in deepspeed and megatron[name] == deepspeed[name], name
    assert tuple(megatron["--cp-comm-type"]) == (*Algorithm.values(), "p2p")
    assert set(megatron) - set(deepspeed) == {"--config", "--dtype"}
    assert set(deepspeed) - set(megatron) == {"--deepspeed-config", "--zero-stage", "--local_rank"}
    old = ("--train-steps", "--resume", "--out-dir", "--seq-len", "--steps", "--cp-size", "--algorithm", "--layers",
           "--hidden", "--heads", "--kv-heads")
    assert not set(old) & (set(megatron) | set(deepspeed))


def test_megatron_defaults_and_derived_settings(gpt):
    cfg = gpt.parse_config([])
    assert (cfg["world_size"], cfg["context_parallel_size"], cfg["cp_comm_type"], cfg["seq_length"]) == \
        (8, 8, "hamilton", 256)
    assert (cfg["micro_batch_size"], cfg["global_batch_size"], cfg["train_iters"], cfg["ffn_hidden_size"]) == \
        (4, 4, 40, 256)
    assert cfg["save"] == "tasp_megatron_run" and cfg["load"] is None
    for cp, seq in ((3, 258), (5, 260), (6, 264), (7, 266)):  # the default sequence length fits every CP size
        cfg = gpt.parse_config(["--world-size", str(cp), "--context-parallel-size", str(cp)])
        assert cfg["seq_length"] == seq
    cfg = gpt.parse_config(["--world-size", "8", "--context-parallel-size", "4"])
    assert (cfg["micro_batch_size"], cfg["global_batch_size"]) == (2, 4)


def test_megatron_json_config_uses_the_flag_names(gpt, tmp_path):
    shipped = json.load(open(os.path.join(REPO, "configs", "megatron", "tiny_cp8_hamilton.json")))
    actions = {a.dest for a in gpt.build_parser()._actions}
    assert set(shipped) <= actions and "train_iters" in shipped
    (tmp_path / "data.txt").write_bytes(b"hello world " * 100)
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({**shipped, "train_iters": 7, "data_path": "data.txt", "seq_length": 32}))
    cfg = gpt.parse_config(["--config", str(cfg_file), "--seed", "9"])
    assert cfg["train_iters"] == 7 and cfg["seed"] == 9 and cfg["data_path"] == str(tmp_path / "data.txt")


def _layout(cfg: dict) -> tuple:
    return (cfg["world_size"], cfg["context_parallel_size"], cfg["world_size"] // cfg["context_parallel_size"],
            cfg["cp_comm_type"], cfg["zero_stage"])


@pytest.mark.parametrize("name, layout", [
    ("cp4_zigzag_dp2_zero2", (8, 4, 2, "zigzag", 2)),
    ("cp8_hamilton_zero1", (8, 8, 1, "hamilton", 1)),
    ("cp8_hamilton_zero3", (8, 8, 1, "hamilton", 3)),
])
def test_each_shipped_deepspeed_config_gives_the_layout_its_name_says(llama, name, layout):
    cfg = llama.parse_config(["--deepspeed-config", os.path.join(REPO, "configs", "deepspeed", f"{name}.json")])
    assert _layout(cfg) == layout
    ds = cfg["ds_config"]
    dp = layout[2]
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * dp
    assert ds["context_parallel"] == {"size": layout[1], "algorithm": layout[3]}


def test_every_shipped_deepspeed_config_is_covered():
    shipped = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "deepspeed")))
    assert shipped == ["cp4_zigzag_dp2_zero2", "cp8_hamilton_zero1", "cp8_hamilton_zero3"]


def test_deepspeed_flags_override_the_config(llama):
    cfg = llama.parse_config(["--context-parallel-size", "2", "--cp-comm-type", "p2p", "--zero-stage", "3",
                              "--world-size", "4", "--lr", "0.01", "--micro-batch-size", "3"])
    assert _layout(cfg) == (4, 2, 2, "zigzag", 3) and cfg["seq_length"] == 512
    ds = cfg["ds_config"]
    assert ds["optimizer"]["params"]["lr"] == 0.01 and ds["zero_optimization"]["stage"] == 3
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (3, 6)
    cfg = llama.parse_config(["--context-parallel-size", "3"])
    assert cfg["world_size"] == 3 and cfg["seq_length"] == 516


def test_deepspeed_under_a_launcher_takes_its_world_size(llama, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = llama.parse_config(["--context-parallel-size", "2"])
    assert _layout(cfg) == (2, 2, 1, "hamilton", 1)


ERRORS = [
    (["--cp-comm-type", "hamiltonian"], "argument --cp-comm-type: invalid choice"),
    (["--data-path", "no/such/file.txt"], "--data-path no/such/file.txt is not a file"),
    (["--seq-length", "100"], "--seq-length 100 is not a multiple of 2 x --context-parallel-size = 16"),
    (["--world-size", "6", "--context-parallel-size", "4"], "world size 6 is not a multiple of"),
    (["--context-parallel-size", "4", "--cp-comm-type", "hamilton_flat", "--world-size", "4"],
     "K\\*_4 has no decomposition"),
    (["--global-batch-size", "3", "--context-parallel-size", "4", "--world-size", "8"],
     "--global-batch-size 3 does not divide"),
    (["--num-query-groups", "3"], "--num-query-groups 3 must divide --num-attention-heads"),
    (["--train-steps", "3"], "unrecognized arguments: --train-steps 3"),
]


@pytest.mark.parametrize("example", ["gpt", "llama"])
@pytest.mark.parametrize("argv, message", ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_argument_errors_are_one_line_before_any_worker(request, monkeypatch, capsys, example, argv, message):
    module = request.getfixturevalue(example)
    monkeypatch.setattr("tasp_plugin.training.launch.run_local", lambda *a, **k: pytest.fail("a worker started"))
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{module.build_parser().prog}: error: ")
    assert __import__("re").search(message, err), err


def test_deepspeed_config_errors(llama, tmp_path, capsys):
    ds = json.load(open(os.path.join(REPO, "configs", "deepspeed", "cp4_zigzag_dp2_zero2.json")))
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**ds, "gradient_accumulation_steps": 2}))
    with pytest.raises(SystemExit):
        llama.parse_config(["--deepspeed-config", str(path)])
    assert "gradient_accumulation_steps must be 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        llama.parse_config(["--deepspeed-config", str(path.with_name("missing.json"))])
    assert "cannot read --deepspeed-config" in capsys.readouterr().err
    path.write_text(json.dumps(ds))
    with pytest.raises(SystemExit):  # 12 ranks of CP 4 = DP 3, but the config fixes micro 2 x DP 2 = 4
        llama.parse_config(["--deepspeed-config", str(path), "--world-size", "12"])
    err = capsys.readouterr().err
    assert "--global-batch-size 4 is not --micro-batch-size 2 x data-parallel size 3" in err
    assert "train_batch_size" in err


# --- checkpoints: where a run starts ---------------------------------------------------------------------------


def _megatron_checkpoint(gpt, cfg: dict, step: int, directory: str) -> None:
    save_checkpoint(checkpoint_path(directory, step), model=torch.nn.Linear(1, 1), optimizer=None, step=step,
                    losses=[1.0] * step, extra={"run": gpt.run_config(cfg)})


def test_megatron_rerun_into_a_used_save_dir_is_refused(gpt, tmp_path, monkeypatch, capsys):
    save = str(tmp_path / "run")
    cfg = gpt.parse_config(["--save", save, "--max-corpus-bytes", "100000"])
    gpt.plan_run(cfg)
    assert cfg["resume"] is None and cfg["data"]["bytes"] == 100000
    _megatron_checkpoint(gpt, cfg, 20, save)
    monkeypatch.setattr("tasp_plugin.training.launch.run_local", lambda *a, **k: pytest.fail("a worker started"))
    with pytest.raises(SystemExit) as exc:
        gpt.main(["--save", save, "--max-corpus-bytes", "100000"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert f"--save {save} already holds checkpoints (latest: step 20); pass --load {save} to continue" in err
    resumed = gpt.parse_config(["--save", save, "--load", save, "--max-corpus-bytes", "100000"])
    gpt.plan_run(resumed)
    assert resumed["resume"] == {"path": checkpoint_path(save, 20), "step": 20}


def test_megatron_resume_with_other_settings_names_each_difference(gpt, tmp_path):
    save = str(tmp_path / "run")
    data = tmp_path / "a.txt"
    data.write_bytes(b"0123456789" * 100)
    base = ["--save", save, "--load", save, "--data-path", str(data), "--seq-length", "32"]
    cfg = gpt.parse_config(base)
    gpt.plan_run(cfg)
    _megatron_checkpoint(gpt, cfg, 20, save)
    ok = gpt.parse_config(base + ["--train-iters", "60", "--save-interval", "5", "--cp-comm-type", "ring",
                                  "--world-size", "16", "--global-batch-size", "4"])
    gpt.plan_run(ok)  # these may change
    data.write_bytes(b"0123456789" * 99)
    changed = gpt.parse_config(base[:-1] + ["64", "--context-parallel-size", "4", "--num-layers", "3",
                                            "--seed", "5", "--dtype", "float64", "--lr", "0.1"])
    with pytest.raises(ValueError) as err:
        gpt.plan_run(changed)
    for part in ("--seq-length: 64 here, 32 in the checkpoint", "--context-parallel-size: 4 here, 8",
                 "--num-layers: 3 here, 2", "--seed: 5 here, 1234", "--dtype: 'float64' here, 'float32'",
                 "--lr: 0.1 here, 0.003",
                 "data (--data-path and its content)", "990 bytes"):
        assert part in str(err.value)
    data.write_bytes(b"0123456789" * 100)
    with pytest.raises(ValueError, match="--train-iters 10 is below the step 20"):
        gpt.plan_run(gpt.parse_config(base + ["--train-iters", "10"]))


def test_megatron_refuses_a_checkpoint_that_pickles_code(gpt, tmp_path):
    save = str(tmp_path / "run")
    cfg = gpt.parse_config(["--save", save, "--load", save, "--max-corpus-bytes", "100000"])
    gpt.plan_run(cfg)
    os.makedirs(save)
    torch.save({"step": 5, "extra": {"run": gpt.run_config(cfg)}, "hook": os.system}, checkpoint_path(save, 5))
    with pytest.raises(ValueError, match="refusing to load checkpoint .*ckpt_step000005.pt"):
        gpt.plan_run(cfg)


def test_megatron_nothing_to_train_at_the_checkpoint_step(gpt, tmp_path, monkeypatch, capsys):
    save = str(tmp_path / "run")
    cfg = gpt.parse_config(["--save", save, "--max-corpus-bytes", "100000"])
    gpt.plan_run(cfg)
    _megatron_checkpoint(gpt, cfg, 40, save)
    monkeypatch.setattr("tasp_plugin.training.launch.run_local", lambda *a, **k: pytest.fail("a worker started"))
    gpt.main(["--save", save, "--load", save, "--max-corpus-bytes", "100000"])
    assert "is already at --train-iters 40: nothing to train" in capsys.readouterr().out


def _deepspeed_checkpoint(llama, cfg: dict, step: int, payload=None) -> None:
    tag = os.path.join(cfg["save"], f"step{step:06d}")
    os.makedirs(tag)
    with open(os.path.join(tag, llama.RUN_FILE), "w") as fh:
        json.dump({"step": step, "run": llama.run_config(cfg)}, fh)
    torch.save({"module": {"w": torch.ones(1)}, "step": step, **(payload or {})},
               os.path.join(tag, "mp_rank_00_model_states.pt"))
    with open(os.path.join(cfg["save"], "latest"), "w") as fh:
        fh.write(f"step{step:06d}")


def test_deepspeed_checkpoint_rules(llama, tmp_path):
    save = str(tmp_path / "run")
    common = ["--save", save, "--max-corpus-bytes", "100000", "--context-parallel-size", "2"]
    cfg = llama.parse_config(common)
    llama.plan_run(cfg)
    assert cfg["resume"] is None
    _deepspeed_checkpoint(llama, cfg, 10)
    with pytest.raises(ValueError, match=f"--save {save} already holds checkpoints .latest: step 10."):
        llama.plan_run(llama.parse_config(common))
    resumed = llama.parse_config(common + ["--load", save, "--train-iters", "20"])
    llama.plan_run(resumed)
    assert resumed["resume"] == {"dir": save, "tag": "step000010", "step": 10}
    with pytest.raises(ValueError, match="--zero-stage: 3 here, 1 in the checkpoint; --world-size: 4 here, 2"):
        llama.plan_run(llama.parse_config(common + ["--load", save, "--zero-stage", "3", "--world-size", "4"]))


def test_deepspeed_refuses_a_checkpoint_that_pickles_code(llama, tmp_path):
    save = str(tmp_path / "run")
    cfg = llama.parse_config(["--save", save, "--load", save, "--max-corpus-bytes", "100000",
                              "--context-parallel-size", "2"])
    llama.plan_run(cfg)
    _deepspeed_checkpoint(llama, cfg, 10, payload={"hook": os.system})
    with pytest.raises(ValueError, match="refusing to load checkpoint .*mp_rank_00_model_states.pt: it pickles"):
        llama.plan_run(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("script", [MEGATRON, DEEPSPEED])
def test_cli_error_is_one_line_and_quick(script, tmp_path):
    """As a user runs it: the launching process answers a bad setting in one line (no worker output)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    argv = ["--world-size", "3", "--context-parallel-size", "3", "--seq-length", "256"]
    proc = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "use 252 or 258" in proc.stderr, proc.stderr


def _final_loss(script: str, save: str, *argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    done = subprocess.run([sys.executable, script, "--train-iters", "3", "--seq-length", "64", "--save", save,
                           *argv], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(line for line in done.stdout.splitlines() if line.startswith("final loss")).split()[2]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("script", [MEGATRON, DEEPSPEED], ids=["megatron", "deepspeed"])
def test_examples_train_on_packed_documents_as_at_cp1(script, tmp_path):
    """--reset-attention-mask: short NUL-separated documents; CP = 2 trains exactly as CP = 1, and not as the
    unpacked run (so the documents were really cut)."""
    gen = torch.Generator().manual_seed(0)
    docs = [bytes(torch.randint(97, 123, (int(n),), generator=gen).tolist())
            for n in torch.randint(5, 60, (400,), generator=gen)]
    data = tmp_path / "docs.txt"
    data.write_bytes(b"\0".join(docs))
    common = ("--data-path", str(data))
    packed = [_final_loss(script, str(tmp_path / f"cp{cp}"), "--world-size", str(cp), "--context-parallel-size",
                          str(cp), "--reset-attention-mask", *common) for cp in (1, 2)]
    plain = _final_loss(script, str(tmp_path / "plain"), "--world-size", "2", "--context-parallel-size", "2", *common)
    assert packed[0] == packed[1] != plain, (packed, plain)
