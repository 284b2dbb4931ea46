"""lite_collectives."""

__all__: list[str] = []
