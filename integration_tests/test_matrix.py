"""The facade across accelerator x strategy x precision x devices: a named table of combinations.

Every row of ``RUNS`` trains the program of ``integration_program`` (a small MLP, fixed data,
SGD, 3 steps over a global batch of 8 split across the processes by the set-up DataLoader)
and compares the final parameters of every process with one plain PyTorch process in float64
on the whole batch. Every row of ``FAILS`` is a combination this machine cannot run: it must
fail at construction with ``LiteConfigurationError`` naming the reason.

How each strategy runs here:
- single_device: in this process.
- ddp_fork / ddp_spawn: ``MatrixLite(...).run()`` in this process, which forks/spawns the ranks.
- ddp / dp (dp on the CPU runs as ddp, with a warning): the script launcher re-runs the user's
  script, so a script is written to tmp_path and run with subprocess; one script run per device
  count trains all of its rows in a row (same order in every process), to save start-up time.

Tolerances (max abs difference of any parameter to the float64 reference, after 3 steps in
which the largest parameter moves by ~0.27): 64-true 1e-10 (the same float64 arithmetic up to
reduction order), 32-true 1e-5 (float32 rounding), 16-mixed 2e-3 (float16 matmuls, 10-bit
mantissa), bf16-mixed 1e-2 (bfloat16 matmuls, 7-bit mantissa), bf16-true 2e-2 (bfloat16
parameters and updates). Each row also checks that training moved the parameters by more than
10x its tolerance, so a run that does not train cannot pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_program import NUM_SAMPLES, MatrixLite, initial_parameters, reference_parameters

from lite_devices import get_accelerator
from lite_facade import LiteConfigurationError
from lite_precision import canonical_precision

HERE = Path(__file__).parent

# 64-true trains in float64 but returns float32 outputs (as LightningLite), so the loss is float32-rounded.
TOLERANCE = {"64-true": 1e-7, "32-true": 1e-5, "16-mixed": 2e-3, "bf16-mixed": 1e-2, "bf16-true": 2e-2}
PARAM_DTYPE = {"64-true": "torch.float64", "bf16-true": "torch.bfloat16"}  # else torch.float32
OUTPUT_DTYPE: dict[str, str] = {}  # every mode gives float32 outputs (64-true too, as in LightningLite)
SCRIPT_STRATEGIES = ("ddp", "dp")  # launched by re-running the script
CPU_STRATEGIES = ("single_device", "ddp", "ddp_spawn", "ddp_fork")
PRECISIONS = (64, 32, "16-mixed", "bf16-mixed", "bf16-true")


@dataclass(frozen=True)
class Run:
    """A combination that trains here and must match the plain PyTorch reference."""

    accelerator: str
    strategy: str
    precision: int | str
    devices: int
    warns: str | None = None  # a warning the facade must give (a LightningLite-compatible rewrite)

    def __str__(self) -> str:
        return f"{self.accelerator}-{self.strategy}-{self.precision}-{self.devices}dev"


@dataclass(frozen=True)
class Fail:
    """A combination that cannot run here: constructing the Lite raises LiteConfigurationError."""

    accelerator: str | None
    strategy: str | None
    precision: int | str
    devices: Any
    match: str  # a piece of the message (regex)

    def __str__(self) -> str:
        return f"{self.accelerator}-{self.strategy}-{self.precision}-{self.devices}dev"


DP_WARNING = "strategy='dp' does not run on 'cpu': running as strategy='ddp'"

# fmt: off
RUNS = [
    #   accelerator strategy          precision     devices
    Run("cpu",      "single_device",  64,           1),
    Run("cpu",      "single_device",  32,           1),
    Run("cpu",      "single_device",  "16-mixed",   1),
    Run("cpu",      "single_device",  "bf16-mixed", 1),
    Run("cpu",      "single_device",  "bf16-true",  1),
    # single_device x 2 devices: one process cannot use two devices -> FAILS
    Run("cpu",      "ddp",            64,           1),
    Run("cpu",      "ddp",            32,           1),
    Run("cpu",      "ddp",            "16-mixed",   1),
    Run("cpu",      "ddp",            "bf16-mixed", 1),
    Run("cpu",      "ddp",            "bf16-true",  1),
    Run("cpu",      "ddp",            64,           2),
    Run("cpu",      "ddp",            32,           2),
    Run("cpu",      "ddp",            "16-mixed",   2),
    Run("cpu",      "ddp",            "bf16-mixed", 2),
    Run("cpu",      "ddp",            "bf16-true",  2),
    Run("cpu",      "ddp_spawn",      64,           1),
    Run("cpu",      "ddp_spawn",      32,           1),
    Run("cpu",      "ddp_spawn",      "16-mixed",   1),
    Run("cpu",      "ddp_spawn",      "bf16-mixed", 1),
    Run("cpu",      "ddp_spawn",      "bf16-true",  1),
    Run("cpu",      "ddp_spawn",      64,           2),
    Run("cpu",      "ddp_spawn",      32,           2),
    Run("cpu",      "ddp_spawn",      "16-mixed",   2),
    Run("cpu",      "ddp_spawn",      "bf16-mixed", 2),
    Run("cpu",      "ddp_spawn",      "bf16-true",  2),
    Run("cpu",      "ddp_fork",       64,           1),
    Run("cpu",      "ddp_fork",       32,           1),
    Run("cpu",      "ddp_fork",       "16-mixed",   1),
    Run("cpu",      "ddp_fork",       "bf16-mixed", 1),
    Run("cpu",      "ddp_fork",       "bf16-true",  1),
    Run("cpu",      "ddp_fork",       64,           2),
    Run("cpu",      "ddp_fork",       32,           2),
    Run("cpu",      "ddp_fork",       "16-mixed",   2),
    Run("cpu",      "ddp_fork",       "bf16-mixed", 2),
    Run("cpu",      "ddp_fork",       "bf16-true",  2),
    # dp needs CUDA; on the CPU LightningLite ran it as ddp, and so do we, with a warning.
    Run("cpu",      "dp",             32,           1,  warns=DP_WARNING),
    Run("cpu",      "dp",             32,           2,  warns=DP_WARNING),
    Run("cpu",      "dp",             "bf16-mixed", 2,  warns=DP_WARNING),
    # Seed spellings of the precision (16 -> 16-mixed, "bf16" -> bf16-mixed) through the same path.
    Run("cpu",      "ddp_fork",       16,           2),
    Run("cpu",      "ddp_fork",       "bf16",       2),
    # Deliberately not run:
    # - precision "16-true": not one of LightningLite's precisions; lite-precision's tests train it.
    # - fsdp: trained and resumed through the facade in test_fsdp_facade.py (nox -s fsdp).
    # - deepspeed: trained and resumed through the facade in test_deepspeed_facade.py (nox -s deepspeed);
    #   here, without the package, it must name the pip extra (FAILS).
    # - ddp_sharded(_spawn), tpu_spawn/xla: not runnable here -> FAILS.
    # - num_nodes > 1: needs several machines; the facade's resolver tables cover the flag.
]

FAILS = [
    #    accelerator strategy          precision     devices  what the message says
    Fail("cpu",      "single_device",  64,           2,       "uses at most 1 device"),
    Fail("cpu",      "single_device",  32,           2,       "uses at most 1 device"),
    Fail("cpu",      "single_device",  "16-mixed",   2,       "uses at most 1 device"),
    Fail("cpu",      "single_device",  "bf16-mixed", 2,       "uses at most 1 device"),
    Fail("cpu",      "single_device",  "bf16-true",  2,       "uses at most 1 device"),
    # On the CPU, devices is a number of processes, not indices.
    Fail("cpu",      "ddp_spawn",      32,           [1, 4],  "no device indices"),
    Fail("cpu",      "ddp_fork",       32,           "1, 4",  "no device indices"),
    # Backends that do not run on the CPU or are not installed here.
    Fail("cpu",      "deepspeed",      32,           2,       r"pip install 'deepspeed>=0\.14'"),
    Fail("cpu",      "ddp_sharded",    32,           2,       r"pip install 'fairscale>=0\.4\.13'"),
    Fail("cpu",      "ddp_sharded_spawn", 32,        2,       r"pip install 'fairscale>=0\.4\.13'"),
    Fail("cpu",      "tpu_spawn",      32,           2,       "cannot run on accelerator 'cpu'"),
    # Names nobody knows.
    Fail("cpu",      "horovod",        32,           2,       "unknown strategy 'horovod'"),
    Fail("cpu",      "ddp",            8,            2,       "precision='8' is not a precision"),
    Fail("ipu",      None,             32,           1,       "ipu"),
]
# fmt: on

FAIL_ROWS: list[Fail] = [row.values[0] if hasattr(row, "values") else row for row in FAILS]  # type: ignore[misc]

# gpu / tpu / mps x every strategy x every precision x 1, 2 devices: each fails for the same reason
# (no such device here), so these rows are generated rather than written out. Where the machine
# has the accelerator the row is skipped: this matrix is the CPU's.
UNAVAILABLE = [
    Fail(accelerator, strategy, precision, devices, "is not available here")
    for accelerator in ("gpu", "tpu", "mps")
    for strategy in (*CPU_STRATEGIES, "dp")
    for precision in PRECISIONS
    for devices in (1, 2)
]


# -- the script-launched rows ----------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys, warnings
sys.path.insert(0, {here!r})
from integration_program import MatrixLite

def main():
    devices = int(sys.argv[1])
    results = {{}}
    for strategy, precision in json.loads(sys.argv[2]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lite = MatrixLite(accelerator="cpu", strategy=strategy, devices=devices, precision=precision)
            result = lite.run()
        result["warnings"] = [str(w.message) for w in caught]
        results[f"{{strategy}}/{{precision}}"] = result
    # Every process writes its own file (the launcher sets RANK in every process it starts).
    with open(os.path.join(sys.argv[3], f"rank{{os.environ.get('RANK', '0')}}.json"), "w") as f:
        json.dump(results, f)

if __name__ == "__main__":
    main()
"""


