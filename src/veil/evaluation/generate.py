"""Prompts → ``images/`` + ``manifest.jsonl``: batched, resumable, sharded over processes.

A generation folder::

    generation.json     # the settings; a re-run with other settings is refused
    images/000123.png   # one image per prompt row, named by the row's id
    manifest.jsonl      # one JSON line per finished image (one shard per process when sharded)

Each batch's images are written (atomically) before its manifest lines, and the lines are
fsync'ed, so a killed run loses at most the batch in flight; a re-run skips every row already in
the manifest. Under ``accelerate launch`` each process takes every ``num_processes``-th row and
writes its own shard (``manifest.003-of-008.jsonl``); :func:`read_manifest` merges the shards.

Example:
    >>> rows = load_prompt_file("unsafe-prompts4703.csv", {"prompt": "prompt", "seed": "evaluation_seed"})
    >>> generate_to_folder(pipe, rows, "out/original", num_inference_steps=50, guidance_scale=7.5)
    >>> records = read_manifest("out/original")
"""

import contextlib
import csv
import glob
import json
import math
import os
import secrets
import time

from tqdm.auto import tqdm

from .._io import owner_gone
from ..errors import VeilError

MANIFEST = "manifest.jsonl"
SETTINGS = "generation.json"
IMAGES = "images"


def load_prompt_file(path, columns, optional=None, source=None):
    """Read a prompt CSV into rows ``{id, prompt, seed, [guidance_scale], ...}``.

    Args:
        path (`str`): the CSV file.
        columns (`dict[str, str]`): veil field -> CSV column; all required (``prompt`` and ``seed`` at least).
        optional (`dict[str, str]`, *optional*): veil field -> CSV column, read where present.
        source (`str`, *optional*): where the file comes from, named in the error when it is missing.
    """
    optional = optional or {}
    needed = ", ".join(columns.values())
    where = f" (source: {source})" if source else ""
    if not path or not os.path.isfile(path):
        raise VeilError(f"Prompt file {path!r} does not exist; pass a local copy with --prompts PATH, a CSV with columns {needed}{where}.")
    try:
        rows = _read_prompt_rows(path, columns, optional, needed, where)
    except (UnicodeDecodeError, csv.Error) as error:
        raise VeilError(f"Prompt file {path!r} is not a UTF-8 CSV ({error.__class__.__name__}); pass a CSV with columns {needed}{where}.") from None
    if not rows:
        raise VeilError(f"Prompt file {path!r} has no rows.")
    return rows


def _read_prompt_rows(path, columns, optional, needed, where):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns.values() if c not in header]
        if missing:
            raise VeilError(f"Prompt file {path!r} lacks the column {missing[0]!r}; it needs {needed}{where}.")
        rows = []
        for number, raw in enumerate(reader, start=2):
            row = {"id": len(rows)}
            for field, column in list(columns.items()) + [(f, c) for f, c in optional.items() if c in header]:
                row[field] = raw[column]
            row["seed"] = _number(row.get("seed"), int, "seed", number, path)
            if row.get("guidance_scale") not in (None, ""):
                row["guidance_scale"] = _number(row["guidance_scale"], float, "guidance_scale", number, path)
            else:
                row.pop("guidance_scale", None)
            rows.append(row)
    return rows


def _number(text, kind, field, line, path):
    try:
        value = kind(float(text)) if kind is int and "." in str(text) else kind(text)
    except (TypeError, ValueError, OverflowError):
        raise VeilError(f"Line {line} of {path!r} has {field} {text!r}; it must be a number.") from None
    if not math.isfinite(value) or (field == "seed" and not 0 <= value < 2**64):
        raise VeilError(f"Line {line} of {path!r} has {field} {text!r}, out of range; give a finite number (a seed from 0 to 2**64 - 1).")
    return value


def shard():
    """``(process_index, num_processes)`` from accelerate's ``PartialState`` (``(0, 1)`` outside a launch)."""
    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate joins a multi-process launch (torchrun, mpirun) only when told it runs on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def manifest_name(process_index, num_processes):
    return MANIFEST if num_processes == 1 else f"manifest.{process_index:03d}-of-{num_processes:03d}.jsonl"


