"""Atomic writes: nothing half-written is ever left under the final name."""

import contextlib
import json
import os
import shutil
import tempfile

from .errors import VeilError


def refuse_existing(path, overwrite, flag="--out"):
    if os.path.lexists(path) and not overwrite:
        raise VeilError(f"{path!r} already exists; choose another {flag} or pass --overwrite to replace it.")


def check_writable(path, flag="--out", kind="folder", overwrite=False, exists_ok=False):
    """Refuse, before any long work, an output path that could not be written at the end.

    Args:
        path (`str`): the output the user named.
        flag (`str`): the option (or variable) that named it, for the message.
        kind (`str`): ``"folder"`` or ``"file"``: what will be written there.
        overwrite (`bool`): an existing output of the right kind may be replaced.
        exists_ok (`bool`): an existing output of the right kind is written into or over (a bench folder,
            the runs database) without ``overwrite``.

    Returns:
        `str`: the absolute path.

    Raises:
        VeilError: in one sentence, naming ``flag``, when the path is empty, is of the other kind, exists
            without ``overwrite``, lies under a file, or its nearest existing folder does not take new files.
    """
    if not str(path or "").strip():
        raise VeilError(f"{flag} is empty; give the {kind} to write.")
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.lexists(path):
        if kind == "file" and os.path.isdir(path):
            raise VeilError(f"{flag} {path!r} is a folder, and a file is written there; give a file path (--overwrite never replaces a folder with a file).")
        if kind == "folder" and not os.path.isdir(path):
            raise VeilError(f"{flag} {path!r} is a file, and a folder is written there; give a folder path (--overwrite never replaces a file with a folder).")
        if not (overwrite or exists_ok):
            refuse_existing(path, overwrite, flag)
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise VeilError(f"{flag} {path!r} lies under {parent!r}, which is a file, not a folder; choose another {flag}.")
    try:  # access() says yes to root even where nothing can be made (/proc): make and remove a folder instead
        os.rmdir(tempfile.mkdtemp(prefix=".veil-check-", dir=parent))
    except OSError as error:
        raise VeilError(f"{flag} {path!r} cannot be written: nothing can be created in {parent!r} ({error.strerror}); choose another {flag}.") from None
    return path


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


def read_json_object(path, what, fields=()):
    """The JSON object in ``path``, refused in one sentence when it is unreadable, not JSON, not an object
    (``{...}``) or lacks one of ``fields``; ``what`` names the writer, e.g. ``"veil eval"``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VeilError(f"{path!r} is not readable JSON ({error}); pass a file written by {what}, or write it again.") from None
    if not isinstance(data, dict):
        raise VeilError(f"{path!r} holds a JSON {type(data).__name__}, not the object {what} writes; pass a file written by {what}.")
    missing = [name for name in fields if name not in data]
    if missing:
        raise VeilError(f"{path!r} lacks the field {missing[0]!r} that {what} writes; pass a file written by {what}, or write it again.")
    return data


def write_json(path, data, overwrite=True):
    with atomic_file(path, overwrite=overwrite, mode="w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
