"""Fail when a package imports a lite package it does not declare, or when the graph has a cycle.

Reads each package's ``pyproject.toml`` dependencies and every ``import lite_*`` in its
``src/`` (the AST, so imports inside functions count too).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ROOT / "packages"


def declared(pkg_dir: Path) -> set[str]:
    deps = tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"].get("dependencies", [])
    return {re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0].replace("-", "_") for d in deps}


def imported(src: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top.startswith("lite_"):
                    found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def main() -> int:
    errors: list[str] = []
    graph: dict[str, set[str]] = {}
    for pkg_dir in sorted(p for p in PACKAGES.iterdir() if (p / "pyproject.toml").exists()):
        own = pkg_dir.name.replace("-", "_")
        allowed = declared(pkg_dir) | {own}
        uses = imported(pkg_dir / "src")
        graph[own] = set(uses) - {own}
        for mod, where in sorted(uses.items()):
            if mod not in allowed:
                errors.append(f"{own} imports {mod} without declaring it ({', '.join(where[:3])})")

    def cycle_from(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node) :], node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, [*stack, node])
            if found:
                return found
        return None

    for node in graph:
        cyc = cycle_from(node, [])
        if cyc:
            errors.append("import cycle: " + " -> ".join(cyc))
            break
    for e in errors:
        print(e, file=sys.stderr)
    print(f"import check: {len(graph)} packages, {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
