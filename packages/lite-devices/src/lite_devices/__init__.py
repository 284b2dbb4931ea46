"""lite_devices."""

__all__: list[str] = []
