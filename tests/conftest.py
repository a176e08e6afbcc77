import pytest
import torch

HAS_GPU = torch.cuda.is_available()
GPU_SKIP_REASON = "no CUDA GPU on this machine (the GPU suite runs with scripts/gpu_suite.sh on a GPU machine)"


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seeded():
    """A fresh generator per test: random data is new each run but reproducible from the printed seed."""
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
