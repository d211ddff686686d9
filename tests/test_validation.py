"""validate_cycles / validate_paths reject every kind of broken schedule, naming the culprit."""

import pytest

from tasp_plugin.schedules import ScheduleError, validate_cycles, validate_paths


def test_accepts_a_valid_ring():
    validate_cycles([[0, 1, 2, 3]], 4)


@pytest.mark.parametrize(
    "cycles, n, match",
    [
        ([[0, 1, 2]], 4, "has 3 vertices"),
        ([[0, 1, 1, 2]], 4, "twice"),
        ([[0, 1, 2, 7]], 4, "outside"),
        ([[0, 1, 2], [0, 1, 2]], 3, "arc 0->1 is used by cycle 0 and cycle 1"),
        ([], 3, "no cycles"),
    ],
)
def test_rejects(cycles, n, match):
    with pytest.raises(ScheduleError, match=match):
        validate_cycles(cycles, n)


def test_complete_requires_every_arc():
    with pytest.raises(ScheduleError, match="missing arcs"):
        validate_cycles([[0, 1, 2]], 3, complete=True)
    validate_cycles([[0, 1, 2], [0, 2, 1]], 3, complete=True)


def test_allowed_arcs():
    with pytest.raises(ScheduleError, match="not a link"):
        validate_cycles([[0, 1, 2]], 3, allowed_arcs={(0, 1), (1, 2)})


def test_paths():
    validate_paths([[0, 1], [1, 0]], 2)
    with pytest.raises(ScheduleError, match="used by path"):
        validate_paths([[0, 1, 2], [1, 2, 0], [2, 0, 1]], 3)
    with pytest.raises(ScheduleError, match="start and end"):
        validate_paths([[0, 1, 2], [0, 2, 1], [2, 1, 0]], 3)
