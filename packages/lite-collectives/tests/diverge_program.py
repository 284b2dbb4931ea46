"""One rank of a two-process run that goes wrong on purpose; run by test_collectives_watchdog.py.

    python diverge_program.py CASE   (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set)

Prints one line ``RESULT <json>`` with what this rank raised and how long after entering the
faulty collective.
"""

import json
import os
import signal
import sys
import time

import torch

import lite_collectives as lc

case = sys.argv[1]
timeout = float(os.environ.get("DIVERGE_TIMEOUT", "60"))
lc.init_process_group(timeout=timeout)
rank = lc.global_rank()
lc.all_reduce(torch.ones(1))  # everyone is here: a healthy first collective
start = time.monotonic()
result = {"rank": rank, "case": case}
try:
    if case == "op":  # rank 0 in a barrier, rank 1 in an all_reduce
        lc.barrier() if rank == 0 else lc.all_reduce(torch.ones(4))
    elif case == "shape":  # the same all_reduce with other shapes
        lc.all_reduce(torch.ones(4 + 1000 * rank))
    elif case == "dtype":  # all_gather told the shapes match; the dtypes do not
        lc.all_gather(torch.ones(4, dtype=torch.float32 if rank == 0 else torch.float64), same_shapes=True)
    elif case == "exit":  # rank 1 leaves the script (a clean exit) while rank 0 waits
        if rank == 1:
            sys.exit(0)
        lc.all_reduce(torch.ones(4))
    elif case == "kill":  # rank 1's process is killed while rank 0 waits
        if rank == 1:
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)
        lc.all_reduce(torch.ones(4))
    elif case == "idle":  # rank 1 is alive but busy outside any collective
        if rank == 1:
            time.sleep(timeout + 4)
        else:
            lc.barrier()
    else:
        raise SystemExit(f"unknown case {case!r}")
    result["raised"] = None
except Exception as exc:
    result["raised"] = type(exc).__name__
    result["message"] = str(exc)
result["seconds"] = round(time.monotonic() - start, 2)
if result["raised"] is not None:
    try:  # the group is broken now: the next collective says so at once
        lc.all_reduce(torch.ones(1))
    except Exception as exc:
        result["next"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(result), flush=True)
os._exit(0)  # a broken group may still hold a backend operation in flight
