"""``veil bench``: every method × concept on one model with one protocol → a table and JSON.

For each method and concept (or group of concepts erased together in one artifact, ``circle+square``): fit on
the concept, then measure on the shapes world the target's
concept rate before and after on canonical prompts, on training synonyms, on held-out
paraphrases and on short prompts (the bare word and partial captions); every other concept's rate as a share of its base; with keys, the rate with the right
key, another concept's key and a random key of matched norm; with the ``key_forging`` attack, the
key-forging curve of keyed methods; and the cost (seconds, peak memory, artifact size). A group row (and every row
on a shapes-world-2 model) adds the lowest share of base among every other concept. On a shapes-world-2 model, a
row erasing a shape adds its rate on
implicit prompts (the shape named by an everyday object), training objects and held-out objects apart, and a row
erasing a style adds the shapes' rates on the prompts naming that style (docs/evaluation.md).
"""

import contextlib
import hashlib
import json
import os
import time

from ._io import atomic_file, read_json_object, write_json
from .artifact import WEIGHTS_NAME, Artifact
from .errors import VeilError
from .evaluation.concept_rate import evaluate_prompts
from .evaluation.grid import labelled_grid
from .evaluation.shapes_tasks import rows_naming, task_rows
from .methods.presets import preset_for
from .registry import get_method
from .shapes import model_world
from .training.loop import fit

SETS = ("canonical", "synonyms", "paraphrase", "short")
WORLD2_SETS = ("implicit", "heldout_implicit", "styles")  # a shapes-world-2 model's prompt sets add these
KEY_SUFFIX = ".veilkey"  # a keyed method's key, next to its artifact folder


def _evaluate(pipe, rows, classify, settings):
    if not rows:
        return {"rates": {}, "kinds": {}, "counts": {}, "images": [], "labels": {}}
    return evaluate_prompts(pipe, rows, classify, **settings)


def members(concept):
    """The concepts of a bench row: ``"circle"`` -> ``["circle"]``, a group ``"circle+square"`` -> both."""
    return [c.strip() for c in str(concept).split("+")]


def _group_rate(result, concepts):
    """The mean rate over ``concepts`` (each over the rows labelled with it), or ``None`` if none was drawn."""
    return _mean([result["rates"].get(c) for c in concepts])


def _share(after, base, concepts):
    shares = {c: after["rates"][c] / base["rates"][c] for c in concepts if base["rates"].get(c)}
    return shares


