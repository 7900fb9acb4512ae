"""``veil eval``: generate a task's prompts (optionally with an artifact and key) and score them."""

from .common import add_model_flags, add_output_flags


def register(sub):
    parser = sub.add_parser("eval", help="Evaluate a model (and artifact) on a task: per-concept rates, per-image CSV.")
    parser.add_argument("--task", default="shapes_concepts", help="shapes_concepts, shapes_synonyms or shapes_paraphrase.")
    parser.add_argument("--prompts", help="CSV with columns prompt, seed, shape, colour, background (replaces the task's prompts).")
    parser.add_argument("--artifact", help="Artifact folder to attach.")
    parser.add_argument("--key", help="KPOP key file: evaluate unlocked.")
    parser.add_argument("--seeds", default="0,1", help="Seeds for the shapes_concepts / shapes_synonyms prompt sets.")
    parser.add_argument("--num-inference-steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    add_model_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(run=run)


def run(args):
    import contextlib
    import csv
    import io
    import os

    from .._io import atomic_dir
    from ..artifact import load_artifact
    from ..errors import VeilError
    from ..evaluation.concept_rate import evaluate_prompts, score_rows
    from ..evaluation.grid import labelled_grid
    from ..evaluation.shapes_tasks import load_prompt_csv, task_rows
    from ..shapes.classifier import classify
    from .common import check_output, load_model
    from .generate import parse_seeds

    check_output(args.out, args.overwrite)
    rows = load_prompt_csv(args.prompts) if args.prompts else task_rows(args.task, parse_seeds(args.seeds))
    artifact = load_artifact(args.artifact) if args.artifact else None
    key = None
    if args.key:
        if artifact is None:
            raise VeilError("--key unlocks an artifact; pass the artifact with --artifact as well.")
        from ..keys import load_key_for

        key = load_key_for(args.key, artifact)
    pipe = load_model(args)
    context = contextlib.nullcontext()
    if artifact is not None:
        method = artifact.attach(pipe)
        if key is not None:
            context = method.unlocked(pipe, key)
    with context:
        result = evaluate_prompts(pipe, rows, classify, num_inference_steps=args.num_inference_steps,
                                  guidance_scale=args.guidance_scale, progress=True)
    if artifact is not None:
        artifact.detach(pipe)

    summary = {
        "task": "custom" if args.prompts else args.task,
        "prompts": args.prompts,
        "model": args.model,
        "artifact": args.artifact,
        "unlocked": key is not None,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "images": len(rows),
        "rates": result["rates"],
        "kinds": result["kinds"],
        "counts": result["counts"],
    }
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        import json

        with open(os.path.join(tmp, "results.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["prompt", "seed", "shape", "colour", "background", "pred_shape", "pred_colour", "pred_background", "correct"])
        for i, (row, correct) in enumerate(zip(rows, score_rows(rows, result["labels"]))):
            named = [v for v in correct.values() if v is not None]
            writer.writerow([row["prompt"], row["seed"], row["shape"] or "", row["colour"] or "", row["background"] or "",
                             result["labels"]["shape"][i], result["labels"]["colour"][i], result["labels"]["background"][i],
                             int(all(named)) if named else ""])
        with open(os.path.join(tmp, "images.csv"), "w") as handle:
            handle.write(buffer.getvalue())
        first = result["images"][:48]
        labelled_grid([first[i : i + 8] for i in range(0, len(first), 8)], [""] * ((len(first) + 7) // 8), label_width=8).save(
            os.path.join(tmp, "samples.png"))
    print(f"{summary['task']}: {len(rows)} images; " + ", ".join(f"{k} {v:.1%}" for k, v in result["kinds"].items()))
    for concept, rate in sorted(result["rates"].items()):
        print(f"  {concept:<10} {rate:6.1%}  (n={result['counts'][concept]})")
    print(f"results in {args.out}")
