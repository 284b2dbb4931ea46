"""lite_strategies."""

__all__: list[str] = []
