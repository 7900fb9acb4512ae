"""Entry point: ``veil <command> ...``. Bad input prints one sentence and exits non-zero."""

import argparse
import importlib
import os
import sys

COMMANDS = ("erase", "hide", "generate", "eval", "bench", "report", "runs", "compare", "export", "demo", "env", "ls", "attack")


class _Parser(argparse.ArgumentParser):
    """Flag errors in one sentence, like every other refusal (argparse's usage lines say it less clearly)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help.\n")


def build_parser():
    parser = _Parser(
        prog="veil", description="Hide and erase concepts in text-to-image diffusion models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        # Each module registers its flags; heavy imports happen only inside run(), so --help is instant.
        importlib.import_module(f"veil.cli.{name}").register(sub)
    return parser


def main(argv=None):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a flag refused in one sentence
        return stop.code
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..errors import VeilError

    try:
        return args.run(args) or 0
    except VeilError as error:
        print(f"veil {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"veil {args.command}: interrupted; finished outputs are intact, and training resumes with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
