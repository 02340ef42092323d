"""tests/models: tiny models run fastest on one thread. With two threads on a busy 2-core machine,
torch's intra-op spinning made each tiny forward ~100x slower (0.4 s instead of 4 ms), so these
tests pin one thread and restore the setting afterwards."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
