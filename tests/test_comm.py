"""RingExchange delivers each cycle's buffer from the predecessor, by P2P and by all-to-all."""

import pytest
import torch
import torch.distributed as dist

from tasp_plugin.comm import LoopbackGroup, RingExchange, as_communicator
from tasp_plugin.schedules import RingSchedule

from .distributed import run_distributed


def _exchange(rank, n, transport):
    schedule = RingSchedule.hamilton(n) if n not in (4, 6) else RingSchedule.ring(n)
    ex = RingExchange(schedule, as_communicator(None), transport)
    # two pieces per cycle of unequal sizes (as with uneven sub-chunks), the first one empty on cycle 0;
    # the receive pieces are contiguous row ranges of one buffer, in reversed order
    send = [[torch.full((j, 3), float(100 * rank + j)), torch.full((j + 1, 3), float(-100 * rank - j))]
            for j in range(schedule.num_cycles)]
    buffer = torch.empty(sum(2 * j + 1 for j in range(schedule.num_cycles)), 3)
    recv, offset = [], len(buffer)
    for j in range(schedule.num_cycles):
        front = buffer[offset - j:offset]
        back = buffer[offset - 2 * j - 1:offset - j]
        offset -= 2 * j + 1
        recv.append([front, back])
    ex.wait(ex.start(send, recv))
    ok = all(recv[j][0].eq(100 * schedule.predecessor(rank, j) + j).all().item()
             and recv[j][1].eq(-100 * schedule.predecessor(rank, j) - j).all().item()
             for j in range(schedule.num_cycles))
    dist.barrier()
    return ok, ex.transport


@pytest.mark.parametrize("n, transport, expect", [(3, "p2p", "p2p"), (5, "auto", "all_to_all"),
                                                  (5, "all_to_all", "all_to_all"), (2, "auto", "p2p"),
                                                  (4, "auto", "p2p")])
@pytest.mark.distributed
def test_exchange(n, transport, expect):
    for ok, used in run_distributed(_exchange, n, transport):
        assert ok and used == expect


def test_all_to_all_needs_a_full_schedule():
    with pytest.raises(ValueError, match="all-to-alls"):
        RingExchange(RingSchedule.ring(5), LoopbackGroup(5, 0), "all_to_all")
