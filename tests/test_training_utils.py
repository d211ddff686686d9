"""The shared training helpers: offline corpus, byte tokenizer, resumable batches, CP batch sharding,
progress display, loss curve and checkpoints."""

from __future__ import annotations

import builtins
import random

import pytest
import torch

from tasp_plugin.sharding import unshard_sequence
from tasp_plugin.training.batch import shard_batch_for_cp
from tasp_plugin.training.checkpoint import load_checkpoint, save_checkpoint
from tasp_plugin.training.curves import save_loss_curve
from tasp_plugin.training.data import ByteTokenizer, load_corpus, token_batches
from tasp_plugin.training.progress import Progress


def test_default_corpus_is_standard_library_source_and_deterministic():
    data = load_corpus(max_bytes=50_000)
    assert len(data) == 50_000 and data == load_corpus(max_bytes=50_000)
    assert b"def " in data or b"import " in data


def test_corpus_from_a_file_and_errors(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"hello world\n" * 10)
    assert load_corpus(str(path), max_bytes=11) == b"hello world"
    with pytest.raises(ValueError, match="not a file"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="max_bytes"):
        load_corpus(max_bytes=0)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.encode("aé") == [97, 195, 169] and tok.decode([97, 195, 169]) == "aé"
    eos = ByteTokenizer(add_eos=True)
    assert eos.vocab_size == 257 and eos.encode(b"a") == [97, 256] and eos.decode([97, 256]) == "a"
    with pytest.raises(TypeError, match="text"):
        tok.encode(3)


def test_token_batches_are_windows_of_the_data_and_resume_exactly():
    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(5000))
    stream = token_batches(data, seq_len=16, batch_size=3, seed=5)
    first = [next(stream) for _ in range(4)]
    assert first[0].shape == (3, 17) and first[0].dtype == torch.long
    for row in first[2]:
        assert bytes(row.tolist()) in data
    resumed = token_batches(data, seq_len=16, batch_size=3, seed=5, start_step=2)
    assert torch.equal(next(resumed), first[2]) and torch.equal(next(resumed), first[3])
    assert not torch.equal(next(token_batches(data, 16, 3, seed=6)), first[0])
    with pytest.raises(ValueError, match="seq_len"):
        next(token_batches(b"abc", seq_len=8, batch_size=1, seed=0))


@pytest.mark.parametrize("cp_size", [1, 2, 3, 4])
def test_shard_batch_shifts_labels_before_zigzag_sharding(cp_size):
    tokens = torch.arange(2 * 25).view(2, 25)  # seq_len 24
    shards = [shard_batch_for_cp(tokens, r, cp_size) for r in range(cp_size)]
    whole = {k: unshard_sequence([s[k] for s in shards], seq_dim=1) for k in shards[0]}
    assert torch.equal(whole["input_ids"], tokens[:, :-1])
    assert torch.equal(whole["labels"], tokens[:, 1:])
    assert torch.equal(whole["position_ids"], torch.arange(24).expand(2, 24))
    assert torch.equal(whole["loss_mask"], torch.ones(2, 24))
    if cp_size == 2:  # rank 0 holds blocks 0 and 3 of 4
        assert shards[0]["position_ids"][0].tolist() == [*range(6), *range(18, 24)]
        assert torch.equal(shards[0]["labels"], shards[0]["input_ids"] + 1)


def test_shard_batch_errors():
    with pytest.raises(ValueError, match="2 \\* cp_size = 8"):
        shard_batch_for_cp(torch.zeros(1, 13, dtype=torch.long), 0, 4)
    with pytest.raises(TypeError, match="2-D"):
        shard_batch_for_cp(torch.zeros(13, dtype=torch.long), 0, 1)


