import os

import pytest

try:
    from hypothesis import HealthCheck, settings

    # Kernel compilation/first calls are slow on a 2-core CI machine: no deadlines.
    settings.register_profile(
        "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
    )
    settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
except ImportError:  # hypothesis is a test dependency; tests that need it import it themselves
    pass


@pytest.fixture(autouse=True)
def _torch_random_state_restored():
    """Tests that seed torch's global generator leave it as they found it.

    Otherwise the inputs of a later test that draws without a seed would depend on which tests ran
    before it (and, on a GPU machine, which were skipped).
    """
    import torch

    state = torch.random.get_rng_state()
    yield
    torch.random.set_rng_state(state)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread (tiny tensors: two threads only spin against each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cuda_skip_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU available"
    from vidmem_ext import _backend

    if not _backend.cuda_compiled():
        return "vidmem_ext was built without its CUDA kernels"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    checked = False
    for item in items:
        if "cuda" in item.keywords:
            if not checked:
                reason, checked = _cuda_skip_reason(), True
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"cuda test: {reason}"))
