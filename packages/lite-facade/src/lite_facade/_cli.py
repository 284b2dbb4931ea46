"""The ``lite`` console script: ``lite run [flags] script.py [args]`` / ``lite run [flags] -m module [args]``.

It starts the processes with ``torch.distributed.run`` (torchrun: its rendezvous, its elastic
agent, its multi-node behaviour) and hands the flags to every process's ``LightningLite`` through
the ``LITE_*`` environment variables below, which the facade reads for the constructor flags the
script leaves at their defaults.

=====================  =========================  =================================
CLI flag               environment variable       ``LightningLite`` argument
=====================  =========================  =================================
``--accelerator``      ``LITE_ACCELERATOR``       ``accelerator``
``--strategy``         ``LITE_STRATEGY``          ``strategy``
``--devices``          ``LITE_DEVICES``           ``devices``
``--num-nodes``        ``LITE_NUM_NODES``         ``num_nodes``
``--precision``        ``LITE_PRECISION``         ``precision``
=====================  =========================  =================================
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["ENV_VARS", "effective_flags", "main", "main_exit", "torchrun_arguments"]

#: The constructor argument each ``LITE_*`` variable stands for.
ENV_VARS: dict[str, str] = {
    "accelerator": "LITE_ACCELERATOR",
    "strategy": "LITE_STRATEGY",
    "devices": "LITE_DEVICES",
    "num_nodes": "LITE_NUM_NODES",
    "precision": "LITE_PRECISION",
}

# The constructor's defaults: a flag equal to its default is "left alone" and takes the CLI's value.
_DEFAULTS: dict[str, Any] = {
    "accelerator": None,
    "strategy": None,
    "devices": None,
    "num_nodes": 1,
    "precision": 32,
}

_CLI_FLAG = {
    "accelerator": "--accelerator",
    "strategy": "--strategy",
    "devices": "--devices",
    "num_nodes": "--num-nodes",
    "precision": "--precision",
}


def _env_value(name: str, text: str) -> Any:
    """The Python value a ``LITE_*`` variable's text stands for (numbers become ints)."""
    text = text.strip()
    if name in ("devices", "num_nodes", "precision"):
        try:
            return int(text)
        except ValueError:
            pass
    if name == "num_nodes":
        raise ValueError(f"{ENV_VARS[name]}={text!r}: must be an int >= 1 (the number of machines)")
    return text


