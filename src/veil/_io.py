"""Atomic writes: nothing half-written is ever left under the final name."""

import contextlib
import json
import os
import shutil
import tempfile

from .errors import VeilError


def refuse_existing(path, overwrite):
    if os.path.lexists(path) and not overwrite:
        raise VeilError(f"{path!r} already exists; choose another --out or pass --overwrite to replace it.")


@contextlib.contextmanager
def atomic_dir(path, overwrite=False):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` in one rename."""
    path = os.path.abspath(path)
    refuse_existing(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rename(path, os.path.join(old, "x"))
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path, overwrite=True, mode="wb"):
    """Yield a file object for a temporary file beside ``path``; renamed over ``path`` on success."""
    path = os.path.abspath(path)
    refuse_existing(path, overwrite)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path, data, overwrite=True):
    with atomic_file(path, overwrite=overwrite, mode="w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