def run_bench(
    pipe,
    methods,
    concepts,
    out_dir,
    *,
    classify,
    seeds=(0, 1),
    num_inference_steps=20,
    guidance_scale=3.0,
    overrides=None,
    attacks=(),
    attack_configs=None,
    attack_seeds=tuple(range(8)),
    forging_eval_steps=(0, 25, 50, 100, 200),
    resume=False,
    overwrite=False,
    progress=True,
    log=print,
):
    """Run the bench; writes ``bench.json``, ``bench.md``, ``grid.png`` and the artifacts under ``out_dir``.

    Args:
        pipe: the base pipeline (left as it was).
        methods, concepts: names; every method is fitted on every concept, one at a time; a concept ``a+b`` is a
            group that one artifact erases together, scored on every concept in it (its rates are their means).
        classify: the concept classifier, ``images -> {kind: [label, ...]}`` (shapes world: bundled CNN).
        overrides: ``{method: {field: value}}`` on top of the model's preset.
        attacks: attack names (:func:`veil.attacks.list_attacks`) run on every method × concept, with
            rendered concept images; ``attack_configs``: ``{attack: {field: value}}``; ``attack_seeds``:
            the seeds of the scored images per attack prompt.
        forging_eval_steps: with ``key_forging`` in ``attacks``, the forging steps at which a keyed
            method's forged key is measured (``row["forging_curve"]``, see :func:`veil.attacks.forging_curve`).
        resume: keep the rows of an earlier ``bench.json`` in ``out_dir`` made with the same model, seeds
            and sampling, and fit only the method × concept pairs it lacks; the table then holds both. A kept
            row that lacks one of ``attacks`` gets it, run on its saved artifact (no refit). The base model's rates
            are kept too when the earlier bench drew exactly the same rows (a digest of them is in ``bench.json``).
            ``overwrite``:
            replace an earlier ``bench.json`` when this run finishes. With neither, an existing ``bench.json``
            is refused. One bench at a time may write to ``out_dir``.
    """
    check_attacks(concepts, attacks)
    with _bench_lock(out_dir):
        settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "progress": progress}
        model_name = getattr(pipe, "veil_model_name", "custom")
        CONCEPT_KIND = model_world(model_name).CONCEPT_KIND
        protocol = {"model": model_name, "seeds": list(seeds), "num_inference_steps": num_inference_steps,
                    "guidance_scale": guidance_scale}
        finished, earlier = ({}, {}) if overwrite else _finished_rows(out_dir, protocol, resume)
        rows_by_set = prompt_sets(model_name, seeds)
        base = _kept_base(earlier, rows_by_set)
        if base is not None:
            log("base model: kept from the earlier run (--resume; the same prompts and seeds)")
        else:
            log(f"base model: {sum(len(r) for r in rows_by_set.values())} images over {', '.join(rows_by_set)}")
            base = {name: _evaluate(pipe, rows, classify, settings) for name, rows in rows_by_set.items()}
            base.update(_style_splits(base, rows_by_set))
            base["rows_sha256"] = _rows_digest(rows_by_set)
        table = dict(finished)  # (method, concept) -> row: the earlier bench's rows (all kept), then this run's
        grid_rows, grid_labels = [], []
        for method_name in methods:
            method_cls = get_method(method_name)
            trained_keys = {}  # concept -> (artifact folder, its key, its row): for the wrong-key rows below
            for concept in concepts:
                if (method_cls.name, concept) in finished:
                    row = finished[(method_cls.name, concept)]
                    log(f"{method_cls.name} × {concept}: kept from the earlier run (--resume)")
                    changed = _short_kept_row(row, pipe, out_dir, base, rows_by_set["short"], classify, settings, log)
                    if _attack_kept_row(row, pipe, out_dir, attacks, attack_configs, classify, attack_seeds, settings, log,
                                        forging_eval_steps) or changed:
                        _save_report(out_dir, protocol, base, list(table.values()))
                    continue
                group = members(concept)
                kinds = {CONCEPT_KIND[c] for c in group}
                method = method_cls(bench_config(method_cls, model_name, concept, overrides))
                log(f"{method_cls.name} × {concept}: fitting")
                start = time.perf_counter()
                cost = fit(method, pipe, progress=progress)
                seconds = cost.get("seconds") or round(time.perf_counter() - start, 3)
                artifact_dir = os.path.join(out_dir, "artifacts", f"{method_cls.name}-{concept.replace(' ', '_')}")
                artifact = Artifact.from_method(method, pipe, {k: v for k, v in cost.items() if k != "losses"})
                artifact.save(artifact_dir, overwrite=True)
                if getattr(method, "key", None) is not None:
                    # Beside its artifact (unencrypted, git-ignored), so that a later --resume can attack with it.
                    from .methods.kpop.keys import save_key

                    save_key(method.key, artifact_dir + KEY_SUFFIX, artifact=artifact, overwrite=True)
                artifact_mb = os.path.getsize(os.path.join(artifact_dir, WEIGHTS_NAME)) / 2**20

                log(f"{method_cls.name} × {concept}: evaluating")
                after = {
                    "canonical": _evaluate(pipe, rows_by_set["canonical"], classify, settings),
                    "synonyms": _evaluate(pipe, rows_naming(rows_by_set["synonyms"], group), classify, settings),
                    "paraphrase": _evaluate(pipe, rows_naming(rows_by_set["paraphrase"], group), classify, settings),
                    "short": _evaluate(pipe, rows_naming(rows_by_set["short"], group), classify, settings),
                }
                others = [c for c in CONCEPT_KIND if c not in group]
                same_kind = [c for c in others if CONCEPT_KIND[c] in kinds]
                shares = _share(after["canonical"], base["canonical"], others)
                row = {
                    "method": method_cls.name,
                    "concept": concept,
                    **({"concepts": group, "target_rates": {c: after["canonical"]["rates"].get(c) for c in group}}
                       if len(group) > 1 else {}),
                    **{f"{prefix}{name}_rate": _group_rate(result[key], group)
                       for key, name in (("canonical", "target"), ("synonyms", "synonym"), ("paraphrase", "paraphrase"),
                                         ("short", "short"))
                       for prefix, result in (("base_", base), ("", after))},
                    "nontarget_share": _mean([shares[c] for c in same_kind if c in shares]),
                    "nontarget_min_share": min((shares[c] for c in same_kind if c in shares), default=None),
                    "other_kinds_share": _mean([shares[c] for c in others if c not in same_kind and c in shares]),
                    "nontarget_shares": {c: round(v, 4) for c, v in shares.items()},
                    **(dict(zip(("lowest_other", "min_other_share"), lowest_share(shares)))
                       if len(group) > 1 or set(WORLD2_SETS) <= set(rows_by_set) else {}),
                    **_world2_fields(pipe, rows_by_set, base, group, CONCEPT_KIND, classify, settings),
                    "seconds": seconds,
                    "peak_mem_mb": cost.get("peak_mem_mb"),
                    "artifact_mb": round(artifact_mb, 3),
                    "artifact": os.path.relpath(artifact_dir, out_dir),
                    "config": method.config.to_dict(),
                }
                row.update(_key_rows(method, pipe, group, rows_naming(rows_by_set["canonical"], group), classify, settings))
                keyed = getattr(method, "key", None) is not None
                if keyed and len(group) == 1:
                    trained_keys[concept] = (artifact_dir, method.key, row)
                if attacks:
                    row["attacks"] = _attack_rows(method, pipe, concept, attacks, attack_configs, classify, attack_seeds, settings, log)
                if "key_forging" in attacks and keyed:
                    row["forging_curve"] = _forging_curve(method, pipe, concept, method.key, attack_configs, classify, attack_seeds,
                                                          forging_eval_steps, settings, log)
                table[(row["method"], concept)] = row
                log(_summary(row))
                _save_report(out_dir, protocol, base, list(table.values()))

                sample = [i for i, r in enumerate(rows_by_set["canonical"])
                          if {r["shape"], r["colour"], r.get("style")} & set(group)][:6]
                edited = [after["canonical"]["images"][i] for i in sample]
                method.detach(pipe)
                if "images" in base["canonical"]:
                    original = [base["canonical"]["images"][i] for i in sample]
                else:  # a kept base holds rates, not images: draw the grid's few again
                    original = _evaluate(pipe, [rows_by_set["canonical"][i] for i in sample], classify, settings)["images"]
                grid_rows += [original, edited]
                grid_labels += [f"original: {concept}", f"{method_cls.name}: {concept}"]
            _other_concept_key_rows(trained_keys, pipe, rows_by_set["canonical"], classify, settings, log)

        report = _save_report(out_dir, protocol, base, list(table.values()))
        if grid_rows:
            labelled_grid(grid_rows, grid_labels).save(os.path.join(out_dir, "grid.png"))
        return report


