"""One marker that gathers every reason to skip a test."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch


def run_if(
    *,
    min_cuda_gpus: int = 0,
    mps: bool = False,
    bf16_cuda: bool = False,
    module: str | None = None,
    skip_windows: bool = False,
) -> pytest.MarkDecorator:
    """Skip unless every condition holds; the skip message lists each one that failed."""
    reasons = []
    if min_cuda_gpus and torch.cuda.device_count() < min_cuda_gpus:
        reasons.append(f"needs {min_cuda_gpus} CUDA GPU(s), found {torch.cuda.device_count()}")
    if mps and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        reasons.append("needs MPS")
    if bf16_cuda and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        reasons.append("needs a CUDA GPU with bfloat16")
    if module and importlib.util.find_spec(module) is None:
        reasons.append(f"needs the module {module!r}")
    if skip_windows and sys.platform == "win32":
        reasons.append("does not run on Windows")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "runs")
