"""Built-in methods; importing this package registers them."""

from . import dumo, esd, kpop, mace, sld, uce  # noqa: F401
