"""Offline training data: a byte-level tokenizer over text every machine has (the Python standard
library's own sources) or a file the user names, cut into deterministic, resumable batches."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable, Iterator
from typing import SupportsInt

import torch

__all__ = ["EOD", "ByteTokenizer", "load_corpus", "token_batches"]


def _stdlib_sources() -> list[str]:
    """Sorted paths of the standard library's top-level-and-nested ``.py`` files (no site-packages)."""
    root = sysconfig.get_paths()["stdlib"]
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return paths


EOD = 0  # the end-of-document token of packed corpora: byte 0 (never in the standard library's sources)


def load_corpus(path: str | None = None, max_bytes: int = 8_000_000, documents: bool = False) -> bytes:
    """Training text as bytes: the named file, or by default the standard library's ``.py`` sources
    concatenated in sorted order (offline and deterministic on a given Python), capped at ``max_bytes``.
    ``documents``: each source file ends with the ``EOD`` byte (a named file keeps its own)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"corpus path {path!r} is not a file; pass a text file or None for the default")
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    else:
        chunks, total = [], 0
        for source in _stdlib_sources():
            with open(source, "rb") as f:
                chunk = f.read(max_bytes - total)
            if documents and len(chunk) < max_bytes - total:
                chunk += bytes([EOD])
            chunks.append(chunk)
            total += len(chunk)
            if total >= max_bytes:
                break
        data = b"".join(chunks)
    if not data:
        raise ValueError(f"corpus {path or 'standard library sources'!r} is empty")
    return data


class ByteTokenizer:
    """Bytes as tokens 0..255, plus an optional end-of-sequence id 256; needs no vocabulary file."""

    def __init__(self, add_eos: bool = False) -> None:
        self.eos_id: int | None = 256 if add_eos else None
        self.vocab_size = 257 if add_eos else 256

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (UTF-8 for str), with the EOS id appended when enabled."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, (bytes, bytearray)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        ids = list(text)
        return ids + [self.eos_id] if self.eos_id is not None else ids

    def decode(self, ids: Iterable[SupportsInt]) -> str:
        """Text of token ids (EOS and invalid UTF-8 are dropped/replaced)."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def token_batches(data: bytes, seq_len: int, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless int64 ``[batch_size, seq_len + 1]`` windows at random offsets; batch ``i`` depends only on
    ``(seed, i)``, so resuming at ``start_step`` continues the same stream."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if len(data) < seq_len + 1:
        raise ValueError(f"corpus has {len(data)} bytes, fewer than seq_len + 1 = {seq_len + 1}; "
                         "use a shorter seq_len or a larger corpus")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    offsets = torch.arange(seq_len + 1)
    step = start_step
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=gen)
        yield tokens[starts[:, None] + offsets]
        step += 1
