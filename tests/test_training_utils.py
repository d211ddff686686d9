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
