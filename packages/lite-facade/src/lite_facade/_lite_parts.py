"""What the parts of [`LightningLite`][lite_facade.LightningLite] (its mixins) read of the whole, for the type checker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lite_strategies import Strategy


class LiteParts:
    """The attributes and methods of ``LightningLite`` that its parts use; defined by ``LightningLite`` itself."""

    if TYPE_CHECKING:
        _strategy: Strategy

        @property
        def device(self) -> torch.device: ...
        @property
        def world_size(self) -> int: ...
        @property
        def global_rank(self) -> int: ...
        @property
        def local_rank(self) -> int: ...
        @property
        def is_global_zero(self) -> bool: ...
        def _ensure_environment(self, what: str = "this call") -> None: ...
