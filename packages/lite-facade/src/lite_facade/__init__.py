"""lite_facade: [`LightningLite`][lite_facade.LightningLite], a drop-in for ``pytorch_lightning.lite.LightningLite``.

Subclass it, put the training loop in ``run``, and let ``setup`` prepare the model and optimizer
for the strategy, devices and precision chosen at construction.

Examples:
    ```python
    from lite_facade import LightningLite


    class Lite(LightningLite):
        def run(self, model, optimizer):
            model, optimizer = self.setup(model, optimizer)
            ...


    Lite(strategy="ddp", devices=2, accelerator="cpu").run(model, optimizer)
    ```
"""

from lite_data import seed_everything
from lite_facade._lite import LightningLite
from lite_facade._logging import CSVLogger, Logger, PlainProgress, TensorBoardLogger
from lite_facade._rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from lite_facade._resolve import Inventory, LiteConfigurationError, Plan, resolve_plan

__all__ = [
    "CSVLogger",
    "Inventory",
    "LightningLite",
    "LiteConfigurationError",
    "Logger",
    "Plan",
    "PlainProgress",
    "TensorBoardLogger",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "resolve_plan",
    "seed_everything",
]
