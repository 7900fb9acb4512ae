"""The method registry: ``register_method`` / ``get_method`` with "did you mean"."""

import difflib

from .errors import VeilError

_METHODS = {}


def register_method(name):
    """Class decorator registering a :class:`~veil.methods.base.Method` under a lowercase ``name``."""

    def decorator(cls):
        key = name.lower()
        if key in _METHODS and _METHODS[key] is not cls:
            raise ValueError(f"A method named {key!r} is already registered ({_METHODS[key].__name__}).")
        cls.name = key
        _METHODS[key] = cls
        return cls

    return decorator


def _load_builtin_methods():
    # Importing the package registers every built-in method.
    from . import methods  # noqa: F401


def list_methods():
    """Names of all registered methods, sorted."""
    _load_builtin_methods()
    return sorted(_METHODS)


def unknown_name_error(kind, name, names):
    """The one-sentence error for an unknown ``kind`` name, suggesting the closest of ``names``."""
    close = difflib.get_close_matches(str(name).strip().lower(), list(names), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return VeilError(f"Unknown {kind} {name!r}; the registered {kind}s are {', '.join(sorted(names))}.{hint}")


def get_method(name):
    """Return the method class registered under ``name``.

    Raises:
        VeilError: if no method has that name; the message suggests the closest one.
    """
    _load_builtin_methods()
    key = str(name).strip().lower()
    if key in _METHODS:
        return _METHODS[key]
    raise unknown_name_error("method", name, _METHODS)
