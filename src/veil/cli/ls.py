"""``veil ls methods``: what is registered."""


def register(sub):
    parser = sub.add_parser("ls", help="List registered methods or evaluation tasks.")
    parser.add_argument("what", choices=("methods", "tasks"), nargs="?", default="methods")
    parser.add_argument("-v", "--verbose", action="store_true", help="Also list each method's settings with help text.")
    parser.set_defaults(run=run)


def run(args):
    from ..registry import get_method, list_methods

    if args.what == "tasks":
        from ..evaluation.tasks import list_tasks, load_task

        for name in list_tasks():
            task = load_task(name)
            print(f"{name:<18} v{task.version}  {task.description.strip().splitlines()[0] if task.description else ''}")
        return

    width = max(len(name) for name in list_methods())
    for name in list_methods():
        cls = get_method(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<{width}} {cls.kind:<12} {summary}")
        if args.verbose:
            print(f"    several concepts: {cls.single_concept_refusal or cls.multi_concept or 'not described'}")
            config = cls.config_class
            for field, text in config.help().items():
                print(f"    {field:<24} {text}")
