"""Shared fixtures."""

import os
import tempfile

import pytest
import torch.distributed as dist


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
