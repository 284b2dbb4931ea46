"""pytest plugin: guards every test against leaked environment variables and process groups."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Variables that torch or a launcher may set as a side effect and that a test may not leave behind.
_IGNORED_ENV = {
    "PYTEST_CURRENT_TEST",
    "CUDA_MODULE_LOADING",
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
    "TORCHINDUCTOR_CACHE_DIR",  # set by torch when its compiler stack is first imported
    "TRITON_CACHE_DIR",
}


@pytest.fixture(autouse=True)
def _no_leaked_environment() -> Iterator[None]:
    """Fail a test that adds, removes or changes environment variables (use monkeypatch)."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in _IGNORED_ENV}
    if changed:
        for key in changed:  # restore, so one leak does not fail every later test
            if key in before:
                os.environ[key] = before[key]
            else:
                os.environ.pop(key, None)
        pytest.fail(f"test leaked environment variables: {sorted(changed)}; use monkeypatch.setenv")


@pytest.fixture(autouse=True)
def _destroy_process_group() -> Iterator[None]:
    """Tear down a default process group a test left initialized."""
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    from lite_testing import free_port as _free_port

    return _free_port()