def test_progress_plain_prints_without_tqdm(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with Progress(total=2) as bar:
        bar.update(2.5, tokens=100)
        bar.update(2.25, tokens=100)
    out = capsys.readouterr().out
    assert "step 1/2  loss 2.5000" in out and "step 2/2  loss 2.2500" in out and "tokens/s" in out
    with Progress(total=2, enabled=False) as quiet:
        quiet.update(1.0, tokens=1)
    assert capsys.readouterr().out == ""


def test_progress_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    with Progress(total=3, start=1) as bar:
        bar.update(1.5, tokens=10)
    assert "loss=1.5000" in capsys.readouterr().out


def test_loss_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sub" / "loss.png"
    save_loss_curve([3.0, 2.0, 1.5], str(path), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="empty"):
        save_loss_curve([], str(path), "test")


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model=model, optimizer=opt, step=7, losses=[1.0, 0.5], extra={"k": 1})
    expected_draw = torch.rand(3)
    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert state["step"] == 7 and state["losses"] == [1.0, 0.5] and state["extra"] == {"k": 1}
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), expected_draw)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"), model=fresh, optimizer=None)


# --- launching: the device from LOCAL_RANK, the start method -----------------------------------------------


class _FakeCuda:
    """torch.cuda as seen on a machine with ``count`` GPUs (or none), recording set_device."""

    def __init__(self, monkeypatch, count: int) -> None:
        self.current: list[int] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.current.append)


