"""lite_data."""

__all__: list[str] = []
