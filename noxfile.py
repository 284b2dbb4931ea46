"""Every session the project has.

    nox -s ci                 what CI runs (.ci/run calls it)
    nox -s "tests(package='lite-devices')"   one package, alone, from a built wheel
    nox -s integration        the facade across the combination matrix
    nox -s lint               ruff check, ruff format --check, mypy, the import-direction check

Each test session installs only a package's in-repo closure, built as wheels from this
checkout (never from an index: an in-repo name always comes from here), plus torch pinned
to ``LITE_TORCH`` (default ``torch==2.13.0``) and the test tools.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"
PACKAGES = [
    "lite-devices",
    "lite-precision",
    "lite-collectives",
    "lite-data",
    "lite-strategies",
    "lite-facade",
]
TORCH = os.environ.get("LITE_TORCH", "torch==2.13.0")
PYTHON = os.environ.get("LITE_PYTHON", "3.11")
# No numpy: torch does not need it, so no package may, and a hidden import must fail CI.
TEST_TOOLS = ["pytest>=8", "pytest-timeout", "hypothesis"]
# Packages whose tests take numpy values as inputs (np.int64, np.ndarray): numpy is installed for them.
NUMPY_INPUT_PACKAGES = {"lite-devices", "lite-precision"}
# Tests that check what happens to numpy where it is installed (its generator seeded): they skip
# in the numpy-free run, then run again once numpy is installed.
NUMPY_TESTS = {
    "lite-data": ["tests/test_data_seed.py"],
}
# Integration tests that need numpy or scikit-learn (the image-classifier example, numpy seeding).
INTEGRATION_NUMPY_TESTS = [
    "test_examples.py::test_image_classifier",
    "test_spec_snippets.py::test_seed_everything_snippet",
]
# Optional backends with a session of their own (`nox -s fsdp` ...); xla is opt-in, outside CI.
BACKENDS = ["fsdp", "fairscale", "deepspeed", "xla"]

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["ci"]

# uv does not read pip's configuration: hand it pip's find-links (where a local torch build
# may lie) and keep it from downloading Pythons.
if os.environ.get("PIP_FIND_LINKS") and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")


def _in_repo_deps(package: str) -> list[str]:
    """The in-repo packages that ``package`` declares as dependencies (direct only)."""
    meta = tomllib.loads((PACKAGES_DIR / package / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0] for dep in meta.get("dependencies", [])]
    return [n for n in names if (PACKAGES_DIR / n / "pyproject.toml").exists()]


def closure(package: str) -> list[str]:
    """``package`` and every in-repo package it needs, dependencies first."""
    seen: list[str] = []

    def visit(name: str) -> None:
        for dep in _in_repo_deps(name):
            visit(dep)
        if name not in seen:
            seen.append(name)

    visit(package)
    return seen


def keep_bytecode(session: nox.Session) -> None:
    """Let every Python the session starts write and reuse compiled bytecode, outside the checkout.

    uv installs without compiling, and a machine may set PYTHONDONTWRITEBYTECODE: then every
    process a test starts compiles torch afresh (``import torch`` plus ``torch._dynamo``, which DDP
    imports: about 8 s here instead of 3.5 s). The bytecode goes to the session's own folder
    (PYTHONPYCACHEPREFIX), so no ``__pycache__`` lands in the checkout.
    """
    session.env["PYTHONDONTWRITEBYTECODE"] = ""
    session.env["PYTHONPYCACHEPREFIX"] = str(Path(session.create_tmp()).resolve() / "pycache")


def install_wheels(session: nox.Session, packages: list[str], *extra: str, torch: str = TORCH) -> None:
    """Build ``packages`` as wheels from this checkout and install them with ``torch`` and ``extra``.

    The wheels are passed by path, so the resolver takes every in-repo name from here.
    """
    keep_bytecode(session)
    out = Path(session.create_tmp()) / "wheels"
    if out.exists():
        for old in out.glob("*.whl"):
            old.unlink()
    for name in packages:
        session.run(
            "uv",
            "build",
            "--quiet",
            "--wheel",
            "--out-dir",
            str(out),
            str(PACKAGES_DIR / name),
            external=True,
        )
    wheels = sorted(str(w) for w in out.glob("*.whl"))
    session.install(*wheels, torch, *extra)


@nox.session(python=PYTHON)
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests with only that package's closure installed (built wheels)."""
    numpy = ["numpy"] if package in NUMPY_INPUT_PACKAGES else []
    # the facade's tests type-check a user script with mypy, and show a tqdm bar in progress()
    extra = ["mypy", "tqdm"] if package == "lite-facade" else []
    install_wheels(session, [*closure(package), "lite-testing"], *TEST_TOOLS, *numpy, *extra)
    tests_dir = PACKAGES_DIR / package / "tests"
    env: dict[str, str] = {}
    third_party = tests_dir / "third_party_strategy"
    if third_party.exists():
        # A strategy from outside the repo's packages, found through its entry point only.
        session.install("--no-deps", str(third_party))
        env["LITE_REQUIRE_THIRD_PARTY"] = "1"
    # A backend's own tests run in its session (see `backend_tests`), not twice.
    skip_backends = [f"--ignore-glob=*/test_{backend}_*.py" for backend in BACKENDS]
    session.run("pytest", str(tests_dir), *skip_backends, *session.posargs, env=env)
    # The docstrings' examples, run against the installed wheel (--pyargs imports the package
    # from the session's site-packages, not from src/). Collection imports every module, the
    # optional backends' too: none may import its backend at the top, so they import here.
    # Without lite-testing's guards: an example may set the variables seed_everything sets.
    module = package.replace("-", "_")
    session.run("pytest", "--doctest-modules", "--pyargs", module, "-p", "no:lite_testing", env=env)
    readme_example = tests_dir / "readme_example.py"
    if readme_example.exists():
        # The README's stand-alone example, under a real launcher with two processes.
        session.run("python", "-m", "torch.distributed.run", "--nproc_per_node", "2", str(readme_example))
    if package in NUMPY_TESTS:
        session.install("numpy")
        files = [str(PACKAGES_DIR / package / f) for f in NUMPY_TESTS[package]]
        session.run("pytest", *files, *session.posargs)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """The facade across every combination this machine can run."""
    # ipykernel and nbclient: test_notebook.py runs LightningLite in a real Jupyter kernel (no numpy)
    install_wheels(
        session, [*closure("lite-facade"), "lite-testing"], *TEST_TOOLS, "tqdm", "ipykernel", "nbclient"
    )
    skip_backends = [f"--ignore-glob=*/test_{backend}_*.py" for backend in BACKENDS]  # their own sessions
    tests = ROOT / "integration_tests"
    env = {"LITE_REQUIRE_NOTEBOOK": "1"}
    session.run("pytest", str(tests), *skip_backends, *session.posargs, env=env)  # without numpy
    session.install("numpy", "scikit-learn")
    session.run("pytest", *(str(tests / t) for t in INTEGRATION_NUMPY_TESTS), *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy on every package's src, and the import-direction check."""
    session.install("ruff", "mypy", TORCH, "pytest", "numpy")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    src_dirs = [str(PACKAGES_DIR / p / "src") for p in [*PACKAGES, "lite-testing"]]
    modules = [arg for p in PACKAGES for arg in ("-p", p.replace("-", "_"))]
    session.run("mypy", *modules, env={"MYPYPATH": os.pathsep.join(src_dirs)})
    session.run("python", str(ROOT / ".ci" / "check_imports.py"))


def backend_tests(
    session: nox.Session, backend: str, *requirements: str, install_args: tuple[str, ...] = ()
) -> None:
    """Install the facade's closure plus one optional backend, then run that backend's tests.

    A backend's tests are ``packages/lite-strategies/tests/test_<backend>_*.py`` and
    ``integration_tests/test_<backend>_*.py``; elsewhere (no backend installed) they skip.
    """
    # numpy: torch's distributed checkpoint (FSDP) and DeepSpeed use torch's object collectives,
    # which need it; lite's own collectives do not.
    install_wheels(session, [*closure("lite-facade"), "lite-testing"], *TEST_TOOLS, "numpy")
    if requirements:
        # torch is already installed (pinned): a backend that builds against it must see it.
        session.install(*install_args, *requirements, TORCH)
    files = sorted(
        [
            *(PACKAGES_DIR / "lite-strategies" / "tests").glob(f"test_{backend}_*.py"),
            *(ROOT / "integration_tests").glob(f"test_{backend}_*.py"),
        ]
    )
    if not files:
        session.error(f"no test files for backend {backend!r}")
    session.run("pytest", *map(str, files), *session.posargs)


@nox.session(python=PYTHON)
def fsdp(session: nox.Session) -> None:
    """The 'fsdp' strategy (torch FSDP2, no extra package) on CPU/gloo."""
    backend_tests(session, "fsdp")


@nox.session(python=PYTHON)
def fairscale(session: nox.Session) -> None:
    """The 'ddp_sharded' strategies on fairscale (OSS + ShardedDataParallel) on CPU/gloo."""
    backend_tests(session, "fairscale", "fairscale==0.4.13")


@nox.session(python=PYTHON)
def deepspeed(session: nox.Session) -> None:
    """The 'deepspeed' strategies (ZeRO stages, CPU accelerator, gloo)."""
    backend_tests(session, "deepspeed", "deepspeed==0.19.8", install_args=("--no-build-isolation",))


def ci_sessions() -> list[str]:
    """Every session CI runs, the longest first (so two lanes end at about the same time)."""
    backends = [b for b in BACKENDS if b != "xla"]  # xla needs torch 2.9 + torch_xla: several GB, opt-in
    return [
        "integration",
        "tests(package='lite-facade')",
        "tests(package='lite-strategies')",
        *backends,
        "docs",
        "tests(package='lite-collectives')",
        "tests(package='lite-data')",
        "tests(package='lite-precision')",
        "tests(package='lite-devices')",
        "lint",
    ]


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """What CI runs: lint, every package alone, the integration matrix, the backends, the docs.

    The sessions run as separate nox processes, ``LITE_CI_JOBS`` at a time (default 2: most of a
    session's time is spent waiting on its own subprocesses, so two lanes share two cores well).
    Each writes its log to ``.nox/_ci_logs/``; a failed session's log is printed whole, and every
    session runs even after one fails, so one run shows every failure. ``LITE_CI_JOBS=1`` runs
    them one after another.
    """
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    jobs = max(1, int(os.environ.get("LITE_CI_JOBS", "2")))
    logs = ROOT / ".nox" / "_ci_logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def run(name: str) -> tuple[str, int, float, Path]:
        log = logs / (re.sub(r"[^\w.-]+", "_", name).strip("_") + ".log")
        began = time.monotonic()
        with log.open("w") as out:
            code = subprocess.call(
                [sys.executable, "-m", "nox", "--no-color", "-f", str(ROOT / "noxfile.py"), "-s", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        took = time.monotonic() - began
        at = time.monotonic() - start
        print(
            f"[ci {at / 60:5.1f} min] {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {took:.0f} s",
            flush=True,
        )
        return name, code, took, log

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # LITE_CI_SESSIONS="lint;docs" runs only those, the same way (to try one lane locally).
        chosen = [n.strip() for n in os.environ.get("LITE_CI_SESSIONS", "").split(";") if n.strip()]
        results = list(pool.map(run, chosen or ci_sessions()))
    failed = [(name, log) for name, code, _, log in results if code != 0]
    for name, log in failed:
        print(f"\n===== {name} failed; its log ({log}) =====\n{log.read_text()}", flush=True)
    total = time.monotonic() - start
    print(
        f"ci: {len(results) - len(failed)} of {len(results)} sessions passed in {total / 60:.1f} min ({jobs} lanes)"
    )
    if failed:
        session.error(f"failed: {', '.join(name for name, _ in failed)}")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors, check the API reference rendered, run every python block."""
    # ruff formats the signatures in the API reference.
    install_wheels(
        session, closure("lite-facade"), "numpy", "mkdocs", "mkdocs-material", "mkdocstrings[python]", "ruff"
    )
    site = Path(session.create_tmp()) / "site"
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(site),
        env={"NO_MKDOCS_2_WARNING": "1"},
    )
    # reST in a docstring (a Sphinx role, an `Example::` block) builds without a warning: look for it
    session.run("python", str(ROOT / "docs" / "check_rendered.py"), str(site))
    # Blocks that spawn processes re-import torch there: the bytecode is kept (see keep_bytecode).
    session.run("python", str(ROOT / "docs" / "run_code_blocks.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Overhead against raw PyTorch: writes bench/RESULTS.md (never part of CI's pass/fail)."""
    install_wheels(session, closure("lite-facade"), "numpy")
    session.run("python", str(ROOT / "bench" / "run_all.py"), *session.posargs)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """On a machine with CUDA: every package's tests (the CUDA ones run for real) and the CUDA step bench.

    Set LITE_TORCH to a CUDA build of torch for that machine. Not part of CI (CI has no GPU);
    `.ci/gpu_check.sh` does the same from source on a machine without network.
    """
    install_wheels(session, [*closure("lite-facade"), "lite-testing"], *TEST_TOOLS)
    for package in PACKAGES:
        session.run("pytest", str(PACKAGES_DIR / package / "tests"), "-q", "-rs", *session.posargs)
    session.run("python", str(ROOT / "bench" / "bench_step.py"), "--device", "cuda")


XLA_TORCH = "torch==2.9.0"  # torch_xla pins the torch it was built against
XLA_REQUIREMENT = "torch_xla==2.9.0"
XLA_TEST_GLOB = "test_*xla*.py"


@nox.session(python=PYTHON)
def xla(session: nox.Session) -> None:
    """Opt-in, not in CI: torch 2.9.0 with torch_xla 2.9.0 on XLA:CPU (``PJRT_DEVICE=CPU``, one device).

    First every package's tests under that older torch (the packages declare torch>=2.1),
    as CI's machine looks: torch_xla installed, no XLA device asked for. Then the XLA tests
    (the 'xla' strategy, its launcher, the facade on 'tpu') with ``PJRT_DEVICE=CPU``, in a
    pytest process of their own: the XLA runtime must not start in one that later forks ranks.
    torch 2.9.0 is a CUDA build: the first run downloads about 4 GB (cached by uv afterwards).
    """
    install_wheels(
        session, [*closure("lite-facade"), "lite-testing"], *TEST_TOOLS, XLA_REQUIREMENT, torch=XLA_TORCH
    )
    plain = {"PJRT_DEVICE": None, "CPU_NUM_DEVICES": None}
    xla_files = sorted(
        str(f)
        for d in (*(PACKAGES_DIR / p / "tests" for p in PACKAGES), ROOT / "integration_tests")
        for f in d.glob(XLA_TEST_GLOB)
    )
    for package in PACKAGES:
        tests_dir = PACKAGES_DIR / package / "tests"
        skip = [f"--ignore={f}" for f in xla_files if Path(f).parent == tests_dir]
        session.run("pytest", str(tests_dir), *skip, *session.posargs, env=plain)
    session.run("pytest", *xla_files, "-rs", *session.posargs, env={**plain, "PJRT_DEVICE": "CPU"})
