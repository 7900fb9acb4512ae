"""What every settings dataclass in veil shares (method configs, attack configs)."""

import dataclasses

from .errors import VeilError


class Settings:
    """Mixin for settings dataclasses: dict round trip, help text, and preset filling."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise VeilError(f"{cls.__name__} has no field {unknown[0]!r}; the fields are {', '.join(sorted(known))}.")
        return cls(**values)

    @classmethod
    def help(cls):
        """``{field name: help text}`` — the source of CLI flags and config-file docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    def fill_from_preset(self, presets):
        """Normalise ``self.preset`` and fill every field still ``None`` from ``presets[self.preset]``."""
        self.preset = str(self.preset).lower()
        if self.preset not in presets:
            raise VeilError(f"preset must be one of {', '.join(map(repr, presets))}, got {self.preset!r}.")
        for name, value in presets[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
