"""The deepspeed strategies: config building and its errors (tables, no processes), and training,
checkpoints and consolidation in two real gloo processes compared with one float64 process.

The processes train a 4-16-2 MLP on 8 fixed samples (4 per rank) for 3 steps; the reference is
one float64 process on the whole batch (each rank's mean loss averaged over the ranks equals
the mean over the global batch). Tolerances: fp32 1e-5 (rounding of float32 arithmetic),
bf16 2e-2 (bfloat16 parameters and activations, 7-bit mantissa, fp32 master weights); every
case also checks that training moved the parameters by more than 10x its tolerance.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("deepspeed")

import torch
from torch import nn

from lite_precision import get_precision
from lite_strategies import (
    CheckpointError,
    DeepSpeedStrategy,
    StrategyError,
    consolidate_deepspeed_checkpoint,
    get_strategy_spec,
)
from lite_testing import run_processes

CPU2 = [torch.device("cpu")] * 2
STEPS = 3
LR = 0.5
TOLERANCE = {"32-true": 1e-5, "bf16-mixed": 2e-2}


def _cpu_has_fp16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


# ---------------------------------------------------------------------- config (no processes)
def _strategy(precision: str = "32-true", **kwargs: Any) -> DeepSpeedStrategy:
    return DeepSpeedStrategy(devices=CPU2, precision=get_precision(precision, "cpu"), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "precision", "expected"),
    [
        (
            {},
            "32-true",
            {
                "zero_optimization": {"stage": 2},
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 0.0,
                "zero_allow_untested_optimizer": True,
            },
        ),
        ({"stage": 0}, "32-true", {"zero_optimization": {"stage": 0}}),
        ({"stage": 3}, "bf16-mixed", {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}),
        ({"stage": 1}, "bf16-true", {"bf16": {"enabled": True}}),
        (
            {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
            "32-true",
            {
                "zero_optimization": {
                    "stage": 3,
                    "offload_optimizer": {"device": "cpu", "pin_memory": False},
                    "offload_param": {"device": "cpu", "pin_memory": False},
                },
                "zero_force_ds_cpu_optimizer": False,
            },
        ),
        (
            {"stage": 2, "offload_optimizer": True, "offload_optimizer_device": "nvme", "nvme_path": "/nvme"},
            "32-true",
            {
                "zero_optimization": {
                    "stage": 2,
                    "offload_optimizer": {"device": "nvme", "pin_memory": False, "nvme_path": "/nvme"},
                }
            },
        ),
        (
            {"stage": 2, "reduce_bucket_size": 1000, "overlap_comm": False},
            "32-true",
            {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000, "overlap_comm": False}},
        ),
        ({"logging_batch_size_per_gpu": 4}, "32-true", {"train_micro_batch_size_per_gpu": 4}),
        # A user's config is kept as it is; only what it leaves out is filled in.
        (
            {
                "config": {
                    "train_batch_size": 16,
                    "train_micro_batch_size_per_gpu": 4,
                    "gradient_clipping": 1.0,
                }
            },
            "32-true",
            {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0},
        ),
        (
            {"config": {"zero_optimization": {"stage": 1}}, "stage": 3},
            "bf16-mixed",
            {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}, "gradient_accumulation_steps": 1},
        ),
        ({"config": {"bf16": {"enabled": True}}}, "32-true", {"bf16": {"enabled": True}}),
    ],
)
def test_deepspeed_config_is_built_from_arguments_and_precision(
    kwargs: dict[str, Any], precision: str, expected: dict[str, Any]
) -> None:
    config = _strategy(precision, **kwargs).config
    for key, value in expected.items():
        assert config[key] == value, key
    if "config" in kwargs and "train_batch_size" in kwargs["config"]:
        assert "gradient_accumulation_steps" not in config  # DeepSpeed derives it from the two sizes


@pytest.mark.parametrize(
    ("precision", "config", "dtype"),
    [
        ("32-true", None, torch.float32),
        ("bf16-mixed", None, torch.bfloat16),
        ("bf16-true", None, torch.bfloat16),
        ("32-true", {"bf16": {"enabled": True}}, torch.bfloat16),
    ],
)
def test_deepspeed_forward_casts_inputs_to_the_engine_dtype_without_autocast(
    precision: str, config: dict[str, Any] | None, dtype: torch.dtype
) -> None:
    plugin = _strategy(precision, config=config).precision
    assert plugin.name == precision
    assert not plugin.has_forward_context
    inputs = plugin.convert_input((torch.ones(2), {"ids": torch.ones(2, dtype=torch.long)}))
    assert inputs[0].dtype == dtype
    assert inputs[1]["ids"].dtype == torch.long
    assert plugin.convert_output(torch.ones(2, dtype=dtype)).dtype == torch.float32


def test_deepspeed_config_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2}))
    config = _strategy(config=str(path)).config
    assert config["zero_optimization"] == {"stage": 3}
    assert config["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.parametrize(
    ("name", "stage", "offload_optimizer", "offload_param"),
    [
        ("deepspeed", 2, False, False),
        ("deepspeed_stage_1", 1, False, False),
        ("deepspeed_stage_2", 2, False, False),
        ("deepspeed_stage_2_offload", 2, True, False),
        ("deepspeed_stage_3", 3, False, False),
        ("deepspeed_stage_3_offload", 3, True, True),
    ],
)
def test_deepspeed_registry_rows(name: str, stage: int, offload_optimizer: bool, offload_param: bool) -> None:
    spec = get_strategy_spec(name)
    assert "cpu" in spec.accelerators and spec.requires == "deepspeed"
    strategy = spec.build(devices=CPU2)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage == strategy.zero_stage
    assert ("offload_optimizer" in zero) == offload_optimizer
    assert ("offload_param" in zero) == offload_param
    # A user-built object of the row's class (its thin alias) keeps its arguments through the
    # facade's completion; every row builds the one DeepSpeedStrategy class, so type(strategy) is it.
    import lite_strategies.deepspeed as deepspeed_strategies

    alias = next(
        cls
        for cls in vars(deepspeed_strategies).values()
        if isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy) and cls.strategy_name == name
    )
    completed = alias(logging_batch_size_per_gpu=3).configured(devices=CPU2)
    assert completed.config["train_micro_batch_size_per_gpu"] == 3 and completed.zero_stage == stage


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("kwargs", "precision", "match"),
    [
        ({"stage": 4}, "32-true", "stage must be one of 0, 1, 2, 3"),
        ({"stage": True}, "32-true", "stage must be one of"),
        ({"stage": 2, "offload_parameters": True}, "32-true", "offload_parameters needs ZeRO stage 3"),
        ({"stage": 0, "offload_optimizer": True}, "32-true", "offload_optimizer needs ZeRO stage 1, 2 or 3"),
        (
            {"offload_optimizer": True, "offload_optimizer_device": "gpu"},
            "32-true",
            "offload_optimizer_device",
        ),
        ({"offload_optimizer": True, "offload_optimizer_device": "nvme"}, "32-true", "needs nvme_path"),
        ({"config": "/no/such/ds_config.json"}, "32-true", "does not exist"),
        ({"config": 3}, "32-true", "config must be a DeepSpeed config dict"),
        ({"config": {"fp16": {"enabled": True}}}, "bf16-mixed", "enables fp16 but the precision flag"),
        ({"config": {"fp16": {"enabled": True}, "bf16": {"enabled": True}}}, "32-true", "both fp16 and bf16"),
        ({}, "64-true", "no float64 mode"),
        ({"logging_batch_size_per_gpu": 0}, "32-true", "logging_batch_size_per_gpu"),
        ({"find_unused_parameters": True}, "32-true", "unknown keyword argument"),
    ],
)
def test_deepspeed_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], precision: str, match: str
) -> None:
    with pytest.raises(StrategyError, match=match):
        _strategy(precision, **kwargs)


@pytest.mark.parametrize(
    ("text", "match"), [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object")]
)
def test_deepspeed_bad_config_file(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        _strategy(config=_write(tmp_path, text))


@pytest.mark.skipif(_cpu_has_fp16(), reason="this CPU has float16 kernels: DeepSpeed accepts fp16 here")
def test_deepspeed_fp16_on_a_cpu_without_fp16_kernels_fails_at_construction() -> None:
    # The resolver of the facade turns precision=16 into bf16-mixed on such CPUs; a direct
    # 16-mixed plugin (where torch autocasts to float16 on the CPU) must be refused here.
    precision = get_precision("16-true", "cpu")
    with pytest.raises(StrategyError, match="cannot train in float16 on 'cpu'"):
        DeepSpeedStrategy(devices=CPU2, precision=precision)


def test_deepspeed_several_optimizers_for_one_model_are_refused() -> None:
    model = nn.Linear(2, 2)
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)]
    with pytest.raises(StrategyError, match="one engine per model with one optimizer, got 2"):
        _strategy().setup_module_and_optimizers(model, optimizers)


def test_deepspeed_gradient_clipping_outside_the_config_is_refused() -> None:
    strategy = _strategy()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(StrategyError, match=r"'gradient_clipping': 1\.0"):
        strategy.clip_gradients_norm(model, optimizer, max_norm=1.0)
    with pytest.raises(StrategyError, match="cannot clip gradients by value"):
        strategy.clip_gradients_value(model, optimizer, clip_val=0.5)


# ---------------------------------------------------------------------- in two processes
def _make_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _reference(steps: int = STEPS) -> torch.Tensor:
    model = _make_model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x.double()), y.double()).backward()
        optimizer.step()
    return _flat(model)


def _full_params(strategy: DeepSpeedStrategy, engine: nn.Module) -> torch.Tensor:
    state = strategy.get_module_state_dict(engine)  # gathers under stage 3
    return torch.cat([value.reshape(-1).double() for value in state.values()])


# (name, strategy kwargs, precision): every case trains in the same two processes, one after another.
TRAIN_CASES = [
    ("stage0", {"stage": 0}, "32-true"),
    ("stage1", {"stage": 1}, "32-true"),
    ("stage2", {"stage": 2}, "32-true"),
    ("stage3", {"stage": 3}, "32-true"),
    ("stage2-offload", {"stage": 2, "offload_optimizer": True}, "32-true"),
    ("stage3-offload", {"stage": 3, "offload_optimizer": True, "offload_parameters": True}, "32-true"),
    ("stage2-bf16", {"stage": 2}, "bf16-mixed"),
    ("stage3-bf16", {"stage": 3}, "bf16-mixed"),
]


def _train_cases(rank: int, world_size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    x, y = _data()
    x, y = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    for name, kwargs, precision in TRAIN_CASES:
        strategy = _strategy(precision, **kwargs)
        strategy.setup_environment()
        model = _make_model()
        engine, (optimizer,) = strategy.setup_module_and_optimizers(
            model, [torch.optim.SGD(model.parameters(), LR)]
        )
        plugin = strategy.precision
        for _ in range(STEPS):
            optimizer.zero_grad()
            output = plugin.convert_output(engine(*plugin.convert_input((x,))))
            loss = nn.functional.mse_loss(output, y)
            strategy.backward(loss, engine)
            strategy.optimizer_step(optimizer)
        results[name] = {
            "params": _full_params(strategy, engine),
            "param_dtype": str(next(engine.module.parameters()).dtype),
            "output_dtype": str(output.dtype),
        }
        strategy.teardown()
    return results


@pytest.fixture(scope="module")
def trained() -> list[dict[str, Any]]:
    return run_processes(_train_cases, 2, init=False, timeout=300)


@pytest.mark.parametrize(("name", "kwargs", "precision"), TRAIN_CASES, ids=[case[0] for case in TRAIN_CASES])
def test_deepspeed_trains_like_one_process_on_the_global_batch(
    trained: list[dict[str, Any]], name: str, kwargs: dict[str, Any], precision: str
) -> None:
    expected = _reference()
    moved = (expected - _flat(_make_model())).abs().max().item()
    tolerance = TOLERANCE[precision]
    assert moved > 10 * tolerance
    for result in trained:
        got = result[name]
        assert (got["params"] - expected).abs().max().item() < tolerance
        assert got["param_dtype"] == ("torch.bfloat16" if precision == "bf16-mixed" else "torch.float32")
        assert got["output_dtype"] == "torch.float32"


def _save_and_resume(rank: int, world_size: int, directory: str, stage: int) -> dict[str, Any]:
    x, y = _data()
    x, y = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]

    def build() -> tuple[DeepSpeedStrategy, nn.Module, Any]:
        strategy = _strategy(stage=stage)
        strategy.setup_environment()
        model = _make_model()
        engine, (optimizer,) = strategy.setup_module_and_optimizers(
            model, [torch.optim.Adam(model.parameters(), lr=0.05)]
        )
        return strategy, engine, optimizer

    def step(strategy: DeepSpeedStrategy, engine: nn.Module, optimizer: Any) -> float:
        loss = nn.functional.mse_loss(engine(x), y)
        strategy.backward(loss, engine)
        strategy.optimizer_step(optimizer)
        return float(loss)

    strategy, engine, optimizer = build()
    step(strategy, engine, optimizer)
    step(strategy, engine, optimizer)
    saved_params = _full_params(strategy, engine)
    strategy.save_checkpoint(directory, {"model": engine, "optimizer": optimizer, "step": 2, "note": "hi"})
    next_loss = step(strategy, engine, optimizer)  # what not stopping gives

    strategy2, engine2, optimizer2 = build()
    state = {"model": engine2, "optimizer": optimizer2, "step": 0}
    rest = strategy2.load_checkpoint(directory, state)
    loaded_params = _full_params(strategy2, engine2)
    resumed_loss = step(strategy2, engine2, optimizer2)
    without_state = strategy2.load_checkpoint(directory)
    strategy2.barrier()
    return {
        "saved_params": saved_params,
        "loaded_params": loaded_params,
        "next_loss": next_loss,
        "resumed_loss": resumed_loss,
        "step": state["step"],
        "rest": rest,
        "without_state_keys": sorted(without_state),
    }


# Stage 2 and 3 resume through the facade in integration_tests/test_deepspeed_facade.py; stage 0
# saves the full module once (no ZeRO shards), which consolidation reads differently.
@pytest.mark.parametrize("stage", [0, 3])
def test_deepspeed_save_then_resume_gives_the_same_next_loss(tmp_path: Path, stage: int) -> None:
    directory = tmp_path / "ckpt"
    results = run_processes(_save_and_resume, 2, str(directory), stage, init=False, timeout=180)
    for result in results:
        torch.testing.assert_close(result["loaded_params"], result["saved_params"], rtol=0, atol=0)
        assert result["resumed_loss"] == pytest.approx(result["next_loss"], rel=1e-6)
        assert result["step"] == 2
        assert result["rest"] == {"note": "hi"}
        assert result["without_state_keys"] == ["model", "note", "step"]
    # One consolidated fp32 state dict, readable in this process without any process group.
    output = tmp_path / "full.pt"
    full = consolidate_deepspeed_checkpoint(directory, output)
    assert sorted(full) == ["model", "note", "step"]
    flat = torch.cat([value.reshape(-1).double() for value in full["model"].values()])
    torch.testing.assert_close(flat, results[0]["saved_params"], rtol=0, atol=0)
    reloaded = torch.load(output, weights_only=True)
    assert reloaded["model"].keys() == _make_model().state_dict().keys()
    model = _make_model()
    model.load_state_dict(reloaded["model"])


def _load_full_file(rank: int, world_size: int, path: str, stage: int) -> dict[str, Any]:
    strategy = _strategy(stage=stage)
    strategy.setup_environment()
    model = _make_model()
    engine, (optimizer,) = strategy.setup_module_and_optimizers(
        model, [torch.optim.SGD(model.parameters(), lr=LR)]
    )
    state = {"model": engine, "epoch": 0}
    strategy.load_checkpoint(path, state)
    loaded = _full_params(strategy, engine)
    # A step after loading must start from the loaded weights (ZeRO's fp32 master copies refreshed).
    x, y = _data()
    x, y = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    strategy.backward(nn.functional.mse_loss(engine(x), y), engine)
    strategy.optimizer_step(optimizer)
    with pytest.raises(CheckpointError, match="cannot be split"):
        strategy.load_checkpoint(path, {"model": engine, "optimizer": optimizer})
    return {"loaded": loaded, "stepped": _full_params(strategy, engine), "epoch": state["epoch"]}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_loads_a_full_single_file_checkpoint_into_the_engine(tmp_path: Path, stage: int) -> None:
    # The weights after 2 reference steps, saved as one file (what the ddp strategy writes).
    model = _make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    path = tmp_path / "full.pt"
    torch.save({"model": model.state_dict(), "epoch": 7}, path)
    results = run_processes(_load_full_file, 2, str(path), stage, init=False, timeout=180)
    for result in results:
        torch.testing.assert_close(result["loaded"], _flat(model), rtol=0, atol=0)
        torch.testing.assert_close(result["stepped"], _reference(3), rtol=0, atol=1e-5)
        assert result["epoch"] == 7


def _inference_and_errors(rank: int, world_size: int) -> dict[str, Any]:
    strategy = _strategy(stage=3)
    strategy.setup_environment()
    model = _make_model()
    expected = model(_data()[0])
    engine = strategy.setup_module(model)
    output = engine(_data()[0])
    errors = {}
    other = strategy.setup_module(_make_model())
    for name, call in {
        "backward_without_model": lambda: strategy.backward(output.sum(), None),
        "foreign_optimizer": lambda: strategy.optimizer_step(torch.optim.SGD(model.parameters(), lr=LR)),
    }.items():
        try:
            call()
        except StrategyError as err:
            errors[name] = str(err)
    del other
    return {"close": torch.allclose(output, expected, atol=1e-6), "errors": errors}


def test_deepspeed_inference_engine_and_misuse_errors() -> None:
    for result in run_processes(_inference_and_errors, 2, init=False, timeout=120):
        assert result["close"]
        assert "which of the 2 DeepSpeed engines" in result["errors"]["backward_without_model"]
        assert "no DeepSpeed engine of this strategy owns" in result["errors"]["foreign_optimizer"]


ACCUMULATION_CASES = [
    # (stage, use no_backward_sync for the first micro-batch, the error it must raise or None)
    (0, True, None),
    (1, True, None),
    (3, True, None),  # a no-op: stage 3 reduces in every backward and adds the results up
    (3, False, None),
    # Stages 1/2 keep only the last synchronized backward's gradients: refused, never wrong.
    (1, False, "a second backward before optimizer.step"),
    (2, False, "a second backward before optimizer.step"),
    (2, True, "cannot skip the synchronization"),
]


def _accumulate(rank: int, world_size: int) -> dict[tuple[int, bool], Any]:
    x, y = _data()
    x, y = x[rank * 4 : (rank + 1) * 4], y[rank * 4 : (rank + 1) * 4]
    results: dict[tuple[int, bool], Any] = {}
    for stage, use_no_sync, _ in ACCUMULATION_CASES:
        strategy = _strategy(stage=stage)
        strategy.setup_environment()
        model = _make_model()
        engine, (optimizer,) = strategy.setup_module_and_optimizers(
            model, [torch.optim.SGD(model.parameters(), LR)]
        )
        # Two micro-batches of 2 per rank, each loss halved: the first without synchronizing.
        try:
            with strategy.no_backward_sync(engine) if use_no_sync else contextlib.nullcontext():
                strategy.backward(nn.functional.mse_loss(engine(x[:2]), y[:2]) / 2, engine)
            strategy.backward(nn.functional.mse_loss(engine(x[2:]), y[2:]) / 2, engine)
            strategy.optimizer_step(optimizer)
            results[(stage, use_no_sync)] = _full_params(strategy, engine)
        except StrategyError as err:
            results[(stage, use_no_sync)] = str(err)
        strategy.teardown()
    return results


@pytest.fixture(scope="module")
def accumulated() -> list[dict[tuple[int, bool], Any]]:
    return run_processes(_accumulate, 2, init=False, timeout=180)


@pytest.mark.parametrize(("stage", "use_no_sync", "error"), ACCUMULATION_CASES)
def test_deepspeed_gradient_accumulation_is_right_or_refused(
    accumulated: list[dict[tuple[int, bool], Any]], stage: int, use_no_sync: bool, error: str | None
) -> None:
    for results in accumulated:
        result = results[(stage, use_no_sync)]
        if error is None:
            torch.testing.assert_close(result, _reference(1), rtol=0, atol=1e-5)
        else:
            assert isinstance(result, str) and error in result


def test_a_mismatched_deepspeed_accelerator_names_the_one_it_selected() -> None:
    # DeepSpeed's accelerator here is its CPU one: a strategy on another device type is refused
    # with the value filled in (the message once printed "{current!r}" literally).
    from deepspeed.accelerator import get_accelerator

    from lite_strategies.deepspeed._strategy import _use_deepspeed_accelerator

    current = get_accelerator().device_name()
    other = "cuda" if current != "cuda" else "cpu"
    if other == "cpu":
        pytest.skip("DeepSpeed selected CUDA here; switching to its CPU accelerator is allowed")
    with pytest.raises(StrategyError, match=rf"choose accelerator={current!r}$"):
        _use_deepspeed_accelerator(other)
