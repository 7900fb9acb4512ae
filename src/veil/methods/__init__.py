"""Built-in methods; importing this package registers them."""

from . import advunlearn, dumo, esd, kpop, mace, rece, safree, sld, uce  # noqa: F401
