"""``veil erase``: train (or fit, or configure) a method on a concept and write its artifact."""

import os

from .common import add_model_flags, add_output_flags, add_training_flags


def register(sub):
    parser = sub.add_parser("erase", help="Erase a concept with a registered method and write an artifact.")
    parser.add_argument("--method", default="esd", help="Registered method name (see `veil ls methods`).")
    parser.add_argument("--concept", action="append", help="Concept to erase; repeat for several (one artifact), or list them in --config as concepts: [a, b].")
    add_model_flags(parser)
    add_output_flags(parser)
    add_training_flags(parser)
    parser.set_defaults(run=run)


def run_method(args, method_cls, concepts, configure=None, save_outputs=None):
    """Shared by erase and hide: build config, train or fit, save the artifact. Returns (artifact, pipe, method).

    Args:
        configure: called with the method before training (hide gives it the checkpoints' passphrase).
        save_outputs: called with the artifact and method to write the outputs besides the artifact (hide's key),
            before the artifact; the work folder, whose checkpoints can resume the run, is removed only once every
            output is written.
    """
    import shutil

    from ..artifact import Artifact
    from ..errors import VeilError
    from ..evaluation.sampling import warn_if_truncated
    from ..training.hardware import check_mixed_precision
    from ..training.loop import fit
    from .common import check_output, hardware_settings, load_model, method_config, resolve_device, work_dir_for

    config = method_config(
        method_cls, concepts, args.config, args.set, model=args.model,
        max_train_steps=args.steps, learning_rate=args.lr, seed=args.seed, **hardware_settings(args),
    )
    check_output(args.out, args.overwrite)
    check_mixed_precision(getattr(config, "mixed_precision", "no"), resolve_device(args.device))  # before loading anything
    method = method_cls(config)
    if configure is not None:
        configure(method)
    pipe = load_model(args)
    warn_if_truncated(pipe, config.concepts, what="concept")
    work_dir = work_dir_for(args.out)
    # The pipeline is dropped after the run: a mixed-precision run keeps no float32 copy of the frozen weights.
    cost = fit(
        method, pipe, work_dir=work_dir, checkpoint_every=args.checkpoint_every,
        resume=args.resume, restore_frozen=False,
    )
    cost = {k: v for k, v in (cost or {}).items() if k != "losses"} | {"final_loss": _final_loss(cost)}
    artifact = Artifact.from_method(method, pipe, cost)
    try:
        if save_outputs is not None:
            save_outputs(artifact, method)
        artifact.save(args.out, overwrite=args.overwrite)
    except OSError as error:
        kept = f"the run's checkpoints stay in {work_dir}" if os.path.isdir(work_dir) else "no checkpoint was written"
        raise VeilError(
            f"Could not write the outputs ({error.strerror or error}: {error.filename or args.out}); {kept} — fix the path and "
            "run the same command again with --resume (and --overwrite for any output already written)."
        ) from None
    shutil.rmtree(work_dir, ignore_errors=True)
    return artifact, pipe, method


def _final_loss(cost):
    losses = (cost or {}).get("losses") or []
    return losses[-1] if losses else None


def run(args):
    from ..registry import get_method

    method_cls = get_method(args.method)
    artifact, _, _ = run_method(args, method_cls, args.concept)
    cost = artifact.manifest["cost"]
    print(
        f"Erased {', '.join(artifact.concepts)} with {artifact.method_name} in {cost.get('seconds', 0):.1f} s "
        f"({cost.get('steps', 0)} steps, peak {cost.get('peak_mem_mb', 0):.0f} MB); artifact written to {args.out}"
    )
