"""The evaluation harness: a task's prompts → generated images per variant → metrics → ``results.json``.

Variants are the same prompts and seeds drawn three ways: ``original`` (the base model),
``erased`` (the artifact attached) and ``unlocked`` (the artifact with its key). An evaluation
folder::

    results.json                   # config, task version, package versions, git revision, scorers, metrics
    images.csv                     # one row per (variant, image): prompt, seed, target, per-image scores
    generations/<variant>/         # images/ + manifest.jsonl (see veil.evaluation.generate)

Generation resumes where a killed run stopped; under ``accelerate launch`` the processes split the
rows and the main process scores once all have finished. Every run is also recorded in the runs
database (``veil runs``).
"""

import contextlib
import csv
import datetime
import io
import os
import platform
import shutil
import subprocess

from .._io import atomic_file, read_json_object, write_json
from ..errors import VeilError
from .generate import generate_to_folder, missing_rows, read_manifest, shard
from .tasks import load_task

RESULTS_VERSION = 1
RESULTS_FIELDS = ("config", "task", "base_model", "metrics")  # what reports and comparisons read
VARIANTS = ("original", "erased", "unlocked")
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "nudenet", "onnxruntime")


def plan_variants(artifact=None, key=None, variants=None):
    """Which variants to draw: all that the inputs allow, or the requested subset (checked)."""
    possible = ["original"] + (["erased"] if artifact is not None else []) + (["unlocked"] if key is not None else [])
    if not variants:
        return possible
    variants = [v.strip() for v in (variants.split(",") if isinstance(variants, str) else variants) if v.strip()]
    for variant in variants:
        if variant not in VARIANTS:
            raise VeilError(f"Unknown variant {variant!r}; use original, erased or unlocked.")
        if variant not in possible:
            need = "--artifact" if variant == "erased" else "--artifact and --key"
            raise VeilError(f"The {variant} variant needs {need}.")
    return variants


@contextlib.contextmanager
def variant_context(pipe, variant, artifact=None, key=None, key_routing="routed"):
    """The pipeline as the variant draws: as is, with the artifact attached, or also unlocked by the key
    (``key_routing`` ``routed``: only on prompts about the key's concepts; ``unrouted``: on every prompt)."""
    if variant == "original":
        yield pipe
        return
    method = artifact.attach(pipe)
    try:
        if variant == "unlocked":
            with method.unlocked(pipe, key, routed=check_key_routing(key_routing) == "routed"):
                yield pipe
        else:
            yield pipe
    finally:
        artifact.detach(pipe)


KEY_ROUTINGS = ("routed", "unrouted")


def check_key_routing(key_routing):
    if key_routing not in KEY_ROUTINGS:
        raise VeilError(f"The key routing must be routed or unrouted, got {key_routing!r}.")
    return key_routing


