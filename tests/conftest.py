"""Shared fixtures, and two markers set here: ``@pytest.mark.gpu`` (or ``gpu(2)`` for two GPUs) skips a test
on machines with fewer CUDA devices, so GPU tests are selected or excluded with ``-m gpu``; ``integration``
marks every test of a framework integration file (what CI runs on the oldest megatron-core line)."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

# test files that drive megatron-core, DeepSpeed or transformers (by name prefix)
INTEGRATION_FILES = ("test_megatron", "test_deepspeed", "test_hf", "test_examples")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.path.name.startswith(INTEGRATION_FILES):
            item.add_marker(pytest.mark.integration)
        mark = item.get_closest_marker("gpu")
        if mark is None:
            continue
        needed = mark.args[0] if mark.args else 1
        if available < needed:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s), found {available}"))


@pytest.fixture
def single_rank_group():
    """A one-process gloo group in this process (world size 1), torn down afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            yield dist.group.WORLD
        finally:
            dist.destroy_process_group()
