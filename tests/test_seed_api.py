"""The seed attention API, run on gloo against full-sequence attention (softmax_scale honoured)."""

import pytest
import torch
import torch.distributed as dist

from tasp_plugin.compat import seed_api as seed
from tasp_plugin.compat.seed_helpers import (
    calculate_in_mapping_circle,
    calculate_out_mapping_circle,
    gen_hamilton_circle,
)
from tasp_plugin.sharding import shard_sequence

from .distributed import run_distributed
from .reference import reference_attention

SCALE = 0.7


def _err(a, b):
    return (a.double() - b).abs().max().item()


def _seed_checks(rank, n):
    torch.manual_seed(7)
    b, h, d, seq = 1, 2, 8, 2 * n * (n - 1) * 2
    q, k, v = (torch.randn(b, seq, h, d, dtype=torch.float64) for _ in range(3))
    errs = {}

    def block(x, dim=1):
        return x.chunk(n, dim=dim)[rank]

    def zz(x, dim=1):
        return shard_sequence(x, rank, n, dim)

    for causal in (True, False):
        out, lse = reference_attention(q, k, v, causal, SCALE)
        o, o_lse = seed.ring_attention_forward_flash_attn(None, block(q), block(k), block(v), SCALE, causal=causal)
        errs[("ring", causal)] = max(_err(o, block(out)), _err(o_lse, block(lse, 2)))
        o, o_lse, t = seed.zigzag_ring_attention_forward_flash_attn_profile(None, zz(q), zz(k), zz(v), SCALE,
                                                                           causal=causal)
        errs[("zigzag", causal)] = max(_err(o, zz(out)), _err(o_lse, zz(lse, 2)))
        errs[("zigzag-timings", causal)] = 0.0 if set(t) == {"total_time", "comm_total_time", "comp_total_time"} and \
            min(t.values()) >= 0 and t["total_time"] > 0 else 1.0
        if n in (4, 6):
            continue
        looping = gen_hamilton_circle(n)
        c = len(looping)
        k_list = zz(k).chunk(2, dim=1)
        v_list = zz(v).chunk(2, dim=1)
        # the reference's chunk j is (front part j, back part j) of the local zigzag shard
        kj = [torch.cat([k_list[0].chunk(c, 1)[j], k_list[1].chunk(c, 1)[j]], 1) for j in range(c)]
        vj = [torch.cat([v_list[0].chunk(c, 1)[j], v_list[1].chunk(c, 1)[j]], 1) for j in range(c)]
        fn = (seed.hamilton_attention_forward_causal_flash_attn if causal
              else seed.hamilton_attention_forward_full_flash_attn)
        o, o_lse = fn(None, zz(q), kj, vj, SCALE, world_size=n, looping=looping,
                      out_mapping=calculate_out_mapping_circle(looping),
                      in_mapping=calculate_in_mapping_circle(looping))
        errs[("hamilton", causal)] = max(_err(o, zz(out)), _err(o_lse, zz(lse, 2)))
        if not causal:
            # the same call in the BNSD layout, with timings
            o, o_lse, t = seed.hamilton_attention_forward_full_flash_attn_profile(
                None, zz(q).transpose(1, 2), [x.transpose(1, 2) for x in kj], [x.transpose(1, 2) for x in vj], SCALE,
                world_size=n, layout="BNSD")
            errs[("hamilton-bnsd", causal)] = max(_err(o.transpose(1, 2), zz(out)), _err(o_lse, zz(lse, 2)))
            errs[("hamilton-timings", causal)] = 0.0 if min(t.values()) >= 0 and t["total_time"] > 0 else 1.0
    # communication primitives
    comm = seed.RingComm(None)
    nk, nv = comm.send_recv_kv(torch.full((3,), float(rank)), torch.full((2,), float(rank) + 100))
    comm.wait()
    errs["ringcomm"] = float(nk[0].item() != (rank - 1) % n or nv[0].item() != (rank - 1) % n + 100)
    a2a = seed.A2AComm(None)
    recv = [torch.empty(2) for _ in range(n)]
    a2a.all_to_all([torch.tensor([rank, p], dtype=torch.float32) for p in range(n)], recv)
    a2a.wait()
    errs["a2a"] = float(any(recv[p].tolist() != [p, rank] for p in range(n)))
    dist.barrier()
    return errs


@pytest.mark.distributed
@pytest.mark.parametrize("n", [3, 4, 5])
def test_seed_api_matches_reference(n):
    for rank, errs in enumerate(run_distributed(_seed_checks, n)):
        bad = {k: e for k, e in errs.items() if not e < 1e-10}
        assert not bad, f"n={n} rank={rank}: {bad}"


def test_seed_api_rejects_what_it_cannot_do():
    x = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="dropout"):
        seed.ring_attention_forward_flash_attn(None, x, x, x, None, dropout_p=0.1)
    with pytest.raises(ValueError, match="window_size"):
        seed.zigzag_ring_attention_forward_flash_attn(None, x, x, x, None, window_size=(4, 0))
    with pytest.raises(ValueError, match="layout"):
        seed.hamilton_attention_forward_full_flash_attn(None, x, [x], [x], None, layout="SBND")


def test_seed_adapters_reject_odd_or_mismatched_local_lengths(single_rank_group):
    x = torch.randn(1, 5, 2, 8)
    with pytest.raises(ValueError, match="same even local sequence length"):
        seed.ring_attention_forward_flash_attn(None, x, x, x, None)
    with pytest.raises(ValueError, match="same even local sequence length"):
        seed.zigzag_ring_attention_forward_flash_attn(None, torch.randn(1, 4, 2, 8), x, x, None)
