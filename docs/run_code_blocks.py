"""Run every ```python block of the documentation, each in a fresh process in a temporary directory.

    python docs/run_code_blocks.py [--timeout 120] [--jobs 2] [PAGE.md ...]

Each block runs in a process of its own, forked from this script after it imported torch (so a
block does not pay torch's import time again), in a new temporary directory, as ``python block.py``
would run it: as ``__main__``, with ``sys.argv[0]`` the block's file. A block is skipped only when
an HTML comment stands on the line right before it:

    <!-- no-run: needs a GPU -->                 never run here (the reason is printed)
    <!-- torchrun: 2 -->                         run under ``python -m torch.distributed.run --nproc_per_node 2``

Multi-process examples need their ``if __name__ == "__main__":`` guard, as a user's script would
('spawn' children re-import the block). A block that fails, or runs past the timeout, fails the script.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# Imported once here, before any block: every block's process is forked from this one. The optimizer's
# first step imports torch._dynamo, the facade torch.distributed: both are slow to import, so in
# the parent too. No tensor op runs here (OpenMP's threads would not survive the fork).
import torch
import torch._dynamo
import torch.distributed
import torch.nn.parallel  # noqa: F401

DOCS = Path(__file__).parent
_FENCE = re.compile(
    r"^```python[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE
)
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
        before = [
            ln for ln in text[: match.start()].splitlines()[-3:] if ln.strip()
        ]
        mark = _MARK.search(before[-1]) if before else None
        skip = mark.group(2) if mark and mark.group(1) == "no-run" else None
        if mark and mark.group(1) == "no-run" and not skip:
            raise SystemExit(
                f"{page.name}:{line}: a no-run mark needs a reason: <!-- no-run: why -->"
            )
        nproc = (
            int(mark.group(2)) if mark and mark.group(1) == "torchrun" else None
        )
        name = (
            page.relative_to(DOCS).as_posix()
            if page.is_relative_to(DOCS)
            else str(page)
        )
        found.append(Block(name, line, match.group(1), skip, nproc))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(block: Block, tmp: str) -> None:
    """In the forked process: run the block as ``python block.py`` would, then exit with its status."""
    code = 1
    try:
        os.setpgid(
            0, 0
        )  # its own process group, so a timeout ends the processes it started too
        os.chdir(tmp)
        fd = os.open("output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if block.nproc:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(block.nproc),
            ]
            os.execv(
                sys.executable,
                [*cmd, "--master_port", str(free_port()), "block.py"],
            )
        script = os.path.join(
            tmp, "block.py"
        )  # absolute: 'spawn' resolves it from the first cwd
        sys.argv, sys.path[0] = [script], tmp
        # run_path makes block.py the __main__ module (with its __file__), so 'spawn' children and
        # the script launcher re-import the block, as they would re-import a user's script.
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = (
            exc.code
            if isinstance(exc.code, int)
            else (0 if exc.code is None else 1)
        )
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@dataclass
class _Running:
    block: Block
    tmp: tempfile.TemporaryDirectory[str]
    pid: int
    start: float


def _start(block: Block) -> _Running:
    tmp = tempfile.TemporaryDirectory(prefix="docblock-")
    Path(tmp.name, "block.py").write_text(block.code)
    pid = os.fork()
    if pid == 0:
        _child(block, tmp.name)
    return _Running(block, tmp, pid, time.perf_counter())


def _finish(
    run: _Running, status: int | None
) -> tuple[Block, str | None, float]:
    seconds = time.perf_counter() - run.start
    output = Path(run.tmp.name, "output.txt")
    text = output.read_text(errors="replace")[-4000:] if output.exists() else ""
    run.tmp.cleanup()
    if status is None:
        return run.block, f"timed out after {seconds:.0f} s\n{text}", seconds
    code = os.waitstatus_to_exitcode(status)
    return (
        run.block,
        (f"exit code {code}\n{text}" if code != 0 else None),
        seconds,
    )


def run_all(
    to_run: list[Block], jobs: int, timeout: float
) -> list[tuple[Block, str | None, float]]:
    """Run the blocks, ``jobs`` at a time, each in a process forked from this one (torch already imported)."""
    pending, running, done = list(to_run), [], []
    while pending or running:
        while pending and len(running) < jobs:
            running.append(_start(pending.pop(0)))
        for run in list(running):
            pid, status = os.waitpid(run.pid, os.WNOHANG)
            if pid == 0 and time.perf_counter() - run.start < timeout:
                continue
            if (
                pid == 0
            ):  # past the timeout: end the block and whatever it started
                os.killpg(run.pid, signal.SIGKILL)
                os.waitpid(run.pid, 0)
                result = _finish(run, None)
            else:
                result = _finish(run, status)
            running.remove(run)
            done.append(result)
            block, failure, seconds = result
            print(
                f"{'FAIL' if failure else 'ok  '} {block.name} ({seconds:.1f} s)",
                flush=True,
            )
        time.sleep(0.02)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "pages", nargs="*", type=Path, help="default: every docs/**/*.md"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per block"
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="blocks run at once"
    )
    args = parser.parse_args()
    pages = [p.resolve() for p in args.pages] or sorted(DOCS.rglob("*.md"))
    every = [b for page in pages for b in blocks(page)]
    to_run = [b for b in every if b.skip is None]
    for b in every:
        if b.skip is not None:
            print(f"SKIP {b.name}: {b.skip}")
    failures = [
        (b, failure)
        for b, failure, _ in run_all(to_run, args.jobs, args.timeout)
        if failure
    ]
    for block, failure in failures:
        print(
            f"\n---- {block.name} failed: {failure}\n---- the block:\n{block.code}"
        )
    print(
        f"\n{len(to_run) - len(failures)} ran and passed, {len(failures)} failed, {len(every) - len(to_run)} skipped"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
