"""``veil eval``: generate a task's prompts (original, with an artifact, unlocked with its key) and score them."""

from .common import add_key_routing_flag, add_model_flags, add_output_flags, finite_float, positive_int


def register(sub):
    parser = sub.add_parser("eval", help="Evaluate a model (and artifact) on a task: results.json, per-image CSV, runs database.")
    parser.add_argument("--task", default="shapes_concepts",
                        help="A task name (veil ls tasks: shapes_concepts, shapes_paraphrase, shapes_short, shapes_implicit, shapes_styles, i2p_nudity, imagenette, artists, "
                             "cartoons, coco_quality) or a task YAML file.")
    parser.add_argument("--prompts", help="Local copy of the task's prompt CSV (third-party tasks need it; for shapes tasks it replaces the built-in prompts).")
    parser.add_argument("--artifact", help="Artifact folder: adds the 'erased' variant.")
    parser.add_argument("--key", help="KPOP key file for the artifact: adds the 'unlocked' variant.")
    parser.add_argument("--passphrase-file", help="File holding the key's passphrase (or set VEIL_KEY_PASSPHRASE).")
    add_key_routing_flag(parser)
    parser.add_argument("--seeds", help="Seeds for the built-in shapes prompt sets (default 0,1).")
    parser.add_argument("--num-inference-steps", type=positive_int, help="Denoising steps (default: the task's).")
    parser.add_argument("--guidance-scale", type=finite_float, help="Guidance scale for every row (default: each row's own, else the task's).")
    parser.add_argument("--batch-size", type=positive_int, help="Images per pipeline call (default: the task's).")
    parser.add_argument("--limit", type=positive_int, help="Only the first N prompt rows (quick runs).")
    parser.add_argument("--targets", help="Comma-separated erased concepts (default: the artifact's concepts).")
    parser.add_argument("--variants", help="Comma-separated subset of original,erased,unlocked (default: all that apply).")
    parser.add_argument("--scorer", action="append", default=[], metavar="NAME=PATH",
                        help="Local weights of a scorer: classifier=, nudenet=, clip=, lpips=, inception=. Repeatable.")
    parser.add_argument("--reference", help="Folder of real images for FID (default: the original model's images).")
    parser.add_argument("--rescore", action="store_true", help="Score an existing evaluation folder's images again (generating only what is missing).")
    add_model_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(run=run)


def parse_scorers(items):
    from ..errors import VeilError

    scorers = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise VeilError(f"--scorer takes NAME=PATH, got {item!r}.")
        scorers[name.strip()] = path.strip()
    return scorers


def run(args):
    from .common import open_artifact
    from ..errors import VeilError
    from ..evaluation.generate import shard
    from ..evaluation.harness import evaluate
    from ..evaluation.runs import connect
    from .common import check_output, resolve_device
    from .generate import parse_seeds

    check_output(args.out, args.overwrite, exists_ok=True)  # an unfinished evaluation there resumes
    resolve_device(args.device)
    connect().close()  # the runs database is written last: refused now, not after the images
    seeds = parse_seeds(args.seeds) if args.seeds else None
    artifact = open_artifact(args.artifact) if args.artifact else None
    if artifact is not None:
        artifact.path = args.artifact
    key = None
    if args.key:
        if artifact is None:
            raise VeilError("--key unlocks an artifact; pass the artifact with --artifact as well.")
        from ..methods.kpop.keys import load_key_for, resolve_passphrase

        key = load_key_for(args.key, artifact, passphrase=resolve_passphrase(args.passphrase_file))
    _, num_processes = shard()
    if args.device == "auto" and num_processes > 1:  # under accelerate launch: this process's own device
        from accelerate import PartialState

        args.device = str(PartialState().device)
    args.device = resolve_device(args.device)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    results = evaluate(
        args.task, args.out, pipe=None, model=args.model, device=args.device, artifact=artifact, key=key,
        prompts=args.prompts, seeds=seeds, limit=args.limit, targets=targets, scorers=parse_scorers(args.scorer),
        reference=args.reference, variants=args.variants, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, batch_size=args.batch_size, overwrite=args.overwrite, rescore=args.rescore,
        key_routing=args.key_routing,
    )
    if results is None:  # a non-main process of a sharded run: the main process scores and reports
        return 0
    for variant, by_metric in results["metrics"].items():
        rates = (by_metric.get("concept_rate") or {}).get("rates")
        if rates:
            counts = by_metric["concept_rate"]["counts"]
            print(f"  {variant}: " + ", ".join(f"{c} {r:.0%} (n={counts[c]})" for c, r in sorted(rates.items())))
    print(f"results in {args.out} (run {results.get('run_id')})")