def prompt_sets(model_name="shapes", seeds=(0, 1)):
    """The bench's prompt sets for a model, ``{name: rows}``: :data:`SETS`, and on a shapes-world-2 model
    :data:`WORLD2_SETS` (the implicit rows of training objects, of held-out objects, and the style rows)."""
    from .shapes import build_folder, world_version

    model = model_name if str(model_name) != "shapes" and build_folder(model_name) is not None else "shapes"
    sets = {
        "canonical": task_rows("shapes_concepts", seeds, model=model),
        "synonyms": task_rows("shapes_synonyms", seeds, model=model),
        "paraphrase": task_rows("shapes_paraphrase", model=model),
        "short": task_rows("shapes_short", seeds, model=model),
    }
    if world_version(model) >= 2:
        implicit = task_rows("shapes_implicit", seeds, model=model)
        sets["implicit"] = [r for r in implicit if r["split"] == "train"]
        sets["heldout_implicit"] = [r for r in implicit if r["split"] == "heldout"]
        sets["styles"] = task_rows("shapes_styles", seeds, model=model)
    return sets


def lowest_share(shares):
    """``(concept, share)`` of the lowest share of base in ``{concept: share}``, or ``(None, None)``."""
    if not shares:
        return None, None
    lowest = min(shares, key=shares.get)
    return lowest, shares[lowest]


