"""``veil export``: an artifact as a full diffusers pipeline folder, a partial UNet state dict, or (DuMo) the
authors' checkpoint layout."""

from .common import add_model_flags, add_output_flags


def register(sub):
    parser = sub.add_parser(
        "export", help="Export an artifact as a diffusers pipeline folder, a UNet state dict or the DuMo authors' layout."
    )
    parser.add_argument("--artifact", required=True, help="Artifact folder (or a DuMo folder in the authors' layout).")
    parser.add_argument(
        "--format", choices=("pipeline", "unet-state-dict", "dumo-authors"), default="pipeline",
        help="dumo-authors: a DuMo artifact as the authors' checkpoint folder (config.json, "
             "diffusion_pytorch_model.safetensors, time_scale.npy), one subfolder per concept when it erases several.",
    )
    add_model_flags(parser)
    add_output_flags(parser, what="folder (pipeline, dumo-authors) or .safetensors file (unet-state-dict)")
    parser.set_defaults(run=run)


def run(args):
    from .common import check_output, load_model, open_artifact, resolve_device

    check_output(args.out, args.overwrite, kind="file" if args.format == "unet-state-dict" else "folder")
    resolve_device(args.device)
    artifact = open_artifact(args.artifact)
    if args.format == "unet-state-dict":
        artifact.export_unet_state_dict(args.out, overwrite=args.overwrite)
    elif args.format == "dumo-authors":
        from ..methods.dumo.compat import export_authors_checkpoints, require_dumo

        require_dumo(artifact)  # before the model loads
        export_authors_checkpoints(artifact, load_model(args), args.out, overwrite=args.overwrite)
    else:
        artifact.check_export()  # before the model loads
        artifact.export_pipeline(load_model(args), args.out, overwrite=args.overwrite)
    print(f"Exported {args.artifact} as {args.format} to {args.out}")
