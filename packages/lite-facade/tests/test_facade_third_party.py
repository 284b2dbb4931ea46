"""A strategy from an installed third-party distribution trains through LightningLite, by name.

The distribution (``tests/third_party_strategy``) registers its row through the
``lite.strategies`` entry point; neither lite-strategies nor the facade names it. The
lite-facade test session installs it and sets ``LITE_REQUIRE_THIRD_PARTY=1``, so that there a
missing install fails instead of skipping.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lite_facade import LightningLite, LiteConfigurationError

try:
    importlib.metadata.distribution("lite-third-party-strategy")
except importlib.metadata.PackageNotFoundError:
    if os.environ.get("LITE_REQUIRE_THIRD_PARTY") == "1":
        raise
    pytest.skip(
        "pip install packages/lite-facade/tests/third_party_strategy to run these", allow_module_level=True
    )


class Train(LightningLite):
    def run(self, steps: int) -> list[float]:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = self.setup(model, optimizer)
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        losses = []
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            self.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses


def test_lite_trains_with_a_strategy_registered_by_an_entry_point() -> None:
    lite = Train(strategy="counting_single_device", accelerator="cpu")
    strategy = lite._strategy
    assert type(strategy).__module__ == "lite_third_party_strategy"
    losses = lite.run(10)
    assert strategy.steps == 10  # every step went through the third-party strategy
    assert losses[-1] < 0.9 * losses[0]


def test_the_rows_checks_apply_to_it() -> None:
    with pytest.raises(LiteConfigurationError) as err:
        Train(strategy="counting", accelerator="cpu", devices=2, precision=64)
    message = str(err.value)
    assert "'counting_single_device' cannot run precision='64-true'" in message and "at most 1" in message


def test_the_entry_point_is_loaded_only_for_a_name_not_found() -> None:
    code = (
        "import sys, lite_facade\n"
        "lite_facade.LightningLite.__abstractmethods__ = frozenset()\n"
        "lite_facade.LightningLite(accelerator='cpu')\n"
        "assert 'lite_third_party_strategy' not in sys.modules\n"
        "lite_facade.LightningLite(strategy='counting', accelerator='cpu')\n"
        "assert 'lite_third_party_strategy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
