"""The README's example is tests/readme_example.py, verbatim, and it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
EXAMPLE = HERE / "readme_example.py"


def test_readme_shows_the_example_verbatim():
    readme = (HERE.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert EXAMPLE.read_text() in blocks


def test_example_runs_alone(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], check=True, capture_output=True, text=True, timeout=120
    )
    assert "given more than once" in out.stdout
    assert "rank 0:" in out.stdout
