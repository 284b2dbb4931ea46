"""The 'fsdp' strategy: torch FSDP2 (``fully_shard``) with sharded checkpoints."""

from __future__ import annotations

from lite_strategies.fsdp._checkpoint import consolidate_fsdp_checkpoint
from lite_strategies.fsdp._strategy import META_FILE, FSDPStrategy

__all__ = ["META_FILE", "FSDPStrategy", "consolidate_fsdp_checkpoint"]