def test_local_device_sets_the_gpu_of_local_rank_before_any_collective(monkeypatch):
    from tasp_plugin.training.launch import local_device

    cuda = _FakeCuda(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device() == torch.device("cuda", 1) and cuda.current == [1]
    assert local_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")  # a third process on a 2-GPU machine: an error, never a silent CPU rank
    with pytest.raises(ValueError, match="one GPU each, but 2 are visible"):
        local_device()


def test_local_device_on_cpu(monkeypatch):
    from tasp_plugin.training.launch import local_device

    threads = torch.get_num_threads()
    cuda = _FakeCuda(monkeypatch, 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    try:
        assert local_device() == torch.device("cpu") and cuda.current == []
        assert torch.get_num_threads() == 1  # a share of the cores per local process
        with pytest.raises(ValueError, match="CUDA is not available"):
            local_device("cuda")
        _FakeCuda(monkeypatch, 4)
        assert local_device("cpu") == torch.device("cpu")
    finally:
        torch.set_num_threads(threads)


def test_init_process_group_binds_nccl_to_the_device(monkeypatch):
    import torch.distributed as dist

    from tasp_plugin.training.launch import init_process_group

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append((a, k)))
    init_process_group(torch.device("cuda", 1))
    init_process_group(torch.device("cpu"))
    assert calls == [(("nccl",), {"device_id": torch.device("cuda", 1)}), (("gloo",), {})]


def test_start_method_spawns_where_cuda_is_available(monkeypatch):
    import torch.multiprocessing as mp

    from tasp_plugin.training.launch import start_method

    _FakeCuda(monkeypatch, 2)
    assert start_method() == "spawn"  # forking after CUDA was initialised breaks every worker
    _FakeCuda(monkeypatch, 0)
    assert start_method() == ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    monkeypatch.setattr(mp, "get_all_start_methods", lambda: ["spawn"])
    assert start_method() == "spawn"


# --- checkpoints: weights-only loading, the --save/--load rule, resume checks ---------------------------------


def _trained(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model=model, optimizer=opt, step=3, losses=[1.0], extra={"run": {"seed": 1, "x": (1, 2)}})
    return model, opt, path


def test_checkpoint_loads_weights_only(tmp_path):
    _, _, path = _trained(tmp_path)
    state = torch.load(path, weights_only=True)  # no pickled object anywhere, RNG state included
    assert state["step"] == 3 and state["extra"]["run"]["x"] == (1, 2)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_checkpoint_with_a_pickled_callable_is_refused(tmp_path, capsys):
    from tasp_plugin.training.checkpoint import check_safe_to_load, read_checkpoint

    model, opt, path = _trained(tmp_path)
    crafted = str(tmp_path / "crafted.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "extra": {"hook": _Payload(), "fn": random.random}}, crafted)
    for load in (lambda: load_checkpoint(crafted, model=model, optimizer=opt), lambda: read_checkpoint(crafted)):
        with pytest.raises(ValueError, match="refusing to load checkpoint .*crafted.pt"):
            load()
    with pytest.raises(ValueError, match="refusing to load .*builtins.print"):
        check_safe_to_load([crafted])
    assert "code ran" not in capsys.readouterr().out
    check_safe_to_load([path])
    torch.save({"scaler": _Payload()}, crafted)
    with pytest.raises(ValueError, match="builtins.print"):
        check_safe_to_load([crafted], allowed_globals=["deepspeed.runtime.fp16.loss_scaler.LossScaler"])


def test_plain_converts_what_weights_only_cannot_load():
    import pathlib

    from tasp_plugin.planning import Algorithm
    from tasp_plugin.training.checkpoint import plain

    value = plain({"a": Algorithm.HAMILTON, "p": pathlib.Path("x/y"), "t": (1, [2.5, None]), "n": torch.tensor(1)})
    assert value["a"] == "hamilton" and type(value["a"]) is str and value["p"] == "x/y"
    assert value["t"] == (1, [2.5, None])
    with pytest.raises(TypeError, match=r"run\['f'\] is a function"):
        plain({"f": test_plain_converts_what_weights_only_cannot_load}, "run")


def test_latest_checkpoint_and_the_save_load_rule(tmp_path):
    from tasp_plugin.training.checkpoint import checkpoint_path, latest_checkpoint, resume_directory

    run, other, empty = str(tmp_path / "run"), str(tmp_path / "other"), str(tmp_path / "empty")
    assert latest_checkpoint(run) is None
    for step in (20, 40, 100):
        model = torch.nn.Linear(1, 1)
        save_checkpoint(checkpoint_path(run, step), model=model, optimizer=None, step=step, losses=[])
    (tmp_path / "run" / "ckpt_step000200.pt.tmp").write_bytes(b"")  # an interrupted save does not count
    assert latest_checkpoint(run) == (100, checkpoint_path(run, 100))

    def latest(directory):
        found = latest_checkpoint(directory)
        return found[0] if found else None

    assert resume_directory(empty, None, latest) is None  # a new run
    with pytest.raises(ValueError, match=f"--save {run} already holds checkpoints .latest: step 100.; pass --load"):
        resume_directory(run, None, latest)  # a plain re-run would overwrite
    assert resume_directory(run, run, latest) == run  # Megatron-LM's --save DIR --load DIR
    assert resume_directory(empty, run, latest) == run  # continue into a new directory
    assert resume_directory(empty, empty, latest) is None  # --load without a checkpoint: from step 0
    save_checkpoint(checkpoint_path(other, 5), model=torch.nn.Linear(1, 1), optimizer=None, step=5, losses=[])
    with pytest.raises(ValueError, match=f"--save {other} already holds checkpoints of another run"):
        resume_directory(other, run, latest)
    with pytest.raises(ValueError, match="--load takes the directory"):
        resume_directory(empty, checkpoint_path(run, 100), latest)


def test_check_resume_names_every_difference(tmp_path):
    from tasp_plugin.training.checkpoint import FIXED_ON_RESUME, check_resume, corpus_fingerprint

    text = tmp_path / "a.txt"
    text.write_bytes(b"abc" * 100)
    saved = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 256, "num_attention_heads": 4,
             "num_query_groups": 2, "seq_length": 256, "context_parallel_size": 8, "global_batch_size": 4,
             "seed": 1234, "data": corpus_fingerprint(b"abc" * 100, str(text)), "train_iters": 40, "save": "x"}
    same = {**saved, "train_iters": 80, "save": "elsewhere", "save_interval": 7}  # these may change
    check_resume(saved, same, FIXED_ON_RESUME, 40, 80, "run")
    changed = {**same, "hidden_size": 32, "seq_length": 128, "context_parallel_size": 4, "seed": 1,
               "data": corpus_fingerprint(b"abd" * 100, str(text))}
    with pytest.raises(ValueError) as err:
        check_resume(saved, changed, FIXED_ON_RESUME, 40, 80, "run")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot continue the run in run (step 40)")
    for part in ("--hidden-size: 32 here, 64 in the checkpoint", "--seq-length: 128 here, 256",
                 "--context-parallel-size: 4 here, 8", "--seed: 1 here, 1234", "data (--data-path and its content)"):
        assert part in message
    with pytest.raises(ValueError, match="--train-iters 30 is below the step 40"):
        check_resume(saved, same, FIXED_ON_RESUME, 40, 30, "run")
    with pytest.raises(ValueError, match="records no run configuration"):
        check_resume(None, same, FIXED_ON_RESUME, 40, 80, "run")


# --- the shared flags and their checks --------------------------------------------------------------------------


def _parser(**defaults):
    from tasp_plugin.training.args import OneLineErrorParser, add_training_args

    parser = OneLineErrorParser(prog="x")
    base = {"seq_length": None, "context_parallel_size": 8, "cp_comm_type": "hamilton", "train_iters": 40}
    add_training_args(parser, {**base, **defaults}, {"seq_length": "256 rounded up to a multiple of 2 x CP"})
    return parser


def test_shared_flags_help_defaults_and_choices(capsys):
    from tasp_plugin.planning import Algorithm

    parser = _parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for name in ("--seq-length", "--context-parallel-size", "--cp-comm-type", "--train-iters", "--save", "--load",
                 "--save-interval", "--micro-batch-size", "--global-batch-size", "--lr", "--seed", "--data-path",
                 "--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups", "--world-size"):
        assert name in flags
    choices = next(a.choices for a in parser._actions if a.dest == "cp_comm_type")
    assert tuple(choices) == (*Algorithm.values(), "p2p")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 40)" in text and "(default: 256 rounded up to a multiple of 2 x CP)" in text
    assert "hamilton_multinode" in text


