"""Fail when a package's source breaks one of the layering rules; print every breach.

- a package imports a lite package it does not declare (each ``pyproject.toml``'s
  dependencies against every ``import lite_*`` in its ``src/``: the AST, so imports inside
  functions count too), or the import graph has a cycle;
- a package imports a private name (a module or a name with a leading underscore) of another
  lite package: only what that package exports in public is its API;
- a module in ``packages/*/src`` is over 500 lines, unless it says why in a comment
  ``# lite: allow-long-module: <reason>``.
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


MAX_LINES = 500
EXEMPT = re.compile(r"#\s*lite:\s*allow-long-module:\s*(\S.*)")


def private_imports(src: Path, own: str) -> list[str]:
    """``path:line: what`` for each private name of another lite package imported under ``src``."""
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [(node.module, [a.name for a in node.names])]
            else:
                continue
            for module, names in modules:
                top, *rest = module.split(".")
                if not top.startswith("lite_") or top == own:
                    continue
                private = [f"{module}" for part in rest[:1] if part.startswith("_")]
                private += [f"{module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.append(f"{where}: {own} imports the private {', '.join(private)}")
    return found


def long_modules(src: Path) -> list[str]:
    """``path: N lines`` for each module over :data:`MAX_LINES` that does not say why it may be."""
    found = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_LINES and not EXEMPT.search(text):
            found.append(
                f"{path.relative_to(ROOT)}: {lines} lines (over {MAX_LINES}; split it, or say why it may "
                "be long in a comment '# lite: allow-long-module: <reason>')"
            )
    return found


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
        errors += private_imports(pkg_dir / "src", own)
        errors += long_modules(pkg_dir / "src")

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
