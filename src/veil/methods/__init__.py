"""Built-in methods; importing this package registers them."""

from . import esd  # noqa: F401