def _as_text(value: Any) -> str:
    """How a constructor flag reads on the command line, to compare it with a ``LITE_*`` variable."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    name = getattr(type(value), "strategy_name", None)  # a strategy object compares by its name
    if isinstance(name, str):
        return name
    return str(value).replace(" ", "")


def effective_flags(environ: Any = None, **flags: Any) -> dict[str, Any]:
    """The constructor flags after the ``LITE_*`` environment variables that ``lite run`` sets.

    A flag left at its default takes the variable's value; a flag given explicitly that says the
    same as the variable is kept; one that says something else is an error naming both.

    Raises:
        LiteConfigurationError: an explicit flag conflicts with the launcher's.
    """
    from lite_facade._resolve import LiteConfigurationError

    environ = os.environ if environ is None else environ
    result = dict(flags)
    conflicts: list[str] = []
    for name, variable in ENV_VARS.items():
        text = environ.get(variable)
        if text is None or text == "" or name not in flags:
            continue
        try:
            from_env = _env_value(name, text)
        except ValueError as err:
            conflicts.append(str(err))
            continue
        given = flags[name]
        if given is None or (given == _DEFAULTS[name] and not isinstance(given, bool)):
            result[name] = from_env
        elif _as_text(given) != _as_text(from_env):
            conflicts.append(
                f"{name}={given!r} was passed to LightningLite, but the launcher set {_CLI_FLAG[name]} {text} "
                f"({variable}={text!r}); drop one of them (leave `{name}` at its default to take the launcher's)"
            )
    if conflicts:
        raise LiteConfigurationError(
            "LightningLite's flags conflict with `lite run`'s:\n" + "\n".join(f"  - {c}" for c in conflicts)
        )
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lite",
        description="Launch a LightningLite script on one or more processes and machines.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a script (or -m module) in as many processes as the flags ask, with torchrun",
        description=(
            "Run SCRIPT (or, with -m, a module) in devices x num-nodes processes started by "
            "torch.distributed.run. The flags reach every process's LightningLite through the "
            "LITE_ACCELERATOR, LITE_STRATEGY, LITE_DEVICES, LITE_NUM_NODES and LITE_PRECISION environment "
            "variables; a LightningLite flag the script leaves at its default takes the launcher's value."
        ),
        epilog="Example: lite run --accelerator cpu --devices 2 --strategy ddp train.py --epochs 3",
    )
    run.add_argument("--accelerator", help="cpu, gpu/cuda, mps, tpu or auto (LITE_ACCELERATOR)")
    run.add_argument("--strategy", help="ddp (the default for several processes), fsdp, deepspeed, ...")
    run.add_argument(
        "--devices",
        help="devices per machine: a count (the number of processes), a list such as 0,1, or -1/auto for all GPUs",
    )
    run.add_argument("--num-nodes", type=int, default=1, help="how many machines take part (default 1)")
    run.add_argument("--node-rank", type=int, default=0, help="the index of this machine, 0 to num-nodes-1")
    run.add_argument(
        "--main-address",
        help="the address of the machine with node rank 0 (default 127.0.0.1: one machine)",
    )
    run.add_argument(
        "--main-port",
        type=int,
        help="the port on the main machine (default: a free port for one machine, 29500 for several)",
    )
    run.add_argument("--precision", help="64, 32, 16, bf16, 16-mixed, bf16-mixed, ... (LITE_PRECISION)")
    run.add_argument("-m", "--module", action="store_true", help="SCRIPT is a module name, run as python -m")
    run.add_argument("script", metavar="SCRIPT", help="the script to run (or the module, with -m)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    return parser


def _process_count(devices: str | None, accelerator: str | None, parser: argparse.ArgumentParser) -> int:
    if devices is None:
        return 1
    text = devices.strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text in ("-1", "auto"):
        if (accelerator or "").lower() in ("gpu", "cuda", "auto"):
            import torch

            count = torch.cuda.device_count()
            if count:
                return count
        parser.error(
            f"--devices {text}: 'all devices' needs --accelerator gpu on a machine with GPUs; "
            "on the CPU pass the number of processes, e.g. --devices 2"
        )
    try:
        count = int(text)
    except ValueError:
        parser.error(f"--devices {text!r}: expected a count such as 2, a list such as 0,1, or -1/auto")
    if count < 1:
        parser.error(f"--devices {count}: expected at least 1")
    return count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_arguments(args: argparse.Namespace, nproc: int) -> list[str]:
    """The ``torch.distributed.run`` command line for parsed ``lite run`` arguments."""
    address = args.main_address or "127.0.0.1"
    port = args.main_port
    if port is None:
        port = _free_port() if args.num_nodes == 1 else 29500
    argv = [
        f"--nproc_per_node={nproc}",
        f"--nnodes={args.num_nodes}",
        f"--node_rank={args.node_rank}",
        f"--master_addr={address}",
        f"--master_port={port}",
    ]
    if args.module:
        argv.append("-m")
    return [*argv, args.script, *args.script_args]


def _check_names(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse an unknown accelerator, strategy or precision before any process starts.

    Each started process would refuse it too, one traceback per rank; availability (a GPU, a
    backend package) is left to them, since it is each machine's to tell.
    """
    from lite_devices import DeviceError, get_accelerator
    from lite_precision import PrecisionError, canonical_precision
    from lite_strategies import StrategyError, get_strategy_spec

    checks: list[tuple[str, Any, type[Exception]]] = [
        # "auto" is left out: finding the best one here would look for devices in the launcher
        ("accelerator", lambda text: text.strip().lower() == "auto" or get_accelerator(text), DeviceError),
        ("strategy", get_strategy_spec, StrategyError),
        ("precision", lambda text: canonical_precision(_env_value("precision", text)), PrecisionError),
    ]
    for name, check, error in checks:
        value = getattr(args, name)
        if value is None:
            continue
        try:
            check(value)
        except error as err:
            parser.error(f"{_CLI_FLAG[name]} {value!r}: {err}")
    if args.main_port is not None and not 1 <= args.main_port <= 65535:
        parser.error(f"--main-port {args.main_port}: expected a TCP port, 1 to 65535")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.num_nodes < 1:
        parser.error(f"--num-nodes {args.num_nodes}: expected at least 1")
    if not 0 <= args.node_rank < args.num_nodes:
        parser.error(
            f"--node-rank {args.node_rank}: expected 0 to {args.num_nodes - 1} (--num-nodes {args.num_nodes})"
        )
    if not args.module and not os.path.isfile(args.script):
        parser.error(f"{args.script!r} is not a file; to run a module, pass -m {args.script}")
    _check_names(args, parser)
    nproc = _process_count(args.devices, args.accelerator, parser)
    for name in ("accelerator", "strategy", "devices", "precision"):
        value = getattr(args, name)
        if value is not None:
            os.environ[ENV_VARS[name]] = value
        else:
            os.environ.pop(ENV_VARS[name], None)
    os.environ[ENV_VARS["num_nodes"]] = str(args.num_nodes)

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.run(torchrun.parse_args(torchrun_arguments(args, nproc)))
    except ChildFailedError as err:
        rank, first = err.get_first_failure()
        others = sorted(r for r in err.failures if r != rank)
        also = f" (also failed: rank {', '.join(map(str, others))})" if others else ""
        print(
            f"lite run: rank {rank} (local rank {first.local_rank} on node {args.node_rank}) failed with exit code "
            f"{first.exitcode}{also}; its traceback is printed above",
            file=sys.stderr,
        )
        return first.exitcode if first.exitcode > 0 else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lite`` console script (and of ``python -m lite_facade``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help()
        return 0
    return _run(args, parser)


def main_exit() -> None:
    """The console script: `main`, its value as the exit status."""
    sys.exit(main())