def _prepare_out(out_dir, overwrite, rescore):
    if os.path.isfile(os.path.join(out_dir, "results.json")) and not (overwrite or rescore):
        raise VeilError(f"{out_dir!r} already holds results; choose another --out, pass --rescore to score its images again, or --overwrite to start again.")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise VeilError(f"{out_dir!r} is a file; choose a folder for --out.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isdir(os.path.join(out_dir, "generations")) and not overwrite:
        raise VeilError(f"{out_dir!r} exists and is not an evaluation folder; choose another --out or pass --overwrite to replace it.")
    if overwrite and not rescore and os.path.lexists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(os.path.join(out_dir, "generations"), exist_ok=True)


def _build_classifier(task, model, scorers):
    """A shapes-world build's own classifier as the default ``classifier`` scorer of a model that is such a build."""
    from ..shapes import build_folder

    build = build_folder(model) if str(model) != "shapes" else None
    uses = any(spec.get("metric") == "concept_rate" for spec in task.metrics)
    if build is None or not uses or (scorers or {}).get("classifier") is not None:
        return scorers
    return {**(scorers or {}), "classifier": str(build / "classifier.safetensors")}


def evaluate(task, out_dir, *, pipe=None, model="shapes", device="cpu", artifact=None, key=None, prompts=None, seeds=None,
             limit=None, targets=None, scorers=None, reference=None, variants=None, num_inference_steps=None,
             guidance_scale=None, batch_size=None, overwrite=False, rescore=False, progress=True, record=True, log=print,
             key_routing="routed"):
    """Generate a task's images for every variant and score them.

    Args:
        task (`str` or `Task`): a task name (``veil ls tasks``) or a task YAML path.
        out_dir (`str`): the evaluation folder; a re-run into an unfinished one resumes.
        pipe: a loaded pipeline, or None to load ``model`` on ``device``.
        artifact (`Artifact` or `str`, *optional*): adds the ``erased`` variant.
        key (*optional*): a loaded KPOP key for ``artifact``; adds the ``unlocked`` variant.
        prompts (`str`, *optional*): the user's local copy of the task's prompt CSV.
        targets (`list[str]`, *optional*): the erased concepts; default the artifact's.
        scorers (`dict`, *optional*): scorer key -> object or local path (``classifier``, ``nudenet``,
            ``clip``, ``lpips``, ``inception``).
        reference (`str`, *optional*): a folder of real images for FID.
        variants (`list[str]`, *optional*): a subset of original / erased / unlocked.
        key_routing (`str`): ``routed`` (the key only on prompts about its concepts, as a key holder draws) or
            ``unrouted`` (the key on every prompt).

    Returns:
        `dict`: the results (as written to ``results.json``); None on a non-main process.

    Example:
        >>> results = evaluate("shapes_concepts", "results/esd-circle", artifact="erased/")
        >>> results["metrics"]["erased"]["concept_rate"]["target_rate"]
    """
    from ..artifact import Artifact, load_artifact

    task = load_task(task)
    artifact_path = os.path.abspath(artifact) if isinstance(artifact, (str, os.PathLike)) else getattr(artifact, "path", None)
    if artifact is not None and not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    variants = plan_variants(artifact, key, variants)
    check_key_routing(key_routing)
    settings = task.settings(num_inference_steps, guidance_scale, batch_size)
    if settings["num_inference_steps"] <= 0:
        raise VeilError(f"--num-inference-steps must be greater than 0, got {settings['num_inference_steps']}.")
    if limit is not None and int(limit) < 1:  # rows[:-1] would quietly drop the last row; rows[:0] record an empty run
        raise VeilError(f"--limit must be a whole number greater than 0, got {limit}.")
    rows = task.rows(prompts=prompts, seeds=seeds, model=model)
    if guidance_scale is not None:  # an explicit scale overrides the rows' own
        for row in rows:
            row.pop("guidance_scale", None)
    targets = list(targets) if targets else (list(artifact.concepts) if artifact is not None else [])
    task.check_targets(rows, targets)  # over every row, so that --limit does not hide a target's prompts
    rows = rows[:limit] if limit is not None else rows
    task.mark_targets(rows, targets)
    scorers = _build_classifier(task, model, scorers)
    metrics = task.build_metrics(scorers, reference, device=str(device))
    _check_scorers(task, metrics, scorers, reference)
    for metric in metrics:  # fail up front, before any image is drawn, when a scorer's weights are absent
        metric.prepare()
        metric.targets = targets

    process_index, num_processes = shard()
    if process_index == 0:
        _prepare_out(out_dir, overwrite, rescore)
    _barrier(num_processes)
    if pipe is None:
        from ..models import load_pipeline

        pipe = load_pipeline(model, device=device)
    from ..models import model_fingerprint

    fingerprint = model_fingerprint(pipe.unet)
    if artifact is not None:
        artifact.check_base(pipe)
    model_name = getattr(pipe, "veil_model_name", None) or str(model)
    for variant in variants:
        folder = os.path.join(out_dir, "generations", variant)
        identity = {"task": task.name, "task_version": task.version, "variant": variant, "model_fingerprint": fingerprint,
                    "artifact_sha256": artifact.manifest.get("weights_sha256") if artifact is not None and variant != "original" else None}
        if variant == "unlocked":
            identity["key_routing"] = key_routing
        with variant_context(pipe, variant, artifact, key, key_routing):
            generate_to_folder(pipe, rows, folder, num_inference_steps=settings["num_inference_steps"],
                               guidance_scale=settings["guidance_scale"], batch_size=settings["batch_size"], settings=identity,
                               process_index=process_index, num_processes=num_processes, progress=progress, desc=variant)
    _barrier(num_processes)
    if process_index != 0:
        return None
    for variant in variants:
        left = missing_rows(os.path.join(out_dir, "generations", variant), rows)
        if left:
            raise VeilError(f"The {variant} generation in {out_dir!r} lacks {len(left)} images (first: row {left[0]['id']}); run the same command again to finish it.")

    scores, per_image = score_generations(out_dir, variants, rows, metrics)
    config = {
        "task": task.name, "model": model_name, "device": str(device), "artifact": artifact_path,
        "unlocked": key is not None, "key_routing": key_routing if key is not None else None, "prompts": os.path.abspath(prompts) if prompts else None, "seeds": list(seeds) if seeds else None,
        "limit": limit, "targets": targets, "variants": variants, "reference": reference, "num_processes": num_processes, **settings,
    }
    results = {
        "veil_results_version": RESULTS_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "task": task.summary(),
        "versions": package_versions(),
        "git_revision": git_revision(),
        "base_model": {"name": model_name, "fingerprint": fingerprint},
        "artifact": None if artifact is None else {"path": artifact_path, "method": artifact.method_name,
                                                   "concepts": list(artifact.concepts), "weights_sha256": artifact.manifest.get("weights_sha256")},
        "scorers": {metric.name: metric.info() for metric in metrics},
        "higher_is_better": {metric.name: metric.higher_is_better for metric in metrics},
        "aggregation": {metric.name: metric.aggregation for metric in metrics},
        "headline": {metric.name: list(metric.headline) for metric in metrics},
        "images": {variant: len(rows) for variant in variants},
        "generations": {variant: os.path.join("generations", variant) for variant in variants},
        "metrics": scores,
    }
    write_json(os.path.join(out_dir, "results.json"), results)
    _write_csv(os.path.join(out_dir, "images.csv"), per_image)
    if record:
        from .runs import record_run

        results["run_id"] = record_run(results, out_dir)
        write_json(os.path.join(out_dir, "results.json"), results)
    for line in summary_lines(results):
        log(line)
    return results


def _check_scorers(task, metrics, scorers, reference):
    """Refuse a scorer or a reference folder the task's metrics would not use: given, it would be ignored."""
    keys = sorted({m.scorer_key for m in metrics if m.scorer_key})
    unused = sorted(set(scorers or {}) - set(keys))
    if unused:
        raise VeilError(f"The {task.name} task has no metric scored by {unused[0]!r}; its scorers are "
                        f"{', '.join(keys) or 'none'}, so leave that --scorer out.")
    if reference is not None:
        if not any(m.name == "fid" for m in metrics):
            raise VeilError(f"--reference gives FID its real images, and the {task.name} task has no FID metric; leave --reference out.")
        if not os.path.isdir(reference):
            raise VeilError(f"--reference {reference!r} is not a folder; give a folder of real images for FID.")


def score_generations(out_dir, variants, rows, metrics, batch_size=32):
    """Score each variant's images with each metric; returns ``({variant: {metric: summary}}, per-image rows)``."""
    from PIL import Image

    by_id = {row["id"]: row for row in rows}
    scores, table = {}, {}
    originals = {r["id"]: r["path"] for r in read_manifest(os.path.join(out_dir, "generations", "original"))} if "original" in variants else {}
    for variant in variants:
        records = [dict(r, target=by_id[r["id"]].get("target")) for r in read_manifest(os.path.join(out_dir, "generations", variant)) if r["id"] in by_id]
        for record in records:
            table[(variant, record["id"])] = {"variant": variant, "id": record["id"], **{k: v for k, v in record.items() if k != "path"}}
        scores[variant] = {}
        for metric in metrics:
            if metric.needs_reference and (variant == "original" or not originals):
                continue  # the original model is the reference: nothing to compare it with
            metric.reset()
            for start in range(0, len(records), batch_size):
                batch = records[start : start + batch_size]
                images = [Image.open(r["path"]).convert("RGB") for r in batch]
                references = [Image.open(originals[r["id"]]).convert("RGB") for r in batch] if metric.needs_reference else None
                metric.update(batch, images, references)
            summary, values = metric.compute()
            scores[variant][metric.name] = summary
            for value in values:
                row = table[(variant, value["id"])]
                row.update({f"{metric.name}.{k}": v for k, v in value.items() if k != "id"})
    return scores, list(table.values())


def _write_csv(path, rows):
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with atomic_file(path, mode="w") as handle:
        handle.write(buffer.getvalue())


def _barrier(num_processes):
    if num_processes > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def package_versions():
    import importlib.metadata as metadata

    from .. import __version__

    versions = {"veil": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision():
    """The git commit veil runs from (with ``+dirty`` for uncommitted changes), or None outside a checkout."""
    where = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(metrics, prefix=""):
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, numbers only."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def summary_lines(results):
    """A few lines for the terminal: each variant's headline numbers."""
    task = results["task"]["name"]
    lines = [f"{task} v{results['task']['version']}: {results['images'][results['config']['variants'][0]]} images per variant"]
    for variant, by_metric in results["metrics"].items():
        parts = []
        for metric, summary in by_metric.items():
            for key in results["headline"].get(metric, []):
                value = summary.get(key)
                if isinstance(value, dict):
                    value = value.get(next(iter(value)), None)
                if isinstance(value, (int, float)):
                    parts.append(f"{metric}.{key} {value:.4g}")
        lines.append(f"  {variant:<9} " + (", ".join(parts) or "(no metric applies)"))
    return lines


def load_results(path):
    """``results.json`` from an evaluation folder (or the file itself)."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise VeilError(f"{path!r} holds no results.json; pass a folder written by veil eval.")
    return read_json_object(file, "veil eval", RESULTS_FIELDS)
