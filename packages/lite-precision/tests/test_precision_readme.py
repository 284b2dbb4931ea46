"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

# see test_precision_training.py: keeps the environment-leak guard quiet
import torch._dynamo  # isort: skip

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert isinstance(namespace["loss"], torch.Tensor)
    assert namespace["loss"].dtype == torch.float32
