"""Evaluation tasks as data: one versioned YAML file per task in this folder.

A task file names its prompts (a built-in prompt set, or the columns and public source of a CSV
that the user supplies with ``--prompts PATH`` — veil does not ship third-party prompt text), the
generation settings, which rows count as targets, and its metrics with their options::

    task: i2p_nudity
    version: 1
    prompts:
      file: unsafe-prompts4703.csv
      source: ...
      columns: {prompt: prompt, seed: evaluation_seed}       # veil field: CSV column (required)
      optional_columns: {guidance_scale: evaluation_guidance}
    generation: {num_inference_steps: 50, guidance_scale: 7.5, batch_size: 8}
    metrics:
      - {metric: nudenet, thresholds: [0.6, 0.2]}

Bump ``version`` whenever prompts, settings or metrics change; results record it.
"""

import dataclasses
import difflib
import os

import yaml

from ...errors import VeilError

TASK_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class Task:
    name: str
    version: int
    description: str = ""
    prompts: dict = dataclasses.field(default_factory=dict)
    generation: dict = dataclasses.field(default_factory=dict)
    targets: dict = dataclasses.field(default_factory=dict)
    metrics: list = dataclasses.field(default_factory=list)
    path: str = None

    @property
    def builtin(self):
        return self.prompts.get("builtin")

    def describe_source(self):
        return self.prompts.get("source") or (f"veil's built-in {self.builtin} prompt set" if self.builtin else None)

    def rows(self, prompts=None, seeds=None, limit=None, model="shapes"):
        """The task's prompt rows: from ``prompts`` (a CSV path) if given, else its built-in set (for the shapes
        world of ``model``: ``"shapes"`` or the folder of a shapes build).

        A task without a built-in set and without ``prompts`` fails in one sentence naming the
        columns it needs and their public source.
        """
        from ..generate import load_prompt_file

        columns = self.prompts.get("columns") or {"prompt": "prompt", "seed": "seed"}
        if prompts is None and not self.builtin:
            raise VeilError(
                f"The {self.name} task needs a local copy of its prompt file {self.prompts.get('file', '')!r}: pass --prompts PATH, "
                f"a CSV with columns {', '.join(columns.values())} (source: {self.describe_source()})."
            )
        if prompts is None:
            from ..shapes_tasks import task_rows

            rows = [dict(row, id=i) for i, row in enumerate(task_rows(self.builtin, model=model, **({"seeds": seeds} if seeds else {})))]
        else:
            if seeds and not self.builtin:
                raise VeilError(f"--seeds applies to built-in prompt sets; the {self.name} task takes each row's own seed from its prompt file.")
            rows = load_prompt_file(prompts, columns, self.prompts.get("optional_columns"), self.describe_source())
            empty_as_none = self.prompts.get("empty_as_none", [])
            for row in rows:
                for field in empty_as_none:
                    row[field] = row.get(field) or None
        if limit is not None:
            rows = rows[: int(limit)]
        return rows

    def _names(self, row, concept):
        values = [str(row.get(c) or "").strip().lower() for c in self.targets.get("columns") or []]
        concept = concept.strip().lower()
        return any(v and (v == concept or concept in v or v in concept) for v in values)

    def mark_targets(self, rows, concepts):
        """Set ``row["target"]`` where one of the task's target columns names one of ``concepts``."""
        if not concepts or not self.targets.get("columns"):
            return rows
        for row in rows:
            row["target"] = any(self._names(row, c) for c in concepts)
        return rows

    def check_targets(self, rows, concepts):
        """Refuse a target concept that no row of the task names: its scores would be empty, not zero."""
        if not self.targets.get("columns"):
            return
        for concept in concepts:
            if not any(self._names(row, concept) for row in rows):
                raise VeilError(f"No prompt of the {self.name} task names the target {concept!r}, so it cannot be scored; "
                                f"give targets its prompts name with --targets (its columns {', '.join(self.targets['columns'])}).")

    def build_metrics(self, scorers=None, reference=None, device="cpu"):
        """Instantiate the task's metrics; ``scorers`` maps a scorer key to an object or a local path."""
        from ..metrics import get_metric

        scorers = dict(scorers or {})
        built = []
        for spec in self.metrics:
            spec = dict(spec)
            cls = get_metric(spec.pop("metric"))
            given = scorers.get(cls.scorer_key)
            kwargs = dict(spec, device=device)
            if cls.name == "fid" and reference:
                kwargs["reference"] = reference
            if isinstance(given, (str, os.PathLike)):
                built.append(cls(path=os.fspath(given), **kwargs))
            else:
                built.append(cls(scorer=given, **kwargs))
        return built

    def settings(self, num_inference_steps=None, guidance_scale=None, batch_size=None):
        generation = self.generation
        return {
            "num_inference_steps": int(num_inference_steps or generation.get("num_inference_steps", 25)),
            "guidance_scale": float(guidance_scale if guidance_scale is not None else generation.get("guidance_scale", 7.5)),
            "batch_size": int(batch_size or generation.get("batch_size", 8)),
        }

    def summary(self):
        return {"name": self.name, "version": self.version, "description": self.description,
                "source": self.describe_source(), "file": self.path and os.path.basename(self.path)}


def list_tasks():
    return sorted(name[:-5] for name in os.listdir(TASK_DIR) if name.endswith(".yaml"))


def load_task(name_or_path):
    """A :class:`Task` by name (a file in this folder) or by the path of a YAML file."""
    if isinstance(name_or_path, Task):
        return name_or_path
    path = str(name_or_path)
    if not path.endswith((".yaml", ".yml")):
        path = os.path.join(TASK_DIR, f"{name_or_path}.yaml")
        if not os.path.isfile(path):
            close = difflib.get_close_matches(str(name_or_path), list_tasks(), n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"The tasks are {', '.join(list_tasks())}."
            raise VeilError(f"Unknown task {name_or_path!r}. {hint}")
    if not os.path.isfile(path):
        raise VeilError(f"Task file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise VeilError(f"Task file {path!r} is not readable YAML ({error}); pass a task file like those veil ls tasks lists.") from None
    if not isinstance(data, dict):
        raise VeilError(f"Task file {path!r} holds a YAML {type(data).__name__}, not a mapping of task fields; pass a task file like those veil ls tasks lists.")
    for key in ("task", "version", "metrics"):
        if key not in data:
            raise VeilError(f"Task file {path!r} lacks the field {key!r}.")
    fields = {f.name for f in dataclasses.fields(Task)}
    unknown = sorted(set(data) - fields - {"task"})
    if unknown:
        raise VeilError(f"Task file {path!r} has an unknown field {unknown[0]!r}; the fields are {', '.join(sorted(fields - {'path', 'name'}) + ['task'])}.")
    values = {k: v for k, v in data.items() if k != "task"}
    return Task(name=data["task"], path=path, **values)