def _run_ddp_script(tmp: Path, devices: int) -> dict[str, Any]:
    """Run every script-launched row with ``devices`` in one script run; return rank 0's results."""
    rows = [r for r in RUNS if r.strategy in SCRIPT_STRATEGIES and r.devices == devices]
    script = tmp / "ddp_matrix.py"
    script.write_text(DDP_SCRIPT.format(here=str(HERE)))
    configs = json.dumps([[r.strategy, r.precision] for r in rows])
    proc = subprocess.run(
        [sys.executable, str(script), str(devices), configs, str(tmp)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp,
    )
    assert proc.returncode == 0, f"ddp script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    per_rank = [json.loads((tmp / f"rank{rank}.json").read_text()) for rank in range(devices)]
    for rank, results in enumerate(per_rank[1:], start=1):  # every process ran every row, and agrees
        assert results.keys() == per_rank[0].keys()
        for key, result in results.items():
            assert result["params"] == per_rank[0][key]["params"], f"rank {rank} differs on {key}"
    return per_rank[0]


@pytest.fixture(scope="module")
def ddp_script_results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, Any]]:
    """The script-launched rows' results, one script run per device count (run on first use)."""
    cache: dict[int, dict[str, Any]] = {}

    def get(devices: int) -> dict[str, Any]:
        if devices not in cache:
            cache[devices] = _run_ddp_script(tmp_path_factory.mktemp(f"ddp{devices}"), devices)
        return cache[devices]

    return get


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, torch.Tensor]:
    """The plain PyTorch result and the parameters before training."""
    return reference_parameters(), initial_parameters()


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", RUNS, ids=str)
def test_row_trains_like_plain_pytorch(
    row: Run,
    reference: tuple[torch.Tensor, torch.Tensor],
    ddp_script_results: Callable[[int], dict[str, Any]],
) -> None:
    if row.strategy in SCRIPT_STRATEGIES:
        result = ddp_script_results(row.devices)[f"{row.strategy}/{row.precision}"]
        caught = result["warnings"]
    else:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            lite = MatrixLite(
                accelerator=row.accelerator,
                strategy=row.strategy,
                devices=row.devices,
                precision=row.precision,
            )
            result = lite.run()
        caught = [str(w.message) for w in records]

    if row.warns:
        assert any(row.warns in message for message in caught), caught

    precision = canonical_precision(row.precision)
    assert result["world_size"] == row.devices
    assert result["ranks"] == list(range(row.devices))
    # The set-up DataLoader gave each process its share of the data, no sample twice.
    assert result["samples"] == [NUM_SAMPLES // row.devices] * row.devices
    assert result["param_dtype"] == PARAM_DTYPE.get(precision, "torch.float32")
    assert result["output_dtype"] == OUTPUT_DTYPE.get(precision, "torch.float32")

    params = torch.tensor(result["params"], dtype=torch.float64)
    for rank in range(1, row.devices):  # DDP keeps every replica identical
        torch.testing.assert_close(params[rank], params[0], rtol=0, atol=0)
    expected, initial = reference
    tolerance = TOLERANCE[precision]
    assert (expected - initial).abs().max() > 10 * tolerance  # training moves further than the tolerance
    torch.testing.assert_close(params[0], expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("row", FAILS, ids=str)
def test_row_fails_at_construction(row: Fail) -> None:
    with pytest.raises(LiteConfigurationError, match=row.match):
        MatrixLite(
            accelerator=row.accelerator, strategy=row.strategy, devices=row.devices, precision=row.precision
        )


@pytest.mark.parametrize("row", UNAVAILABLE, ids=str)
def test_unavailable_accelerator_fails_at_construction(row: Fail) -> None:
    if get_accelerator(str(row.accelerator)).is_available():
        pytest.skip(f"{row.accelerator} is available on this machine; this matrix is the CPU's")
    with pytest.raises(LiteConfigurationError, match=row.match):
        MatrixLite(
            accelerator=row.accelerator, strategy=row.strategy, devices=row.devices, precision=row.precision
        )


def test_every_cpu_combination_is_in_a_table() -> None:
    """Each cpu strategy x precision x devices is either run or asserted to fail."""
    covered = {(r.strategy, canonical_precision(r.precision), r.devices) for r in RUNS}
    for f in FAIL_ROWS:
        if f.accelerator == "cpu" and f.precision in PRECISIONS and isinstance(f.devices, int):
            covered.add((f.strategy, canonical_precision(f.precision), f.devices))
    missing = [
        (strategy, canonical_precision(precision), devices)
        for strategy in CPU_STRATEGIES
        for precision in PRECISIONS
        for devices in (1, 2)
        if (strategy, canonical_precision(precision), devices) not in covered
    ]
    assert not missing


def test_table_rows_are_unique() -> None:
    ids = [str(r) for r in RUNS] + [f"{f}:{f.match}" for f in FAIL_ROWS]
    assert len(ids) == len(set(ids))
