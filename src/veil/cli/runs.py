"""``veil runs``: the evaluations recorded in the runs database (``VEIL_RUNS_DB``)."""

from .common import positive_int


def register(sub):
    parser = sub.add_parser("runs", help="List recorded evaluation runs, newest first.")
    parser.add_argument("--task", help="Only runs of this task.")
    parser.add_argument("--limit", type=positive_int, default=20, help="How many runs to list (default 20).")
    parser.set_defaults(run=run)


def run(args):
    from ..evaluation.runs import database_path, list_runs

    rows = list_runs(task=args.task, limit=args.limit)
    if not rows:
        print(f"no runs recorded in {database_path()}")
        return 0
    print(f"{'#':>4}  {'run id':<20} {'task':<18} {'model':<10} {'method':<8} {'concepts':<16} {'key':<4} folder")
    for row in rows:
        print(f"{row['number']:>4}  {row['run_id']:<20} {row['task'] or '':<18} {str(row['model'] or '')[:10]:<10} "
              f"{row['method'] or '–':<8} {(row['concepts'] or '–')[:16]:<16} {'yes' if row['unlocked'] else 'no':<4} {row['out_dir']}")
