"""The one vocabulary of user-visible choices: each word is defined here, once, with what it means.

``Algorithm`` is what a user asks for (the schedule family), ``Sharding`` how the global sequence is split
over the ranks of a CP group, ``Layout`` the order of a tensor's dimensions. All three are ``str`` enums, so
a member compares equal to its plain string and every API accepts either.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = ["Algorithm", "Layout", "Sharding", "parse_choice"]

_E = TypeVar("_E", bound="_Choice")


class _Choice(str, Enum):
    """A string-valued choice with a one-line meaning per member (``member.meaning``)."""

    meaning: str

    def __new__(cls, value: str, meaning: str) -> _Choice:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every member's string, in definition order."""
        return tuple(m.value for m in cls)


def parse_choice(kind: type[_E], value: object, what: str) -> _E:
    """``value`` (a member or its string) as a member of ``kind``; ``ValueError``/``TypeError`` naming
    ``what`` and the valid choices otherwise."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, one of {list(kind.values())}; got {value!r}")
    try:
        # a lookup by value (EnumMeta.__call__), not member creation: mypy checks it against __new__ (python/mypy#10573)
        return kind(value)  # type: ignore[call-arg]
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(kind.values())}") from None


class Algorithm(_Choice):
    """Which ring schedule a CP group runs (resolved to a concrete one by ``planning.resolve``)."""

    RING = ("ring", "one cycle through the group in rank order: each step every rank passes its whole K/V "
                    "to the next rank (ring attention)")
    ZIGZAG = ("zigzag", "the ring schedule on zigzag shards (zigzag ring attention); every attention call of "
                        "this package takes zigzag shards, so it runs exactly what 'ring' runs")
    HAMILTON = ("hamilton", "topology-aware Hamilton attention: multi-node Hamilton on several equal nodes, "
                            "else flat Hamilton, else (n = 4, 6) zigzag")
    HAMILTON_FLAT = ("hamilton_flat", "n-1 arc-disjoint Hamiltonian cycles of the complete digraph K_n: every "
                                      "step is one all-to-all that uses each link once (none for n = 4, 6)")
    HAMILTON_MULTINODE = ("hamilton_multinode", "the (m-K_m-m)^u cycles over u nodes of m GPUs: m-1 chunks over "
                                                "NVLink and one over the rank's own NIC per step")
    AUTO = ("auto", "the cost model's fastest schedule for the call's shape and interconnect on GPUs, "
                    "'hamilton' elsewhere")

    @property
    def concrete(self) -> bool:
        """Whether this names one schedule (not a rule that still has to choose one)."""
        return self not in (Algorithm.HAMILTON, Algorithm.AUTO)


class Sharding(_Choice):
    """How the global sequence of length L is split over the n ranks of a CP group."""

    ZIGZAG = ("zigzag", "2n blocks of L/(2n); rank r holds blocks r and 2n-1-r (balanced causal work; "
                        "Megatron's get_batch_on_this_cp_rank)")
    CONTIGUOUS = ("contiguous", "n blocks of L/n; rank r holds block r (the paper's ring attention baseline)")


class Layout(_Choice):
    """The dimension order of a q/k/v/out tensor (b: batch, s: sequence, h: heads, d: head dim)."""

    BSHD = ("bshd", "[batch, seq, heads, head_dim] (flash-attn, Hugging Face after transpose)")
    SBHD = ("sbhd", "[seq, batch, heads, head_dim] (Megatron-core)")
    BHSD = ("bhsd", "[batch, heads, seq, head_dim] (torch scaled_dot_product_attention)")
    THD = ("thd", "[tokens, heads, head_dim]: packed documents, with cu_seqlens (Megatron-core qkv_format='thd')")

    @property
    def ndim(self) -> int:
        """Dimensions of a tensor in this layout."""
        return 3 if self.value == "thd" else 4

    @property
    def to_bhsd(self) -> tuple[int, int, int, int]:
        """The ``permute`` that turns a tensor of this layout (``thd``: with a batch dimension of one in
        front, ``unsqueeze(0)``) into ``[batch, heads, seq, head_dim]``."""
        return {"bshd": (0, 2, 1, 3), "sbhd": (1, 2, 0, 3), "bhsd": (0, 1, 2, 3), "thd": (0, 2, 1, 3)}[self.value]
