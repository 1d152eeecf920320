import contextlib

import pytest
import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny matmuls: one torch thread avoids OpenMP hand-offs on a busy 2-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a module's expensive shared fixtures (a trained run, a library)."""
    with torch_threads(1):
        yield
