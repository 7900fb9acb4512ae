"""The runs database: every ``veil eval`` recorded in SQLite, to list (``veil runs``) and compare (``veil compare``).

The database is ``~/.cache/veil/runs.sqlite`` unless the environment variable ``VEIL_RUNS_DB``
names another file. One row per run (its results.json kept whole) and one row per number
(``variant/metric.key``) so that runs can be compared without re-reading their folders.
"""

import datetime
import json
import os
import sqlite3
import uuid

from ..errors import VeilError

ENV_VAR = "VEIL_RUNS_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT UNIQUE NOT NULL,
    created TEXT NOT NULL,
    task TEXT, task_version INTEGER, model TEXT, method TEXT, concepts TEXT, unlocked INTEGER,
    out_dir TEXT, git_revision TEXT, veil_version TEXT, results TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS numbers (
    run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT NOT NULL, value REAL, higher_is_better INTEGER,
    PRIMARY KEY (run_id, name)
);
"""


def database_path():
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "veil", "runs.sqlite")


def connect(path=None):
    from .._io import check_writable

    path = path or database_path()
    check_writable(path, flag=ENV_VAR if path == os.environ.get(ENV_VAR) else "The runs database", kind="file", exists_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        connection = sqlite3.connect(path, timeout=30)
        connection.executescript(_SCHEMA)
    except sqlite3.Error as error:
        raise VeilError(f"Could not open the runs database {path!r} ({error}); set {ENV_VAR} to a writable file.") from None
    return connection


def numbers(results):
    """``{"variant/metric.key": (value, higher_is_better or None)}`` for every number in the results."""
    from .harness import flatten

    out = {}
    for variant, by_metric in results.get("metrics", {}).items():
        for metric, summary in by_metric.items():
            better = results.get("higher_is_better", {}).get(metric, {})
            for key, value in flatten(summary or {}).items():
                top = key.split(".")[0]
                direction = better.get(key, better.get(top))
                out[f"{variant}/{metric}.{key}"] = (value, direction)
    return out


def new_run_id(now):
    """``YYYYMMDD-HHMMSS-`` and 12 hex digits of a random UUID: sortable by time, and unique however many runs
    are recorded in one second."""
    return f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:12]}"


def record_run(results, out_dir, path=None, attempts=5):
    """Store a run; returns its id (``YYYYMMDD-HHMMSS-xxxxxxxxxxxx``). An id already taken is drawn again."""
    now = datetime.datetime.now()
    artifact = results.get("artifact") or {}
    for attempt in range(attempts):
        run_id = new_run_id(now)
        try:
            _insert(results, out_dir, path, run_id, now, artifact)
            return run_id
        except sqlite3.IntegrityError:
            if attempt == attempts - 1:
                raise VeilError(f"Could not find a free run id in {path or database_path()!r} after {attempts} tries; "
                                "run the command again.") from None


def _insert(results, out_dir, path, run_id, now, artifact):
    connection = connect(path)
    try:
        with connection:
            connection.execute(
                "INSERT INTO runs (run_id, created, task, task_version, model, method, concepts, unlocked, out_dir, git_revision, veil_version, results)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, results.get("created") or now.isoformat(timespec="seconds"), results["task"]["name"], results["task"]["version"],
                 results["base_model"]["name"], artifact.get("method"), ",".join(artifact.get("concepts") or []),
                 int(bool(results["config"].get("unlocked"))), os.path.abspath(out_dir), results.get("git_revision"),
                 results.get("versions", {}).get("veil"), json.dumps(dict(results, run_id=run_id), default=str)),
            )
            connection.executemany(
                "INSERT INTO numbers (run_id, name, value, higher_is_better) VALUES (?, ?, ?, ?)",
                [(run_id, name, value, None if better is None else int(better)) for name, (value, better) in numbers(results).items()],
            )
    finally:
        connection.close()


def list_runs(task=None, limit=50, path=None):
    """The latest runs, newest first, as dicts."""
    connection = connect(path)
    connection.row_factory = sqlite3.Row
    query = "SELECT number, run_id, created, task, task_version, model, method, concepts, unlocked, out_dir, git_revision FROM runs"
    arguments = []
    if task:
        query += " WHERE task = ?"
        arguments.append(task)
    query += " ORDER BY number DESC LIMIT ?"
    arguments.append(int(limit))
    rows = [dict(row) for row in connection.execute(query, arguments)]
    connection.close()
    return rows


def get_run(reference, path=None):
    """A run's results by its number, its id (or a unique prefix), or an evaluation folder on disk."""
    if os.path.isdir(str(reference)):
        from .harness import load_results

        return load_results(str(reference))
    connection = connect(path)
    text = str(reference)
    if text.isdigit():
        found = connection.execute("SELECT results FROM runs WHERE number = ?", (int(text),)).fetchall()
    else:
        found = connection.execute("SELECT results FROM runs WHERE run_id LIKE ?", (text + "%",)).fetchall()
    connection.close()
    if not found and os.path.exists(text):
        raise VeilError(f"{text!r} is neither an evaluation folder nor a run; pass a folder written by veil eval, a run number or a run id.")
    if not found:
        raise VeilError(f"No run {text!r} in {database_path()!r}; `veil runs` lists the runs (pass a number, an id or a results folder).")
    if len(found) > 1:
        raise VeilError(f"{text!r} matches {len(found)} runs; give more of the run id.")
    try:
        results = json.loads(found[0][0])
    except json.JSONDecodeError:
        results = None
    if not isinstance(results, dict):
        raise VeilError(f"The run {text!r} in {database_path()!r} holds damaged results; compare its folder instead, or run the evaluation again.")
    return results


def compare(a, b):
    """Rows ``(name, value_a, value_b, b - a, verdict)`` over the numbers of two results; verdict is
    ``better`` / ``worse`` (for ``b`` against ``a``, by ``higher_is_better``), ``same`` or ``""``."""
    first, second = numbers(a), numbers(b)
    rows = []
    for name in sorted(set(first) | set(second)):
        va = first.get(name, (None, None))[0]
        vb, better = second.get(name, (None, None))
        if better is None:
            better = first.get(name, (None, None))[1]
        diff = vb - va if va is not None and vb is not None else None
        verdict = ""
        if diff is not None and better is not None:
            verdict = "same" if abs(diff) < 1e-12 else ("better" if (diff > 0) == bool(better) else "worse")
        rows.append((name, va, vb, diff, verdict))
    return rows
