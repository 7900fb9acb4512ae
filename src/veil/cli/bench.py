"""``veil bench``: methods × concepts on one model, one protocol → bench.json, bench.md, grid.png."""

from .common import add_model_flags, finite_float, positive_int


def register(sub):
    parser = sub.add_parser("bench", help="Fit every method on every concept and measure them with one protocol.")
    parser.add_argument("--methods", default="esd", help="Comma-separated method names.")
    parser.add_argument("--concepts", default="circle,square",
                        help="Comma-separated shapes-world concepts; a+b is one row erasing both in one artifact.")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--num-inference-steps", type=positive_int, default=20)
    parser.add_argument("--guidance-scale", type=finite_float, default=3.0)
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE", help="Override a preset; repeatable.")
    parser.add_argument("--attacks", default="", help="Comma-separated attacks run on every method × concept (see veil attack).")
    parser.add_argument("--attack-set", action="append", default=[], metavar="ATTACK.FIELD=VALUE", help="An attack setting; repeatable.")
    parser.add_argument("--forging-eval-steps", default="0,25,50,100,200",
                        help="With --attacks key_forging: comma-separated steps at which keyed methods' forged keys are measured (the curve).")
    parser.add_argument("--out", default="bench/results/shapes", help="Output folder.")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the rows an earlier bench in --out finished (same model, seeds and sampling); fit only the rest.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier bench in --out.")
    add_model_flags(parser)
    parser.set_defaults(run=run)


def run(args):
    from ..bench import check_attacks, check_settings, members, run_bench
    from ..errors import VeilError
    from ..shapes import model_world
    from ..registry import get_method, list_methods
    from ..shapes.classifier import classifier_for
    from .common import check_output, load_model, parse_dotted_settings, resolve_device
    from .generate import parse_seeds

    check_output(args.out, args.overwrite, exists_ok=True)  # an earlier bench there is kept (--resume) or refused below
    resolve_device(args.device)
    methods = [get_method(m.strip()).name for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise VeilError(f"--methods is empty; give one or more of {', '.join(list_methods())}, comma-separated.")
    CONCEPT_KIND = model_world(args.model).CONCEPT_KIND  # the model's shapes world (a build's own, else the bundled one)
    concepts = [c.strip() for c in args.concepts.split(",") if c.strip()]
    if not concepts:
        raise VeilError(f"--concepts is empty; give one or more of {', '.join(CONCEPT_KIND)}, comma-separated.")
    for concept in concepts:
        for member in members(concept):
            if member not in CONCEPT_KIND:
                raise VeilError(f"{member!r} is not a shapes-world concept; use one of {', '.join(CONCEPT_KIND)}.")
    overrides = parse_dotted_settings(args.set, "--set", lambda name: get_method(name).name)
    unused = sorted(set(overrides) - set(methods))
    if unused:
        raise VeilError(f"--set changes {unused[0]}, which is not in --methods; add it there or leave that setting out.")
    check_settings(methods, concepts, args.model, overrides)  # every method × concept, before minutes of fitting
    seeds = parse_seeds(args.seeds)
    from ..attacks import get_attack

    attacks = [get_attack(a).name for a in args.attacks.split(",") if a.strip()]
    check_attacks(concepts, attacks)
    attack_configs = parse_dotted_settings(args.attack_set, "--attack-set", lambda name: get_attack(name).name)
    from ..attacks import make_attack

    for name in attacks:  # refuse bad attack settings now, not after minutes of fitting
        make_attack(name, attack_configs.get(name))
    forging_eval_steps = parse_seeds(args.forging_eval_steps)
    if args.resume and args.overwrite:
        raise VeilError("--resume keeps an earlier bench and --overwrite replaces it; give one of them.")

    pipe = load_model(args)
    report = run_bench(pipe, methods, concepts, args.out, classify=classifier_for(args.model), seeds=seeds,
                       num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, overrides=overrides,
                       attacks=attacks, attack_configs=attack_configs, forging_eval_steps=forging_eval_steps,
                       resume=args.resume, overwrite=args.overwrite)
    from ..bench import markdown_table

    print(markdown_table(report))
    print(f"bench written to {args.out}")
