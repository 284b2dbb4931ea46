"""Run every ```python block of the documentation, each in a fresh process in a temporary directory.

    python docs/run_code_blocks.py [--timeout 120] [--jobs 2] [PAGE.md ...]

A block is skipped only when an HTML comment stands on the line(s) right before it:

    <!-- no-run: needs a GPU -->                 never run here (the reason is printed)
    <!-- torchrun: 2 -->                         run under ``python -m torch.distributed.run --nproc_per_node 2``

Every other block is written to ``block.py`` in a new temporary directory and run with
``python block.py`` (so multi-process examples need their ``if __name__ == "__main__":`` guard,
as a user's script would). A block that fails, or runs past the timeout, fails the script.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).parent
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)
_MARK = re.compile(r"<!--\s*(no-run|torchrun)\s*:\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    skip: str | None  # the reason, for a no-run block
    nproc: int | None  # torchrun's --nproc_per_node

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = [ln for ln in text[: match.start()].splitlines()[-3:] if ln.strip()]
        mark = _MARK.search(before[-1]) if before else None
        skip = mark.group(2) if mark and mark.group(1) == "no-run" else None
        if mark and mark.group(1) == "no-run" and not skip:
            raise SystemExit(f"{page.name}:{line}: a no-run mark needs a reason: <!-- no-run: why -->")
        nproc = int(mark.group(2)) if mark and mark.group(1) == "torchrun" else None
        found.append(Block(page.relative_to(DOCS).as_posix(), line, match.group(1), skip, nproc))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(block: Block, timeout: float) -> tuple[Block, str | None, float]:
    """Run one block; return it, the failure text (None when it passed) and the seconds it took."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docblock-") as tmp:
        Path(tmp, "block.py").write_text(block.code)
        cmd = [sys.executable, "block.py"]
        if block.nproc:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(block.nproc)]
            cmd += ["--master_port", str(free_port()), "block.py"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return block, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    if proc.returncode != 0:
        return block, f"exit code {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", time.perf_counter() - start
    return block, None, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="default: every docs/**/*.md")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per block")
    parser.add_argument("--jobs", type=int, default=2, help="blocks run at once")
    args = parser.parse_args()
    pages = [p.resolve() for p in args.pages] or sorted(DOCS.rglob("*.md"))
    every = [b for page in pages for b in blocks(page)]
    to_run = [b for b in every if b.skip is None]
    for b in every:
        if b.skip is not None:
            print(f"SKIP {b.name}: {b.skip}")
    failures = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for block, failure, seconds in pool.map(lambda b: run(b, args.timeout), to_run):
            print(f"{'FAIL' if failure else 'ok  '} {block.name} ({seconds:.1f} s)", flush=True)
            if failure:
                failures.append((block, failure))
    for block, failure in failures:
        print(f"\n---- {block.name} failed: {failure}\n---- the block:\n{block.code}")
    print(f"\n{len(to_run) - len(failures)} ran and passed, {len(failures)} failed, {len(every) - len(to_run)} skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
