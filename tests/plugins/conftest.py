"""Plugin tests run with one torch thread: on a loaded 2-core machine two OpenMP threads
contending with other processes run 5-10x slower and far less repeatably."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
