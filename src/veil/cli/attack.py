"""``veil attack``: attack a hidden or erased concept and measure how much of it comes back."""

from .common import add_model_flags, add_output_flags, finite_float, positive_float, positive_int


def register(sub):
    parser = sub.add_parser("attack", help="Attack an artifact's concept (prompt search, Ring-A-Bell, concept inversion, key forging).")
    parser.add_argument("--attack", required=True, help="prompt_search, ring_a_bell, concept_inversion or key_forging.")
    parser.add_argument("--artifact", help="Artifact folder to attack; without it the base model is attacked (the reference).")
    parser.add_argument("--concept", required=True, help="The hidden or erased concept.")
    parser.add_argument("--prompt", help="Prompt naming the concept (default: 'a CONCEPT').")
    add_model_flags(parser)
    add_output_flags(parser)
    parser.add_argument("--steps", type=positive_int, help="Attack steps (max_train_steps).")
    parser.add_argument("--lr", type=positive_float, help="Attack learning rate.")
    parser.add_argument("--tokens", type=positive_int, help="Attack tokens (num_tokens, or num_vectors for concept_inversion).")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="One attack setting; repeatable.")
    parser.add_argument("--images", default="original",
                        help="Concept images: 'original' (drawn by the base model from the prompt), 'render' (shapes renderer) or a folder of images.")
    parser.add_argument("--num-images", type=positive_int, default=8, help="Concept images to draw or render.")
    parser.add_argument("--seeds", default="0,1,2,3", help="Seeds of the scored images, per candidate prompt.")
    parser.add_argument("--num-inference-steps", type=positive_int, default=20)
    parser.add_argument("--guidance-scale", type=finite_float, default=3.0)
    parser.add_argument("--classifier", default="auto", choices=("auto", "shapes", "none"),
                        help="Scorer of the attack success rate: the shapes classifier (a shapes build's own, else the bundled one), or none (images only); auto: shapes on a shapes model.")
    parser.add_argument("--eval-steps", help="key_forging: comma-separated steps at which a second forging run measures its key (the curve).")
    parser.add_argument("--key", help="key_forging: the real key, for the curve's reference row only; the attack never reads it.")
    parser.add_argument("--passphrase-file", help="File holding the reference key's passphrase (or set VEIL_KEY_PASSPHRASE).")
    parser.set_defaults(run=run)


def attack_config(attack_cls, args):
    """The attack's config from --steps, --lr, --tokens and --set."""
    import dataclasses

    from ..errors import VeilError
    from .common import parse_value

    fields = {f.name for f in dataclasses.fields(attack_cls.config_class)}
    values = {}
    for item in args.set:
        if "=" not in item:
            raise VeilError(f"--set takes field=value, got {item!r}.")
        name, value = item.split("=", 1)
        values[name.strip()] = parse_value(value)
    if args.steps is not None:
        values["max_train_steps"] = args.steps
    if args.lr is not None:
        values["learning_rate"] = args.lr
    if args.tokens is not None:
        name = next((n for n in ("num_tokens", "num_vectors") if n in fields), None)
        if name is None:
            raise VeilError(f"The {attack_cls.name} attack has no token budget; leave out --tokens.")
        values[name] = args.tokens
    try:
        return attack_cls.config_class.from_dict(values)
    except TypeError as error:
        raise VeilError(f"Bad {attack_cls.name} settings: {error}.") from None


def concept_images(args, pipe, prompt):
    """The concept images the attacks learn from, from the source --images names."""
    import os

    from ..errors import VeilError

    if args.num_images <= 0:
        raise VeilError(f"--num-images must be greater than 0, got {args.num_images}.")
    if args.images == "original":
        from ..evaluation.sampling import generate

        seeds = [10_000 + i for i in range(args.num_images)]  # apart from the scored seeds
        return generate(pipe, [prompt] * len(seeds), seeds, num_inference_steps=args.num_inference_steps,
                        guidance_scale=args.guidance_scale)
    if args.images == "render":
        from ..bench import render_concept_images
        from ..shapes import model_world

        if args.concept not in model_world(args.model).CONCEPT_KIND:
            raise VeilError(f"--images render draws shapes-world concepts, and {args.concept!r} is not one; pass a folder of images.")
        return render_concept_images(args.concept, args.num_images, model=args.model)
    if not os.path.isdir(args.images):
        raise VeilError(f"--images {args.images!r} is neither 'original', 'render' nor a folder of images.")
    from PIL import Image

    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
    if not names:
        raise VeilError(f"The folder {args.images!r} holds no .png or .jpg images of the concept.")
    return [Image.open(os.path.join(args.images, n)).convert("RGB") for n in names]


