"""The built-in strategy rows, and the rules that pick a strategy when none is named.

Adding a built-in strategy is one module (its class) and one row here; nothing else is edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lite_strategies._errors import StrategyError
from lite_strategies._spec import StrategySpec

_DDP_LIKE: dict[str, Any] = dict(accelerators=("cpu", "cuda"), multi_process=True, interactive=False)
_DEEPSPEED: dict[str, Any] = dict(
    _DDP_LIKE,
    factory="lite_strategies.deepspeed:DeepSpeedStrategy",
    launcher="script",
    precisions=("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"),
    precision_note="DeepSpeed has no float64 mode",
    precision_plugin="lite_strategies.deepspeed._precision:deepspeed_precision",
    requires="deepspeed",
    extra="deepspeed",
    min_version="0.14",
)
_SHARDED: dict[str, Any] = dict(
    _DDP_LIKE,
    factory="lite_strategies._sharded:DDPShardedStrategy",
    precisions_on={"cpu": ("64-true", "32-true", "bf16-mixed", "16-true", "bf16-true")},
    precision_note="loss scaling with sharded gradients needs fairscale's ShardedGradScaler, which only runs on "
    "CUDA; use precision='bf16-mixed' or '32-true' on the CPU",
    requires="fairscale",
    extra="fairscale",
    min_version="0.4.13",
)

ROWS = (
    StrategySpec(
        name="single_device",
        aliases=("single",),
        factory="lite_strategies._single_device:SingleDeviceStrategy",
        accelerators=("cpu", "cuda", "mps"),
        launcher=None,
        multi_process=False,
        interactive=True,
        max_devices=1,
        description="One process, one device.",
    ),
    StrategySpec(
        name="dp",
        aliases=("data_parallel",),
        factory="lite_strategies._dp:DataParallelStrategy",
        accelerators=("cuda",),
        launcher=None,
        multi_process=False,
        interactive=True,
        runs_as={"cpu": "ddp"},
        description="torch.nn.DataParallel: one process driving several CUDA devices.",
    ),
    StrategySpec(
        name="ddp",
        factory="lite_strategies._ddp:DDPStrategy",
        launcher="script",
        **_DDP_LIKE,
        description="DistributedDataParallel; re-runs the script once per extra local process.",
    ),
    StrategySpec(
        name="ddp_spawn",
        factory="lite_strategies._ddp:DDPStrategy",
        launcher="spawn",
        runs_as_under_external_launcher="ddp",
        **_DDP_LIKE,
        description="DistributedDataParallel in processes started with multiprocessing 'spawn'.",
    ),
    StrategySpec(
        name="ddp_fork",
        aliases=("ddp_notebook",),
        factory="lite_strategies._ddp:DDPStrategy",
        accelerators=("cpu", "cuda"),
        launcher="fork",
        multi_process=True,
        interactive=True,
        runs_as_under_external_launcher="ddp",
        description="DistributedDataParallel in processes started with 'fork' (notebooks).",
    ),
    StrategySpec(
        name="deepspeed",
        **_DEEPSPEED,
        description="DeepSpeed ZeRO, stage 2 by default (stage, config, offload are arguments).",
    ),
    StrategySpec(
        name="deepspeed_stage_1",
        init_kwargs={"stage": 1},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 1: optimizer states sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2",
        init_kwargs={"stage": 2},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 2: optimizer states and gradients sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_2_offload",
        init_kwargs={"stage": 2, "offload_optimizer": True},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 2 with the optimizer offloaded to the CPU.",
    ),
    StrategySpec(
        name="deepspeed_stage_3",
        init_kwargs={"stage": 3},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 3: optimizer states, gradients and parameters sharded.",
    ),
    StrategySpec(
        name="deepspeed_stage_3_offload",
        init_kwargs={"stage": 3, "offload_optimizer": True, "offload_parameters": True},
        **_DEEPSPEED,
        description="DeepSpeed ZeRO stage 3 with optimizer and parameters offloaded to the CPU.",
    ),
    StrategySpec(
        name="ddp_sharded",
        launcher="script",
        **_SHARDED,
        description="fairscale ShardedDataParallel with an OSS sharded optimizer.",
    ),
    StrategySpec(
        name="ddp_sharded_spawn",
        launcher="spawn",
        runs_as_under_external_launcher="ddp_sharded",
        **_SHARDED,
        description="ddp_sharded in processes started with 'spawn'.",
    ),
    StrategySpec(
        name="fsdp",
        factory="lite_strategies.fsdp:FSDPStrategy",
        launcher="script",
        **_DDP_LIKE,
        description="torch FSDP2 (fully_shard): parameters, gradients and optimizer state sharded; "
        "optimizers rebuilt over the shards.",
    ),
    StrategySpec(
        name="xla",
        aliases=("tpu_spawn", "xla_spawn"),
        factory="lite_strategies._xla:XLAStrategy",
        accelerators=("xla",),
        launcher="xla",
        multi_process=True,
        interactive=False,
        precisions=("32-true", "bf16-true"),
        precision_note="bf16-true keeps the weights in bfloat16, as TPUs compute natively",
        requires="torch_xla",
        min_version="2.1",  # the floor of the [xla] extra
        extra="xla",
        description="torch_xla on TPU cores (XLA:CPU with PJRT_DEVICE=CPU), processes started by torch_xla's launcher.",
    ),
)


@dataclass(frozen=True)
class DefaultRule:
    """One rule of [`DEFAULT_STRATEGY`][lite_strategies.DEFAULT_STRATEGY]: ``strategy`` when every condition given matches (None: any)."""

    strategy: str
    accelerator: str | None = None
    one_process: bool | None = None
    external_launcher: bool | None = None
    interactive: bool | None = None

    def matches(
        self, *, accelerator: str, one_process: bool, external_launcher: bool, interactive: bool
    ) -> bool:
        asked = (accelerator, one_process, external_launcher, interactive)
        wanted = (self.accelerator, self.one_process, self.external_launcher, self.interactive)
        return all(want is None or want == have for want, have in zip(wanted, asked))


DEFAULT_STRATEGY: tuple[DefaultRule, ...] = (
    DefaultRule("xla", accelerator="xla"),  # one strategy runs one or many XLA devices
    DefaultRule("single_device", one_process=True),
    DefaultRule("ddp", external_launcher=True),  # torchrun, SLURM, ... started the processes
    DefaultRule("ddp_fork", interactive=True),  # a notebook has no script to re-run
    DefaultRule("ddp_spawn"),
)
"""The strategy used when none is named: the first rule that matches wins."""


def default_strategy(
    *, accelerator: str, world_size: int, external_launcher: bool = False, interactive: bool = False
) -> str:
    """The name of the strategy [`DEFAULT_STRATEGY`][lite_strategies.DEFAULT_STRATEGY] picks for this configuration.

    Examples:
        >>> default_strategy(accelerator="cpu", world_size=2)
        'ddp_spawn'
    """
    for rule in DEFAULT_STRATEGY:
        if rule.matches(
            accelerator=accelerator,
            one_process=world_size <= 1,
            external_launcher=external_launcher,
            interactive=interactive,
        ):
            return rule.strategy
    raise StrategyError(
        f"no default strategy rule matches accelerator={accelerator!r}"
    )  # the last one always does
