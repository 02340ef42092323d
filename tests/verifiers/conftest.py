"""One intra-op thread for the verifier tests: their tensors are small, and on the shared 2-core
machines OpenMP's spinning threads made them 6-8x slower (measured: the 9 check_lossless runs
took 76 s with 2 threads, 13 s with 1, under a load average of ~4.5)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
