"""Built-in methods; importing this package registers them."""

from . import dumo, esd, kpop, rece, safree, sld, uce  # noqa: F401
