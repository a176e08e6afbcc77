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


@pytest.fixture
def fake_jit_load(monkeypatch):
    """``moejit.jit.builder.load`` without a compiler. ``setup(stale, fresh, load_library)`` makes ``build``
    return ``stale`` as the cached library and ``fresh`` when forced to rebuild, and ``torch.ops.load_library``
    call ``load_library``; it returns the list that records each build's ``force``."""
    from types import SimpleNamespace

    from moejit import registry
    from moejit.jit import builder

    def setup(stale, fresh, load_library):
        builds = []

        def fake_build(name, arch, force=False, **kw):
            builds.append(force)
            return builder.BuildResult(SimpleNamespace(library=fresh if force else stale), 0.0, cached=not force)

        monkeypatch.setattr(builder, "build", fake_build)
        monkeypatch.setattr(builder, "detect_arch", lambda: "90a")
        monkeypatch.setattr(builder, "_loaded", {})
        monkeypatch.setattr(builder, "_loaded_arch", None)
        monkeypatch.setattr(torch.ops, "load_library", load_library)
        monkeypatch.setattr(registry, "register_fakes", lambda name: None)
        return builds

    return setup