def _style_splits(base, rows_by_set):
    """The base model's style rows split by the style they name, ``{"styles/<style>": {"rates", "kinds"}}``, scored
    again from their labels (nothing drawn); none without style rows."""
    from .evaluation.concept_rate import concept_rates

    rows, out = rows_by_set.get("styles", []), {}
    for style in dict.fromkeys(r["style"] for r in rows):
        indices = [i for i, r in enumerate(rows) if r["style"] == style]
        out[f"styles/{style}"] = concept_rates([rows[i] for i in indices],
                                               {k: [v[i] for i in indices] for k, v in base["styles"]["labels"].items()})
    return out


def _world2_fields(pipe, rows_by_set, base, group, kind_of, classify, settings):
    """A row's shapes-world-2 fields (none on world 1). For the group's shapes, their rate on the implicit
    prompts naming them by a training object (``implicit_rate``) and by a held-out object
    (``heldout_implicit_rate``), before and after. For its styles, on the style prompts naming them: the styles'
    rate (``style_rate``), the shapes' mean rate (``style_shape_rate``), each shape's rate as a share of its base
    (``style_shape_shares``) and the lowest (``style_shape_min_share``)."""
    if not set(WORLD2_SETS) <= set(rows_by_set):
        return {}
    fields = {}
    shapes = [c for c in group if kind_of.get(c) == "shape"]
    for name in ("implicit", "heldout_implicit"):
        after = _evaluate(pipe, [r for r in rows_by_set[name] if r["shape"] in shapes], classify, settings)
        fields[f"base_{name}_rate"] = _group_rate(base[name], shapes) if shapes else None
        fields[f"{name}_rate"] = _group_rate(after, shapes) if shapes else None
    styles = [c for c in group if kind_of.get(c) == "style"]
    if styles:
        rows = [r for r in rows_by_set["styles"] if r["style"] in styles]
        after = _evaluate(pipe, rows, classify, settings)
        named = list(dict.fromkeys(r["shape"] for r in rows))
        # Every style has the same rows per shape, so a rate over several styles' rows is the mean of theirs.
        splits = [base[f"styles/{style}"]["rates"] for style in styles]
        before = {"rates": {c: _mean([rates.get(c) for rates in splits]) for c in (*named, *styles)}}
        shares = _share(after, before, named)
        fields.update({
            "base_style_rate": _group_rate(before, styles), "style_rate": _group_rate(after, styles),
            "base_style_shape_rate": _group_rate(before, named), "style_shape_rate": _group_rate(after, named),
            "style_shape_shares": {c: round(v, 4) for c, v in shares.items()},
            "style_shape_min_share": min(shares.values(), default=None),
        })
    return fields


def bench_config(method_cls, model_name, concept, overrides=None):
    """The config a bench fits ``method_cls`` with on ``concept``: the model's preset under ``overrides``."""
    config = preset_for(method_cls, model_name, members(concept))
    config.update((overrides or {}).get(method_cls.name, {}))
    return method_cls.config_class.from_dict({**config, "concepts": members(concept)})


def check_attacks(concepts, attacks):
    """Refuse attacks on a bench holding concept groups: an attack measures one concept."""
    if attacks and any(len(members(c)) > 1 for c in concepts):
        raise VeilError("Attacks run on one concept per row; bench concept groups such as circle+square without --attacks, "
                        "or attack a group's saved artifact one concept at a time with veil attack --artifact.")


