"""A tour of the schedule layer: which schedule each CP layout gets, and how a chunk travels.

Run: python examples/schedules_tour.py
"""

from tasp_plugin.planning import Topology, resolve
from tasp_plugin.schedules import RingSchedule


def main() -> None:
    for world, per_node in [(2, None), (4, None), (8, None), (10, None), (16, 8), (24, 8), (12, 3)]:
        m = per_node or world
        res = resolve("hamilton", Topology.uniform(world // m, m))
        print(f"n={world:>3} gpus/node={m:>3}: {res.algorithm.value:<19} {res.schedule.num_cycles:>3} cycles")
    s = RingSchedule.hamilton(8)
    print("\nrank 0 on cycle 0 of K_8 holds, step by step, the chunk of rank:",
          [s.source(0, 0, step) for step in range(s.num_steps)])


if __name__ == "__main__":
    main()
