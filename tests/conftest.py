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


@pytest.fixture(autouse=True, scope="module")
def _drop_module_gpu_caches(request):
    """GPU tests keep model weights in module-level caches (``_WEIGHTS`` dicts, ``WeightCache`` objects). Under
    pytest-xdist one worker runs many modules on a shared GPU, so each module's caches are dropped when it ends and
    the allocator's cached blocks handed back: several workers' leftovers would otherwise run the GPU out of memory."""
    yield
    from triton_layer_cases import WeightCache

    released = False
    for value in vars(request.module).values():
        if isinstance(value, WeightCache):
            released |= bool(value.entries)
            value.clear()
    weights = getattr(request.module, "_WEIGHTS", None)
    if isinstance(weights, dict):
        released |= bool(weights)
        weights.clear()
    if released and HAS_GPU:
        import gc

        gc.collect()
        torch.cuda.empty_cache()