def check_settings(methods, concepts, model_name, overrides=None):
    """Build every method × concept config now, so that a bad setting is refused before any fitting."""
    for name in methods:
        for concept in concepts:
            bench_config(get_method(name), model_name, concept, overrides)


@contextlib.contextmanager
def _bench_lock(out_dir):
    """One bench at a time in a folder: a second would write its own idea of ``bench.json`` over the first's rows.
    The lock is the operating system's on ``bench.lock``, so a bench that was killed leaves nothing that refuses
    the next one; a bench that ends removes the file."""
    import fcntl

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "bench.lock")
    handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file may have been removed by the bench that held it between our open and our lock.
        if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(handle).st_ino:
            raise BlockingIOError
    except BlockingIOError:
        os.close(handle)
        raise VeilError(f"Another bench is writing to {out_dir!r}; wait for it to finish, or give another --out.") from None
    try:
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):  # removed by hand while the bench ran: nothing left to remove
            os.remove(path)  # while still holding the lock
        os.close(handle)


def _save_report(out_dir, protocol, base, rows):
    """Write ``bench.json`` and ``bench.md`` (after every row, so that an interrupted bench can --resume)."""
    report = {
        **protocol,
        "attacks": sorted({name for r in rows for name in r.get("attacks", {}).get("attacks", {})}),
        "base": {name: {"rates": value["rates"], "kinds": value["kinds"]} for name, value in base.items() if isinstance(value, dict)},
        "base_rows_sha256": base.get("rows_sha256"),
        "rows": rows,
    }
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "bench.json"), report)
    with atomic_file(os.path.join(out_dir, "bench.md"), mode="w") as handle:
        handle.write(markdown_table(report))
    return report


def _finished_rows(out_dir, protocol, resume):
    """``{(method, concept): row}`` of an earlier bench in ``out_dir`` that ``resume`` may keep."""
    path = os.path.join(out_dir, "bench.json")
    if not os.path.isfile(path):
        return {}, {}
    if not resume:
        raise VeilError(f"{out_dir!r} already holds a bench; pass --resume to add to it, or --overwrite to start afresh.")
    earlier = read_json_object(path, "veil bench")
    if not isinstance(earlier.get("rows", []), list) or not all(isinstance(r, dict) and "method" in r and "concept" in r
                                                                for r in earlier.get("rows", [])):
        raise VeilError(f"{path!r} has rows that are not laid out as veil bench writes them; use another --out, or --overwrite to start afresh.")
    different = [k for k, v in protocol.items() if earlier.get(k) != v]
    if different:
        raise VeilError(f"The bench in {out_dir!r} was run with another {different[0].replace('_', ' ')} "
                        f"({earlier.get(different[0])!r}, now {protocol[different[0]]!r}); use another --out.")
    return {(r["method"], r["concept"]): r for r in earlier.get("rows", [])}, earlier


