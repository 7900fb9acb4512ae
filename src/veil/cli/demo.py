"""``veil demo``: erase one shapes concept, show original vs erased side by side, print concept rates."""

from .common import add_model_flags


def register(sub):
    parser = sub.add_parser("demo", help="Erase a shapes concept end to end: artifact, grid PNG and concept rates.")
    parser.add_argument("--concept", default="circle", help="A shapes-world shape (circle, square, triangle, star, cross).")
    parser.add_argument("--method", default="esd")
    parser.add_argument("--steps", type=int, default=None, help="Training steps (default: the method's shapes preset).")
    parser.add_argument("--out", default="veil-demo", help="Output folder (artifact/, grid.png, rates.json).")
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
    from ..methods.presets import preset_for
    from ..registry import get_method
    from ..shapes.classifier import classify
    from ..shapes.data import SHAPES, canonical_prompt, canonical_prompts
    from ..training.loop import fit_method
    from .common import load_model

    if args.concept not in SHAPES:
        raise VeilError(f"The demo erases a shape; {args.concept!r} is not one of {', '.join(SHAPES)}.")
    method_cls = get_method(args.method)
    settings = preset_for(method_cls.name, args.model)
    if args.steps is not None:
        settings["max_train_steps"] = args.steps
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        pipe = load_model(args)
        method = method_cls(method_cls.config_class(concepts=[args.concept], **settings))
        print(f"[1/3] {method_cls.name} on {args.concept!r} ({settings.get('max_train_steps', 'default')} steps)")
        cost = fit_method(method, pipe)
        cost = {k: v for k, v in cost.items() if k != "losses"}
        Artifact.from_method(method, pipe, cost).save(os.path.join(tmp, "artifact"))

        print("[2/3] concept rates on canonical prompts (original vs erased)")
        other = "square" if args.concept != "square" else "circle"
        rows = [r for r in canonical_prompts(seeds=(0,)) if r["shape"] in (args.concept, other)]
        report = {}
        images = {}
        for name, context in (("original", method.disabled(pipe)), ("erased", _null())):
            with context:
                result = evaluate_prompts(pipe, rows, classify, num_inference_steps=20)
            report[name] = {c: round(result["rates"][c], 3) for c in (args.concept, other)}
            images[name] = result["images"]
        showcase = [canonical_prompt(args.concept, c, "plain") for c in ("red", "blue", "green")]
        showcase.append(canonical_prompt(other, "yellow", "striped"))
        index = {r["prompt"]: i for i, r in enumerate(rows)}
        grid_rows, labels = [], []
        for prompt in showcase:
            for name in ("original", "erased"):
                grid_rows.append([images[name][index[prompt]]] if prompt in index else [])
                labels.append(f"{name}: {prompt}")
        labelled_grid(grid_rows, labels).save(os.path.join(tmp, "grid.png"))
        write_json(os.path.join(tmp, "rates.json"), {"concept": args.concept, "cost": cost, "rates": report})

    print("[3/3] done")
    print(f"  {'':<10}{args.concept:>10}{other:>10}")
    for name in ("original", "erased"):
        print(f"  {name:<10}{report[name][args.concept]:>10.0%}{report[name][other]:>10.0%}")
    print(f"  training took {cost.get('seconds', 0):.0f} s; grid: {os.path.join(args.out, 'grid.png')}")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