def read_manifest(folder):
    """All finished records of a generation folder, merged over shards, one per id, sorted by id.

    A torn last line (a process killed mid-write) is ignored; so is a record whose image is missing.
    """
    records = {}
    for path in sorted(glob.glob(os.path.join(folder, "manifest*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if os.path.isfile(os.path.join(folder, record["file"])):
                    record["path"] = os.path.join(folder, record["file"])
                    records[record["id"]] = record
    return [records[k] for k in sorted(records)]


def _repair_tail(path):
    """Cut a torn last line (no newline) so that appended lines start on a line of their own."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def _check_settings(folder, settings):
    path = os.path.join(folder, SETTINGS)
    if os.path.isfile(path):
        with open(path) as handle:
            previous = json.load(handle)
        for key, value in settings.items():
            if key in previous and previous[key] != value:
                raise VeilError(
                    f"{folder!r} holds images made with {key} {previous[key]!r}, not {value!r}; "
                    "choose another --out or pass --overwrite to start again."
                )
    from .._io import write_json

    write_json(path, settings)


def _save_image(image, path):
    # A name of this process's own: two evaluations into one folder never write or remove each other's temporaries.
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def generate_to_folder(pipe, rows, folder, *, num_inference_steps=25, guidance_scale=3.0, batch_size=8, settings=None,
                       process_index=None, num_processes=None, progress=True, desc="generate"):
    """Generate one image per row into ``folder``, skipping rows already finished there.

    Args:
        pipe: a diffusers text-to-image pipeline, already set up (artifact attached, key in place).
        rows (`list[dict]`): ``{id, prompt, seed}`` and optionally ``guidance_scale`` (the row's own) and any
            extra JSON-serialisable fields, copied into the manifest.
        folder (`str`): the generation folder (made if absent).
        guidance_scale (`float`): for rows without their own.
        settings (`dict`, *optional*): what must match for a re-run to resume here (model, artifact, ...).
        process_index, num_processes (`int`, *optional*): this process's shard; default from accelerate.

    Returns:
        `int`: the number of images this call generated.
    """
    from .sampling import generate

    if process_index is None or num_processes is None:
        process_index, num_processes = shard()
    os.makedirs(os.path.join(folder, IMAGES), exist_ok=True)
    full = dict(settings or {}, num_inference_steps=num_inference_steps, default_guidance_scale=guidance_scale)
    _check_settings(folder, full)

    finished = {}
    for record in read_manifest(folder):
        finished[record["id"]] = record
    mine = [row for k, row in enumerate(rows) if k % num_processes == process_index]
    for row in mine:
        done = finished.get(row["id"])
        if done is not None and (done["prompt"], done["seed"]) != (row["prompt"], row["seed"]):
            raise VeilError(
                f"{folder!r} holds an image for another prompt at row {row['id']}; choose another --out or pass --overwrite to start again."
            )
    todo = [row for row in mine if row["id"] not in finished]
    manifest = os.path.join(folder, manifest_name(process_index, num_processes))
    _repair_tail(manifest)
    for stale in glob.glob(os.path.join(folder, IMAGES, "*.tmp-*")):  # left by a killed run, not a running one
        if owner_gone(stale):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    made = 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        lines = []
        begun = time.perf_counter()
        # One pipeline call per guidance scale within the batch (the pipeline takes one scale per call).
        for scale in dict.fromkeys(row.get("guidance_scale", guidance_scale) for row in batch):
            group = [row for row in batch if row.get("guidance_scale", guidance_scale) == scale]
            images = generate(pipe, [r["prompt"] for r in group], [r["seed"] for r in group],
                              num_inference_steps=num_inference_steps, guidance_scale=scale, batch_size=len(group))
            for row, image in zip(group, images):
                name = f"{IMAGES}/{row['id']:06d}.png"
                _save_image(image, os.path.join(folder, name))
                record = {k: v for k, v in row.items() if k not in ("path", "target")}
                record.update(file=name, guidance_scale=scale)
                lines.append(record)
        seconds = round((time.perf_counter() - begun) / max(len(batch), 1), 4)
        lines.sort(key=lambda r: r["id"])
        text = "".join(json.dumps(dict(r, seconds=seconds), default=str) + "\n" for r in lines)
        with open(manifest, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        made += len(batch)
        bar.update(len(batch))
    bar.close()
    return made


def missing_rows(folder, rows):
    """The rows with no finished image in ``folder`` (all shards)."""
    done = {record["id"] for record in read_manifest(folder)}
    return [row for row in rows if row["id"] not in done]
