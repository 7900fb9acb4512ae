"""``veil hide``: hide concepts behind a secret key (KPOP); writes the public artifact and the key apart."""

from .common import add_model_flags, add_output_flags, add_training_flags


def register(sub):
    parser = sub.add_parser(
        "hide", help="Hide concepts behind a secret key (KPOP): a public artifact, and a key file that brings them back."
    )
    parser.add_argument("--concept", action="append", help="Concept to hide; repeat for several (one artifact, one key each in the key file), or list them in --config.")
    add_model_flags(parser)
    add_output_flags(parser, what="folder for the public artifact")
    parser.add_argument("--key-out", required=True, help="Key file to write (e.g. circle.veilkey); keep it secret, apart from --out.")
    parser.add_argument(
        "--passphrase-file",
        help="File holding a passphrase that encrypts the key (or set VEIL_KEY_PASSPHRASE); without either the key is not encrypted.",
    )
    parser.add_argument("--preset", choices=("paper", "tuned"), help="paper (default) or tuned (adds the retain-concept term).")
    add_training_flags(parser, what="KPOP's")
    parser.set_defaults(run=run)


def run(args):
    import os

    from ..errors import VeilError
    from ..methods.kpop.keys import resolve_passphrase, save_key
    from ..methods.kpop import KPOP
    from .common import check_output, work_dir_for
    from .erase import run_method

    # Everything that can be refused is refused before minutes of training.
    out, key_out = os.path.abspath(args.out), os.path.abspath(args.key_out)
    if key_out == out or key_out.startswith(out.rstrip(os.sep) + os.sep):
        raise VeilError("--key-out is inside --out, so the key would ship with the public artifact; write the key elsewhere.")
    check_output(args.key_out, args.overwrite, flag="--key-out", kind="file")
    passphrase = resolve_passphrase(args.passphrase_file)
    if args.preset:
        args.set = [f"preset={args.preset}"] + list(args.set)

    def configure(method):  # once the settings are checked, before training
        method.checkpoint_passphrase = passphrase
        sealed = "encrypted with the passphrase" if passphrase else "NOT encrypted"
        print(f"Checkpoints go to {work_dir_for(args.out)} and hold the key ({sealed}); they are removed once the artifact "
              "and the key are written. If the run stops, --resume continues from them; otherwise delete that folder.",
              flush=True)

    def save(artifact, method):  # the key first: the work folder goes only once both are written
        save_key(method.key, args.key_out, artifact=artifact, passphrase=passphrase, overwrite=args.overwrite)

    artifact, _, method = run_method(args, KPOP, args.concept, configure=configure, save_outputs=save)
    cost = artifact.manifest["cost"]
    lock = "encrypted with the passphrase" if passphrase else "NOT encrypted (give --passphrase-file to encrypt it)"
    print(
        f"Hid {', '.join(artifact.concepts)} in {cost.get('seconds', 0):.1f} s ({cost.get('steps', 0)} steps, "
        f"peak {cost.get('peak_mem_mb', 0):.0f} MB); public artifact written to {args.out}; key written to "
        f"{args.key_out}, {lock} — keep it secret."
    )
