"""Built-in methods; importing this package registers them."""

from . import esd, sld, uce  # noqa: F401
