"""lite_precision."""

__all__: list[str] = []
