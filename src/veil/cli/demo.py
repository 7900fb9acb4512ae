"""``veil demo``: hide one shapes concept with KPOP (or erase it with another method) end to end.

Writes the public artifact, the key (for keyed methods), a grid with the original / hidden /
unlocked images for the same prompts and seeds, and the concept rates, then prints the rates.
"""

from .common import add_model_flags, positive_int


def register(sub):
    parser = sub.add_parser(
        "demo", help="Hide a shapes concept with KPOP end to end: public artifact, key, original/hidden/unlocked grid, rates."
    )
    parser.add_argument("--concept", default="circle", help="A shape of the model's shapes world (circle, square, triangle, ...).")
    parser.add_argument("--method", default="kpop", help="kpop (default: hide behind a key) or an eraser such as esd.")
    parser.add_argument("--steps", type=positive_int, default=None, help="Training steps (default: the method's shapes preset).")
    parser.add_argument("--out", default="veil-demo", help="Output folder (public/, key/, grid.png, rates.json).")
    parser.add_argument("--overwrite", action="store_true")
    add_model_flags(parser)
    parser.set_defaults(run=run)


def run(args):
    import os

    from .._io import atomic_dir, write_json
    from ..artifact import Artifact
    from ..errors import VeilError
    from ..evaluation.concept_rate import evaluate_prompts
    from ..evaluation.grid import labelled_grid
    from ..methods.kpop.keys import save_key
    from ..methods.presets import preset_for
    from ..registry import get_method
    from ..shapes import model_world
    from ..shapes.classifier import classifier_for
    from ..training.loop import fit
    from .common import check_output, load_model, resolve_device

    check_output(args.out, args.overwrite)
    resolve_device(args.device)
    W = model_world(args.model)  # the model's shapes world: a shapes build's own, else the bundled one
    if args.concept not in W.SHAPES:
        raise VeilError(f"The demo hides a shape; {args.concept!r} is not one of {', '.join(W.SHAPES)}.")
    classify = classifier_for(args.model)
    method_cls = get_method(args.method)
    settings = preset_for(method_cls, args.model, [args.concept])
    if args.steps is not None:
        settings["max_train_steps"] = args.steps
    keyed = hasattr(method_cls, "unlocked")
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        pipe = load_model(args)
        method = method_cls(method_cls.config_class(concepts=[args.concept], **settings))
        verb = "hide" if keyed else "erase"
        print(f"[1/3] {method_cls.name}: {verb} {args.concept!r} ({settings.get('max_train_steps', 'default')} steps)")
        cost = fit(method, pipe)
        cost = {k: v for k, v in cost.items() if k != "losses"}
        artifact = Artifact.from_method(method, pipe, cost)
        artifact.save(os.path.join(tmp, "public"))
        if keyed:
            # The demo's key is not encrypted; `veil hide --passphrase-file` encrypts a real one.
            save_key(method.key, os.path.join(tmp, "key", f"{args.concept}.veilkey"), artifact=artifact)

        print("[2/3] concept rates on canonical and short prompts (original, hidden" + (", unlocked with the key)" if keyed else ")"))
        other = "square" if args.concept != "square" else "circle"
        rows = [r for r in W.canonical_prompts(seeds=(0,)) if r["shape"] in (args.concept, other)]
        variants = [("original", method.disabled(pipe)), ("hidden" if keyed else "erased", _null())]
        if keyed:
            variants.append(("unlocked", method.unlocked(pipe, routed=True)))  # as a key holder draws: the key on its concept's prompts only
        # "circle", "a circle", "a red circle", "a circle on a dotted background", ...
        short_rows = [r for r in W.short_prompts(seeds=(0,)) if r["shape"] == args.concept]
        short = f"{args.concept}, short"
        report, images = {}, {}
        for name, context in variants:
            with context:
                result = evaluate_prompts(pipe, rows, classify, num_inference_steps=20)
                short_rate = evaluate_prompts(pipe, short_rows, classify, num_inference_steps=20)["rates"][args.concept]
            report[name] = {**{c: round(result["rates"][c], 3) for c in (args.concept, other)}, short: round(short_rate, 3)}
            images[name] = result["images"]
        if hasattr(W, "STYLES"):  # shapes world 2: the concept in each style, and the other shape twice
            showcase = [next(r["prompt"] for r in rows if r["shape"] == args.concept and r["style"] == t) for t in W.STYLES]
            showcase += [r["prompt"] for r in rows if r["shape"] == other][:2]
        else:
            showcase = [W.canonical_prompt(args.concept, c, b) for c, b in
                        (("red", "plain"), ("blue", "striped"), ("green", "dotted"), ("yellow", "checkered"), ("purple", "plain"))]
            showcase += [W.canonical_prompt(other, c, b) for c, b in (("orange", "plain"), ("blue", "dotted"))]
        index = {r["prompt"]: i for i, r in enumerate(rows)}
        showcase = [p for p in showcase if p in index]
        grid = labelled_grid(
            [[images[name][index[p]] for p in showcase] for name, _ in variants],
            [name for name, _ in variants],
            column_labels=[p.split(" ", 1)[1].replace(" on a ", "/").replace(" background", "") for p in showcase],
            label_width=90,
        )
        grid.save(os.path.join(tmp, "grid.png"))
        write_json(os.path.join(tmp, "rates.json"), {"method": method_cls.name, "concept": args.concept, "cost": cost, "rates": report})

    print("[3/3] done")
    print(f"  {'':<10}{args.concept:>10}{other:>10}{short:>16}")
    for name, _ in variants:
        print(f"  {name:<10}{report[name][args.concept]:>10.0%}{report[name][other]:>10.0%}{report[name][short]:>16.0%}")
    print(f"  training took {cost.get('seconds', 0):.0f} s; grid: {os.path.join(args.out, 'grid.png')}")
    if keyed:
        if report["unlocked"][other] < 0.9 * report["original"][other]:
            print(f"  (the routed key reached {other} prompts: attached to a {other} prompt it draws a {args.concept})")
        print(f"  public artifact: {os.path.join(args.out, 'public')}; key: {os.path.join(args.out, 'key', args.concept + '.veilkey')}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
