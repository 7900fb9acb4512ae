"""Atomic writes: nothing half-written is ever left under the final name.

Temporary names carry the writing process's id (``.NAME.tmp-PID-XXXX``), so that what a killed writer left
behind is told apart from what a running one is writing: :func:`recover` puts back a folder whose
replacement was interrupted and removes the dead writers' temporaries, and every save starts with it.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile

from .errors import VeilError

_OWNER = re.compile(r"\.(?:tmp|old)-(\d+)-")


def temp_prefix(path, kind="tmp"):
    """``.NAME.KIND-PID-``: the prefix of this process's temporaries beside ``path``."""
    return f".{os.path.basename(path)}.{kind}-{os.getpid()}-"


def owner_gone(name):
    """Whether the process whose id is in a temporary's ``name`` has ended (False when the name holds no id)."""
    match = _OWNER.search(os.path.basename(name))
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def recover(path):
    """Undo what a killed save of ``path`` left: put back the old copy an interrupted replace had moved aside
    (when nothing is at ``path``), and remove the dead writers' temporaries beside it."""
    path = os.path.abspath(path)
    parent, base = os.path.dirname(path), os.path.basename(path)
    if not os.path.isdir(parent):
        return
    for old in sorted(glob.glob(os.path.join(parent, glob.escape(f".{base}.old-") + "*"))):
        if not owner_gone(old):
            continue
        kept = os.path.join(old, "x")
        if not os.path.lexists(path) and os.path.lexists(kept):
            os.rename(kept, path)  # the replace was cut between its two renames: the old copy comes back
        shutil.rmtree(old, ignore_errors=True)
    for stale in glob.glob(os.path.join(parent, glob.escape(f".{base}.tmp-") + "*")):
        if owner_gone(stale):
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)


def refuse_existing(path, overwrite, flag="--out"):
    recover(path)
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
    recover(path)  # a folder an interrupted save moved aside is back before it is checked
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
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is first moved into ``.NAME.old-PID-XXXX/x``, then the new folder renamed in; a writer
    killed between the two leaves the old copy there, and :func:`recover` (run at the next save or check of
    ``path``) puts it back.
    """
    path = os.path.abspath(path)
    refuse_existing(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=temp_prefix(path, "old"), dir=parent)
        os.rename(path, os.path.join(old, "x"))
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(os.path.join(old, "x"), path)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path, overwrite=True, mode="wb"):
    """Yield a file object for a temporary file beside ``path``; renamed over ``path`` on success."""
    path = os.path.abspath(path)
    refuse_existing(path, overwrite)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=os.path.dirname(path))
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
