"""What every settings dataclass in veil shares (method configs, attack configs)."""

import dataclasses
import math
import typing

from .errors import VeilError


MAX_SEED = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes


def _number_kind(annotation):
    """``(float or int, is_list)`` for a field typed ``float``, ``int``, ``Optional[...]`` of one or
    ``List[...]`` of one; ``(None, False)`` for any other type."""
    plain = {float: float, int: int, "float": float, "int": int}
    if annotation in plain:
        return plain[annotation], False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        return (plain[kinds[0]], False) if len(kinds) == 1 and kinds[0] in plain else (None, False)
    if origin in (list, typing.List) and len(args) == 1 and args[0] in plain:
        return plain[args[0]], True
    return None, False


def _coerce_number(name, value, kind):
    if isinstance(value, bool) or value is None:
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise VeilError(f"{name} must be a number, got {value!r}.") from None
    if not isinstance(number, (int, float)):
        return value
    if not math.isfinite(number):
        raise VeilError(f"{name} must be a finite number, got {value!r}.")
    if kind is int:
        if not float(number).is_integer():
            raise VeilError(f"{name} must be a whole number, got {value!r}.")
        number = int(number)
    if name == "seed" and not 0 <= number <= MAX_SEED:
        raise VeilError(f"seed must be a whole number from 0 to {MAX_SEED}, got {value!r}.")
    return number


def coerce_numbers(cls, values):
    """``values`` with strings such as ``"1e-3"`` (YAML 1.1 reads them as text) turned into numbers for
    the fields of ``cls`` typed ``float`` or ``int``, optional ones (``Optional[float]``) and lists of them;
    refuses, naming the field, text that is no number, nan and inf, a fraction for a whole number, and a
    ``seed`` torch cannot take. Other fields are left for the dataclass to check."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: the fields' own types
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(values)
    for name, value in values.items():
        kind, is_list = _number_kind(hints.get(name))
        if kind is None:
            continue
        if is_list and isinstance(value, (list, tuple)):
            out[name] = [_coerce_number(name, item, kind) for item in value]
        elif not is_list:
            out[name] = _coerce_number(name, value, kind)
    return out


class Settings:
    """Mixin for settings dataclasses: dict round trip, help text, and preset filling."""

    def to_dict(self):
        return dataclasses.asdict(self)

    #: ``{field: the value that turned it off}`` for fields a class no longer has: a saved config holding one at
    #: that value loads (the run did not use it); at any other value it is refused.
    retired_fields = {}

    @classmethod
    def without_retired(cls, values):
        """``values`` without the retired fields that hold their off value; any other value of one is refused."""
        for name in sorted(set(values) & set(cls.retired_fields)):
            if values[name] != cls.retired_fields[name]:
                raise VeilError(f"{cls.__name__} no longer has {name!r} (here {values[name]!r}); these settings need "
                                f"an earlier veil release.")
        return {k: v for k, v in values.items() if k not in cls.retired_fields}

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        values = cls.without_retired(values)
        unknown = sorted(set(values) - known)
        if unknown:
            raise VeilError(f"{cls.__name__} has no field {unknown[0]!r}; the fields are {', '.join(sorted(known))}.")
        return cls(**coerce_numbers(cls, values))

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
