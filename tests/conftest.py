import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny matmuls: one torch thread avoids OpenMP hand-offs on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