def _rows_digest(rows_by_set):
    """A digest of every row the base pass draws (prompts, seeds, labels), set by set."""
    text = json.dumps({name: rows for name, rows in rows_by_set.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _kept_base(earlier, rows_by_set):
    """The base rates of an earlier bench in the same folder, when it drew exactly these rows; else ``None``."""
    base = earlier.get("base")
    digest = _rows_digest(rows_by_set)
    if earlier.get("base_rows_sha256") != digest or not isinstance(base, dict):
        return None
    names = [*rows_by_set, *(f"styles/{style}" for style in dict.fromkeys(r["style"] for r in rows_by_set.get("styles", [])))]
    if not all(isinstance(base.get(name), dict) and {"rates", "kinds"} <= set(base[name]) for name in names):
        return None
    return {**{name: {"rates": base[name]["rates"], "kinds": base[name]["kinds"]} for name in names}, "rows_sha256": digest}


def _kept_artifact(row, out_dir, what):
    folder = os.path.join(out_dir, row.get("artifact") or "")
    if not row.get("artifact") or not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        raise VeilError(f"The {row['method']} × {row['concept']} row has no saved artifact in {out_dir!r} to {what}; "
                        "run that pair again with --overwrite in another --out.")
    return Artifact.load(folder)


def _short_kept_row(row, pipe, out_dir, base, rows, classify, settings, log):
    """Measure the short prompts on a kept row's saved artifact when its bench predates them (rows whose artifact
    is gone are left as they are). Returns whether the row changed."""
    if "short_rate" in row:
        return False
    concept, group = row["concept"], members(row["concept"])
    if not row.get("artifact") or not os.path.isfile(os.path.join(out_dir, row["artifact"], WEIGHTS_NAME)):
        # Artifacts are not kept in git: a fresh clone's rows stay as they are (attacks, asked for, are refused).
        log(f"{row['method']} × {concept}: no saved artifact, so no short-prompt rates for this kept row")
        return False
    artifact = _kept_artifact(row, out_dir, "measure")
    artifact.attach(pipe)
    try:
        log(f"{row['method']} × {concept}: short prompts on the saved artifact")
        row["short_rate"] = _group_rate(_evaluate(pipe, rows_naming(rows, group), classify, settings), group)
    finally:
        artifact.detach(pipe)
    row["base_short_rate"] = _group_rate(base["short"], group)
    return True


def _attack_kept_row(row, pipe, out_dir, attacks, configs, classify, seeds, settings, log, forging_eval_steps=()):
    """Run on a kept row's saved artifact the attacks it lacks, and the key-forging curve when asked for and
    the row's key file is there. Returns whether the row changed."""
    missing = [a for a in attacks if a not in row.get("attacks", {}).get("attacks", {})]
    folder = os.path.join(out_dir, row.get("artifact") or "")
    curve = "key_forging" in attacks and "forging_curve" not in row and os.path.isfile(folder + KEY_SUFFIX)
    if not missing and not curve:
        return False
    artifact = _kept_artifact(row, out_dir, "attack")
    method = artifact.attach(pipe)
    try:
        log(f"{row['method']} × {row['concept']}: attacking the saved artifact ({', '.join(missing) or 'forging curve'})")
        found = _attack_rows(method, pipe, row["concept"], missing, configs, classify, seeds, settings, log) if missing else None
        if curve:
            from .methods.kpop.keys import load_key_for

            row["forging_curve"] = _forging_curve(method, pipe, row["concept"], load_key_for(folder + KEY_SUFFIX, artifact),
                                                  configs, classify, seeds, forging_eval_steps, settings, log)
    finally:
        artifact.detach(pipe)
    if found is not None:
        if "attacks" in row and row["attacks"].get("seeds") != found["seeds"]:
            raise VeilError(f"The {row['method']} × {row['concept']} row was attacked with seeds {row['attacks'].get('seeds')}, "
                            f"not {found['seeds']}; attack with those seeds or use another --out.")
        merged = row.setdefault("attacks", {key: value for key, value in found.items() if key != "attacks"})
        merged.setdefault("attacks", {}).update(found["attacks"])
    return True


def _key_rows(method, pipe, concepts, rows, classify, settings):
    """Rates (the mean over ``concepts``) with the right key, another concept's key and a random key of matched norm
    (keyed methods)."""
    if not hasattr(method, "bench_keys"):
        return {}
    concepts = members(concepts) if isinstance(concepts, str) else list(concepts)
    out = {}
    for label, key in method.bench_keys(concepts).items():
        with method.unlocked(pipe, key):
            out[f"target_rate_{label}"] = _group_rate(_evaluate(pipe, rows, classify, settings), concepts)
    return out


def _other_concept_key_rows(trained_keys, pipe, rows, classify, settings, log):
    """``target_rate_wrong_key`` for keyed methods fitted on one concept at a time: each artifact unlocked
    with the key trained for the next concept (relabelled), i.e. a real key, just not this one's."""
    from .methods.kpop.keys import Key

    concepts = list(trained_keys)
    if len(concepts) < 2:
        return
    for i, concept in enumerate(concepts):
        artifact_dir, _, row = trained_keys[concept]
        if row.get("target_rate_wrong_key") is not None:
            continue
        other = concepts[(i + 1) % len(concepts)]
        artifact = Artifact.load(artifact_dir)
        method = artifact.attach(pipe)
        try:
            with method.unlocked(pipe, Key({concept: trained_keys[other][1][other]})):
                rate = _evaluate(pipe, rows_naming(rows, concept), classify, settings)["rates"].get(concept)
        finally:
            artifact.detach(pipe)
        row["target_rate_wrong_key"] = rate
        row["wrong_key_from"] = other
        log(f"  {row['method']} {concept}: with {other!r}'s key {_fmt(rate)}")


def render_concept_images(concept, count=8, seed=0, model="shapes"):
    """``count`` rendered images of ``model``'s shapes world showing ``concept``, the other axes drawn at random."""
    import numpy as np

    W = model_world(model)
    kind, rng = W.CONCEPT_KIND[concept], np.random.default_rng(seed)
    images = []
    for _ in range(count):
        parts = {k: concept if k == kind else values[int(rng.integers(len(values)))] for k, values in W.AXES.items()}
        images.append(W.render(rng=rng, **parts))
    return images


def _concept_prompt(pipe, concept):
    """The canonical prompt naming ``concept`` alone, in the pipeline's shapes world."""
    W = model_world(getattr(pipe, "veil_model_name", "shapes"))
    return W.canonical_prompt(**{W.CONCEPT_KIND[concept]: concept})


def _attack_rows(method, pipe, concept, attacks, configs, classify, seeds, settings, log):
    """Attack success rate before and after each attack (rendered concept images, the canonical prompt)."""
    from .attacks import run_attacks

    images = render_concept_images(concept, model=getattr(pipe, "veil_model_name", "shapes"))
    return run_attacks(pipe, method, concept, images, attacks, classify, prompt=_concept_prompt(pipe, concept), seeds=seeds,
                       num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                       configs=configs, log=log)


def _forging_curve(method, pipe, concept, key, configs, classify, seeds, eval_steps, settings, log):
    """The concept rate against key-forging steps, next to the real key's (keyed methods; the canonical prompt)."""
    from .attacks import forging_curve

    images = render_concept_images(concept, model=getattr(pipe, "veil_model_name", "shapes"))
    curve = forging_curve(pipe, method, concept, images, classify, eval_steps=eval_steps,
                          reference_key=key.subset([concept]), config=(configs or {}).get("key_forging"),
                          prompt=_concept_prompt(pipe, concept), seeds=seeds,
                          num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"])
    reached = "not reached" if curve["steps_to_half"] is None else f"{curve['steps_to_half']} steps"
    log(f"  {method.name} {concept}: key forging, half recovery {reached}")
    return curve


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value):
    return "—" if value is None else f"{100 * value:.1f} %"


def _summary(row):
    return (f"  {row['method']} {row['concept']}: target {_fmt(row['base_target_rate'])} -> {_fmt(row['target_rate'])}, "
            f"synonyms {_fmt(row['synonym_rate'])}, paraphrase {_fmt(row['paraphrase_rate'])}, short {_fmt(row.get('short_rate'))}, "
            f"non-target {_fmt(row['nontarget_share'])} of base, {row['seconds']:.0f} s"
            + ("".join(f", {label} {_fmt(row[f'target_rate_{label}'])}" for label in ("with_key", "random_key")
                       if f"target_rate_{label}" in row)))


def markdown_table(report):
    """The bench table in markdown."""
    keyed = any("target_rate_with_key" in r for r in report["rows"])
    head = ["method", "concept", "target before", "target after", "synonyms (before → after)",
            "paraphrase (before → after)", "short prompts (before → after)", "other same-kind (share of base)", "min same-kind share",
            "other kinds (share)"]
    if keyed:
        head += ["with key", "wrong key", "random key"]
    head += ["seconds", "peak MB", "artifact MB"]
    lines = [f"Model `{report['model']}`, seeds {report['seeds']}, DDIM {report['num_inference_steps']} steps, "
             f"guidance {report['guidance_scale']}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["method"], r["concept"], _fmt(r["base_target_rate"]), _fmt(r["target_rate"]),
                 f"{_fmt(r['base_synonym_rate'])} → {_fmt(r['synonym_rate'])}",
                 f"{_fmt(r['base_paraphrase_rate'])} → {_fmt(r['paraphrase_rate'])}",
                 f"{_fmt(r.get('base_short_rate'))} → {_fmt(r.get('short_rate'))}",
                 _fmt(r["nontarget_share"]), _fmt(r["nontarget_min_share"]), _fmt(r["other_kinds_share"])]
        if keyed:
            cells += [_fmt(r.get("target_rate_with_key")), _fmt(r.get("target_rate_wrong_key")), _fmt(r.get("target_rate_random_key"))]
        cells += [f"{r['seconds']:.1f}", f"{r['peak_mem_mb'] or 0:.0f}", f"{r['artifact_mb']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    attacked = [r for r in report["rows"] if r.get("attacks")]
    if attacked:
        names = list(dict.fromkeys(n for r in attacked for n in r["attacks"]["attacks"]))
        lines += ["", "Attack success rate (share of images labelled as the concept), before → after each attack:", "",
                  "| method | concept | before | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
        for r in attacked:
            entries = r["attacks"]["attacks"]
            cells = [_fmt(entries[n].get("attack_success_rate")) if n in entries else "—" for n in names]
            lines.append(f"| {r['method']} | {r['concept']} | {_fmt(r['attacks']['before'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _extra_tables(report["rows"])) + "\n"


def _before_after(row, name):
    return f"{_fmt(row.get(f'base_{name}'))} → {_fmt(row.get(name))}"


def _extra_tables(rows):
    """The implicit-prompt, style and many-concept tables, each when some row has its fields."""
    lines = []
    implicit = [r for r in rows if r.get("base_implicit_rate") is not None]
    if implicit:
        lines += ["", "Implicit prompts (the shape named by an everyday object, never by a shape word), before → after:", "",
                  "| method | concept | training objects | held-out objects |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['concept']} | {_before_after(r, 'implicit_rate')} | "
                  f"{_before_after(r, 'heldout_implicit_rate')} |" for r in implicit]
    styles = [r for r in rows if "style_shape_rate" in r]
    if styles:
        lines += ["", "Style rows (the prompts naming the erased style): the style and the shapes drawn in it, before → after:", "",
                  "| method | concept | style | shapes (mean) | lowest shape (share of base) |", "|---|---|---|---|---|"]
        for r in styles:
            name, share = lowest_share(r.get("style_shape_shares") or {})
            lines.append(f"| {r['method']} | {r['concept']} | {_before_after(r, 'style_rate')} | "
                         f"{_before_after(r, 'style_shape_rate')} | {name or '—'} {_fmt(share)} |")
    groups = [r for r in rows if "min_other_share" in r]
    if groups:
        lines += ["", "Many concepts at once (a group row: one artifact erasing all of them): the erased concepts' mean "
                  "rate and the lowest share of base among every other concept:", "",
                  "| method | concepts | target (mean) | each erased concept | lowest other concept (share of base) | seconds | "
                  "peak MB | artifact MB |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {len(members(r['concept']))}: {r['concept']} | {_fmt(r['target_rate'])} | "
                  + ", ".join(f"{c} {_fmt(v)}" for c, v in (r.get("target_rates") or {r["concept"]: r["target_rate"]}).items())
                  + f" | {r['lowest_other'] or '—'} {_fmt(r['min_other_share'])} | {r['seconds']:.1f} | "
                  f"{r['peak_mem_mb'] or 0:.0f} | {r['artifact_mb']:.2f} |" for r in groups]
    return lines
