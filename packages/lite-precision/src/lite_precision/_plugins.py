"""LightningLite 1.8's plugin class names, as thin shells over the modes."""

from __future__ import annotations

import torch

from lite_precision._base import Precision
from lite_precision._errors import PrecisionError
from lite_precision._modes import DoublePrecision, MixedPrecision
from lite_precision._registry import canonical_precision

PrecisionPlugin = Precision
"""LightningLite's name for the full-precision base class."""

DoublePrecisionPlugin = DoublePrecision
"""LightningLite's name for ``"64-true"``."""


class NativeMixedPrecisionPlugin(MixedPrecision):
    """LightningLite's mixed-precision plugin: ``precision=16`` (float16 + scaler) or ``"bf16"``.

    Args:
        precision: ``16`` / ``"16-mixed"`` or ``"bf16"`` / ``"bf16-mixed"``.
        device: the device type (``"cpu"``, ``"cuda"``, ...).
        scaler: an optional ``torch.amp.GradScaler`` (float16 only).
    """

    def __init__(
        self, precision: str | int = 16, device: str = "cuda", scaler: torch.amp.GradScaler | None = None
    ) -> None:
        name = canonical_precision(precision)
        if name not in ("16-mixed", "bf16-mixed"):
            raise PrecisionError(
                f"NativeMixedPrecisionPlugin(precision={precision!r}): expected 16 or 'bf16' "
                f"(or '16-mixed', 'bf16-mixed'); for {name!r} use get_precision({name!r})"
            )
        super().__init__(device, dtype=torch.float16 if name == "16-mixed" else torch.bfloat16, scaler=scaler)
        self.precision = precision
        self.device = device
