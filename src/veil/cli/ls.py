"""``veil ls methods``: what is registered."""


def register(sub):
    parser = sub.add_parser("ls", help="List registered methods (and, later, tasks).")
    parser.add_argument("what", choices=("methods",), nargs="?", default="methods")
    parser.add_argument("-v", "--verbose", action="store_true", help="Also list each method's settings with help text.")
    parser.set_defaults(run=run)


def run(args):
    from ..registry import get_method, list_methods

    for name in list_methods():
        cls = get_method(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<8} {cls.kind:<12} {summary}")
        if args.verbose:
            config = cls.config_class
            for field, text in config.help().items():
                print(f"    {field:<24} {text}")