def run(args):
    import json
    import os

    from safetensors.torch import save_file

    from .._io import atomic_dir
    from ..attacks import forging_curve, get_attack, run_attacks
    from ..attacks.base import concept_prompt
    from ..errors import VeilError
    from ..evaluation.grid import labelled_grid
    from .common import check_concept, check_output, load_model, open_artifact, resolve_device
    from .generate import parse_seeds

    check_output(args.out, args.overwrite)
    resolve_device(args.device)
    check_concept(args.concept, "--concept")
    attack_cls = get_attack(args.attack)
    config = attack_config(attack_cls, args)
    seeds = parse_seeds(args.seeds)
    eval_steps = parse_seeds(args.eval_steps) if args.eval_steps else None
    if eval_steps is not None and attack_cls.name != "key_forging":
        raise VeilError("--eval-steps measures the key-forging curve; use it with --attack key_forging.")
    if args.key and eval_steps is None:
        raise VeilError("--key is the reference row of the key-forging curve; give --eval-steps as well.")
    artifact = open_artifact(args.artifact) if args.artifact else None
    if artifact is not None and args.concept not in artifact.concepts:
        raise VeilError(f"The artifact hides {', '.join(map(repr, artifact.concepts))}, not {args.concept!r}; pass one of those with --concept.")
    if attack_cls.name == "key_forging" and (artifact is None or not attack_cls(config).applies_to(artifact.build_method())):
        made = artifact.method_name if artifact is not None else "no artifact"
        raise VeilError(f"Key forging attacks an artifact written by veil hide (kpop), but got {made}; pass --artifact with one.")
    key = None
    if args.key:  # the evaluator's reference, checked now rather than after the attack; never handed to it
        from ..methods.kpop.keys import load_key_for, resolve_passphrase

        key = load_key_for(args.key, artifact, passphrase=resolve_passphrase(args.passphrase_file))
    classify = None
    from ..shapes import build_folder

    if args.classifier == "shapes" or (args.classifier == "auto" and build_folder(args.model) is not None):
        from ..shapes.classifier import classifier_for

        classify = classifier_for(args.model)  # a shapes build's own classifier, else the bundled one

    prompt = concept_prompt(args.concept, args.prompt)
    pipe = load_model(args)
    if artifact is not None:
        artifact.check_base(pipe)
    images = concept_images(args, pipe, prompt)  # before the artifact is attached: the original model's
    method = artifact.attach(pipe) if artifact is not None else None
    try:
        report = run_attacks(pipe, method, args.concept, images, [attack_cls(config)], classify, prompt=prompt, seeds=seeds,
                             num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                             return_images=True, return_results=True, log=print)
        if eval_steps is not None:
            report["forging_curve"] = forging_curve(
                pipe, method, args.concept, images, classify, eval_steps=eval_steps, reference_key=key, config=config,
                prompt=prompt, seeds=seeds, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
    finally:
        if artifact is not None:
            artifact.detach(pipe)
    shown, results = report.pop("images"), report.pop("results")
    rows, labels = [shown["before"]], [f"{artifact.method_name if artifact else 'base'}: {prompt}"]
    for label, generated in shown.get(attack_cls.name, []):
        rows.append(generated)
        labels.append(label)
    report["artifact"] = os.path.abspath(args.artifact) if args.artifact else None
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        with open(os.path.join(tmp, "attack.json"), "w") as handle:
            json.dump(report, handle, indent=2, default=str)
            handle.write("\n")
        labelled_grid(rows, labels, [f"seed {s}" for s in seeds]).save(os.path.join(tmp, "grid.png"))
        if attack_cls.name in results:
            save_file(results[attack_cls.name].tensors(), os.path.join(tmp, "attack.safetensors"))
    entry = report["attacks"][attack_cls.name]
    rate = entry.get("attack_success_rate")
    summary = "" if rate is None else f" attack success {100 * report['before']:.1f} % -> {100 * rate:.1f} %;"
    cost = entry["cost"]
    print(f"{attack_cls.name} on {args.concept!r}:{summary} {cost['steps']} steps in {cost['seconds']:.1f} s; written to {args.out}")
