"""Imports stay cheap and honest: no optional backend, no undeclared lite package.

Each check runs in a fresh interpreter, so what this test process imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

PACKAGES_DIR = Path(__file__).parent.parent / "packages"
LITE_PACKAGES = [
    "lite-devices",
    "lite-precision",
    "lite-collectives",
    "lite-data",
    "lite-strategies",
    "lite-facade",
]
OPTIONAL_BACKENDS = ("deepspeed", "fairscale", "torch_xla")


def modules_after(statement: str) -> set[str]:
    """The top-level module names in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    code = (
        f"import sys, json\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def declared_lite_dependencies(package: str) -> set[str]:
    meta = tomllib.loads((PACKAGES_DIR / package / "pyproject.toml").read_text())["project"]
    names = {dep.split("==")[0].split(">")[0].split("[")[0].strip() for dep in meta.get("dependencies", [])}
    return {name.replace("-", "_") for name in names if name in LITE_PACKAGES}


@pytest.mark.parametrize(
    "statement",
    [
        "import lite_facade",
        "from lite_facade.lite import LightningLite",
        "import lite_facade.plugins, lite_facade.plugins.environments, lite_facade.strategies",
    ],
)
def test_facade_imports_no_optional_backend(statement: str) -> None:
    loaded = modules_after(statement)
    assert not loaded & set(OPTIONAL_BACKENDS), sorted(loaded & set(OPTIONAL_BACKENDS))


@pytest.mark.parametrize("package", LITE_PACKAGES)
def test_package_imports_only_declared_lite_packages(package: str) -> None:
    module = package.replace("-", "_")
    loaded = modules_after(f"import {module}")
    lite_loaded = {m for m in loaded if m.replace("_", "-") in LITE_PACKAGES} - {module}
    assert lite_loaded <= declared_lite_dependencies(package), (
        f"importing {module} imported {sorted(lite_loaded - declared_lite_dependencies(package))}, "
        f"which {package}/pyproject.toml does not declare"
    )
    assert not loaded & set(OPTIONAL_BACKENDS)


def test_seed_import_paths() -> None:
    """The drop-in table: each seed import has its lite_facade counterpart."""
    loaded = modules_after(
        "from lite_facade.lite import LightningLite\n"
        "from lite_facade import LightningLite as Same, seed_everything\n"
        "from lite_facade.plugins.environments import ClusterEnvironment\n"
        "assert LightningLite is Same and callable(seed_everything)"
    )
    assert "lite_facade" in loaded
