"""lite_facade."""

__all__: list[str] = []
