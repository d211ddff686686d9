"""Benchmark building blocks: per-rank compute efficiency on one GPU, and the reference's ``prof_perform``
harness for real multi-GPU runs."""

from .harness import prof_perform
from .per_rank import KernelClock, PerRankResult, attention_flops, monolithic_seconds, per_rank_seconds

__all__ = ["KernelClock", "PerRankResult", "attention_flops", "monolithic_seconds", "per_rank_seconds", "prof_perform"]
