"""The one exception this package raises for bad input."""


class DeviceError(ValueError):
    """An accelerator or ``devices`` value that cannot work here.

    The message says what was asked, why it fails on this machine, and the accepted values.
    """
