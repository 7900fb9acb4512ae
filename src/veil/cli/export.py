"""``veil export``: an artifact as a full diffusers pipeline folder or a partial UNet state dict."""

from .common import add_model_flags, add_output_flags


def register(sub):
    parser = sub.add_parser("export", help="Export an artifact as a diffusers pipeline folder or a UNet state dict.")
    parser.add_argument("--artifact", required=True, help="Artifact folder.")
    parser.add_argument("--format", choices=("pipeline", "unet-state-dict"), default="pipeline")
    add_model_flags(parser)
    add_output_flags(parser, what="folder (pipeline) or .safetensors file (unet-state-dict)")
    parser.set_defaults(run=run)


def run(args):
    from ..artifact import load_artifact
    from .common import check_output, load_model, resolve_device

    check_output(args.out, args.overwrite, kind="file" if args.format == "unet-state-dict" else "folder")
    resolve_device(args.device)
    artifact = load_artifact(args.artifact)
    if args.format == "unet-state-dict":
        artifact.export_unet_state_dict(args.out, overwrite=args.overwrite)
    else:
        artifact.export_pipeline(load_model(args), args.out, overwrite=args.overwrite)
    print(f"Exported {args.artifact} as {args.format} to {args.out}")