def test_argument_errors_are_one_line(capsys):
    parser = _parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--cp-comm-type", "hamiltonian"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("x: error: argument --cp-comm-type")


def test_argument_errors_print_on_rank_zero_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SystemExit) as exc:
        _parser().error("boom")
    assert exc.value.code == 2 and capsys.readouterr().err == ""


def test_config_file_defaults_paths_and_errors(tmp_path):
    import json

    from tasp_plugin.training.args import apply_config_file

    (tmp_path / "cfgs").mkdir()
    cfg = tmp_path / "cfgs" / "run.json"
    cfg.write_text(json.dumps({"seq_length": 64, "lr": 1, "data_path": "corpus.txt", "save": "/abs/run"}))
    parser = _parser()
    apply_config_file(parser, str(cfg))
    args = parser.parse_args(["--lr", "0.5"])
    assert args.seq_length == 64 and args.lr == 0.5 and args.save == "/abs/run"
    assert args.data_path == str(tmp_path / "cfgs" / "corpus.txt")  # relative to the config file
    for bad, match in (({"train_steps": 3}, r"unknown key\(s\) \['train_steps'\]"),
                       ({"seq_length": "64"}, "seq_length must be a int"),
                       ({"cp_comm_type": "fast"}, "cp_comm_type must be one of")):
        cfg.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            apply_config_file(_parser(), str(cfg))


