"""``veil generate``: images for prompts, original and with an artifact side by side, as a labelled grid,
and each image at its full size in a folder beside it."""

from .common import add_key_routing_flag, add_model_flags, add_output_flags, finite_float, positive_int


def register(sub):
    parser = sub.add_parser("generate", help="Generate a labelled image grid, with and without an artifact.")
    parser.add_argument("--prompt", action="append", help="Prompt; repeat for several. Default: the artifact's concepts.")
    parser.add_argument("--artifact", help="Artifact folder: adds a row with it attached under each original row.")
    parser.add_argument("--key", help="KPOP key file: adds an 'unlocked' row.")
    parser.add_argument("--passphrase-file", help="File holding the key's passphrase (or set VEIL_KEY_PASSPHRASE).")
    add_key_routing_flag(parser)
    parser.add_argument("--seeds", default="0,1,2,3", help="Comma-separated seeds, one column each.")
    parser.add_argument("--num-inference-steps", type=positive_int, default=25)
    parser.add_argument(
        "--guidance-scale", type=finite_float,
        help="Classifier-free guidance; default: the model's own (3.0 for the shapes world, 7.5 for Stable Diffusion).",
    )
    parser.add_argument("--resolution", type=positive_int, help="Image side in pixels (default: the model's own).")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="Images per pipeline call.")
    add_model_flags(parser)
    add_output_flags(parser, what="PNG file of the grid; the full-size images go to the folder of that name without .png")
    parser.set_defaults(run=run)


def parse_seeds(text):
    from ..errors import VeilError

    from .common import MAX_SEED

    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise VeilError(f"--seeds takes comma-separated integers, got {text!r}.") from None
    wrong = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if wrong:
        raise VeilError(f"The seed {wrong[0]} is out of range; seeds are whole numbers from 0 to {MAX_SEED}.")
    if not seeds:
        raise VeilError("--seeds is empty; give at least one seed, e.g. --seeds 0,1,2,3.")
    return seeds


def default_guidance_scale(model):
    """The guidance a model is sampled with by default: the shapes world's 3.0, Stable Diffusion's 7.5."""
    from ..models import DEFAULT_MODEL

    return 3.0 if (model or DEFAULT_MODEL) in ("shapes", "tiny") else 7.5


def images_folder(out):
    """Where the full-size images of the grid ``out`` go: ``grid.png`` → ``grid/``."""
    import os

    root, extension = os.path.splitext(out)
    return root if extension.lower() == ".png" and root else f"{out}-images"


def save_images(rows, labels, seeds, folder, overwrite=False):
    """Each image of ``rows`` as ``{row:02d}-{label}-seed{seed}.png`` in ``folder``, written atomically."""
    import os
    import re

    from .._io import atomic_dir

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for i, (images, label) in enumerate(zip(rows, labels)):
            slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")[:60] or "row"
            for seed, image in zip(seeds, images):
                image.save(os.path.join(tmp, f"{i:02d}-{slug}-seed{seed}.png"), format="PNG")
    return folder


def comparison_rows(pipe, prompts, seeds, artifact=None, key=None, num_inference_steps=25, guidance_scale=3.0, routed=True,
                    resolution=None, batch_size=32):
    """Rows of images and labels: original, then with the artifact, then unlocked with the key (``routed``: only
    on prompts about its concepts)."""
    from ..evaluation.sampling import generate

    def images_for(prompt):
        return generate(pipe, [prompt] * len(seeds), seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        resolution=resolution, batch_size=batch_size)

    variants = [("original", None)]
    if artifact is not None:
        variants.append((artifact.method_name, "attach"))
        if key is not None:
            variants.append(("unlocked", "key"))
    rows, labels = [], []
    for prompt in prompts:
        for name, mode in variants:
            if mode is None:
                rows.append(images_for(prompt))
            else:
                method = artifact.attach(pipe)
                try:
                    if mode == "key":
                        with method.unlocked(pipe, key, routed=routed):
                            rows.append(images_for(prompt))
                    else:
                        rows.append(images_for(prompt))
                finally:
                    artifact.detach(pipe)
            labels.append(f"{name}: {prompt}")
    return rows, labels


def run(args):
    from ..errors import VeilError
    from ..evaluation.grid import labelled_grid, save_png
    from ..evaluation.sampling import warn_if_truncated
    from .common import check_output, load_model, open_artifact, resolve_device

    seeds = parse_seeds(args.seeds)
    if args.num_inference_steps <= 0:
        raise VeilError(f"--num-inference-steps must be greater than 0, got {args.num_inference_steps}.")
    check_output(args.out, args.overwrite, kind="file")
    folder = images_folder(args.out)
    check_output(folder, args.overwrite, flag="--out (its images folder)")
    resolve_device(args.device)
    artifact = open_artifact(args.artifact) if args.artifact else None
    key = None
    if args.key:
        if artifact is None:
            raise VeilError("--key unlocks an artifact; pass the artifact with --artifact as well.")
        from ..methods.kpop.keys import load_key_for, resolve_passphrase

        key = load_key_for(args.key, artifact, passphrase=resolve_passphrase(args.passphrase_file))
    prompts = args.prompt or ([f"a {c}" for c in artifact.concepts] if artifact else None)
    if not prompts:
        raise VeilError("Nothing to draw; give a prompt with --prompt, e.g. --prompt \"a red circle\".")
    if any(not p.strip() for p in prompts):
        raise VeilError("A --prompt is empty; give some text to draw.")
    guidance_scale = default_guidance_scale(args.model) if args.guidance_scale is None else args.guidance_scale
    if artifact is not None:
        warning = artifact.build_method().sampling_warning(args.num_inference_steps)
        if warning:
            print(f"warning: {warning}")
    pipe = load_model(args)
    if artifact is not None:
        artifact.check_base(pipe)
    warn_if_truncated(pipe, prompts)
    if args.resolution is not None:
        from ..training.hardware import latent_size

        latent_size(pipe, args.resolution)  # refuse a side this model cannot draw, in one sentence
    rows, labels = comparison_rows(pipe, prompts, seeds, artifact, key, args.num_inference_steps, guidance_scale,
                                   routed=args.key_routing == "routed", resolution=args.resolution, batch_size=args.batch_size)
    grid = labelled_grid(rows, labels, [f"seed {s}" for s in seeds])
    save_images(rows, labels, seeds, folder, overwrite=args.overwrite)
    save_png(grid, args.out, overwrite=args.overwrite)
    size = rows[0][0].size
    print(f"Wrote a {len(rows)}×{len(seeds)} grid to {args.out} and its {size[0]}×{size[1]} images to {folder}")