@pytest.mark.parametrize("cp", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_default_sequence_length_fits_every_cp_size(cp):
    from tasp_plugin.training.args import check_parallel_layout, default_seq_length

    seq = default_seq_length(256, cp)
    assert seq % (2 * cp) == 0 and 256 <= seq < 256 + 2 * cp
    check_parallel_layout(cp, cp, seq)


def test_layout_and_batch_errors_name_valid_values():
    from tasp_plugin.training.args import batch_sizes, check_parallel_layout

    with pytest.raises(ValueError, match="--seq-length 256 is not a multiple of 2 x --context-parallel-size = 6.*"
                                         "use 252 or 258"):
        check_parallel_layout(3, 3, 256)
    with pytest.raises(ValueError, match="world size 6 is not a multiple of --context-parallel-size 4; use a world "
                                         "size of 4 or 8"):
        check_parallel_layout(6, 4, 256)
    assert batch_sizes(None, 8, 2) == (4, 8) and batch_sizes(2, None, 3) == (2, 6) and batch_sizes(2, 4, 2) == (2, 4)
    with pytest.raises(ValueError, match="does not divide over the data-parallel size 3"):
        batch_sizes(None, 4, 3)
    with pytest.raises(ValueError, match="is not --micro-batch-size 2 x data-parallel size 3"):
        batch_sizes(2, 4, 3)


# --- what a run prints -------------------------------------------------------------------------------------------


def test_schedule_line_names_what_runs():
    from tasp_plugin.planning import Topology
    from tasp_plugin.training.report import describe_schedule

    assert describe_schedule("hamilton", Topology.uniform(1, 8)) == "hamilton -> hamilton_flat: K_8, 7 cycles"
    assert describe_schedule("hamilton", Topology.uniform(2, 4)) == \
        "hamilton -> hamilton_multinode: 2 nodes x 4 GPUs, 4 cycles"
    fallback = describe_schedule("hamilton", Topology.uniform(1, 4))
    assert fallback.startswith("hamilton -> zigzag (K_4 has no Hamiltonian decomposition")
    assert describe_schedule("p2p", Topology.uniform(1, 4)) == "p2p = zigzag: 4 ranks"
    assert describe_schedule("auto", Topology.uniform(1, 5)).startswith(
        "auto -> hamilton_flat: K_5, 4 cycles (off GPUs auto follows the hamilton rule")
    on_gpu = describe_schedule("auto", Topology.uniform(1, 8), cuda=True, shape=(1, 32, 8, 8192, 128), nbytes=2,
                               device_name="NVIDIA H100 80GB HBM3")
    assert on_gpu.startswith("auto -> ") and "the cost model's pick" in on_gpu
    assert describe_schedule(["ring", "hamilton"], Topology.uniform(1, 3)).startswith("per layer [ring, hamilton]")


def test_final_line_and_throughput():
    from tasp_plugin.training.report import final_line

    bar = Progress(total=2, enabled=False)
    bar.update(3.0, tokens=1000)
    bar.update(2.0, tokens=1000)
    assert bar.tokens == 2000 and bar.tokens_per_second > 0
    line = final_line([3.0, 2.0], 2, 1234.5, 1.6, curve="run/loss.png")
    assert line == ("final loss 2.0000 at step 2 (step 1: 3.0000) | 1,234 tokens/s over 2 steps (1.6 s) | curve "
                    "run/loss.png")


def test_packed_batch_cuts_after_each_eod_pads_and_masks():
    from tasp_plugin.sharding import unshard_packed
    from tasp_plugin.training.batch import packed_batch_for_cp

    tokens = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 4, 3]])  # inputs 5 6 0 | 7 8 9 0 | 4 (labels shifted by one)
    shards = [packed_batch_for_cp(tokens, 0, r, 2) for r in range(2)]
    cu = shards[0]["cu_seqlens"].tolist()
    assert cu == [0, 4, 8, 12] and torch.equal(shards[1]["cu_seqlens"], shards[0]["cu_seqlens"])
    full = {k: unshard_packed([s[k][0] for s in shards], cu, 0) for k in ("input_ids", "labels", "position_ids",
                                                                          "loss_mask")}
    assert full["input_ids"].tolist() == [5, 6, 0, 0, 7, 8, 9, 0, 4, 0, 0, 0]
    assert full["labels"].tolist() == [6, 0, 7, 0, 8, 9, 0, 4, 3, 0, 0, 0]
    assert full["position_ids"].tolist() == [0, 1, 2, 3] * 3
    assert full["loss_mask"].tolist() == [1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0]
