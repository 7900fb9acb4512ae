"""``veil compare RUN RUN``: every number of two evaluation runs side by side, with the difference."""


def register(sub):
    parser = sub.add_parser("compare", help="Compare two runs (numbers or ids from veil runs, or results folders).")
    parser.add_argument("first", metavar="RUN")
    parser.add_argument("second", metavar="RUN")
    parser.add_argument("--all", action="store_true", help="Also list numbers that did not change.")
    parser.set_defaults(run=run)


def run(args):
    from ..evaluation.runs import compare, get_run

    a, b = get_run(args.first), get_run(args.second)
    for label, results in (("A", a), ("B", b)):
        artifact = results.get("artifact") or {}
        print(f"{label}: {results.get('run_id', '?')}  {results['task']['name']} v{results['task']['version']}  "
              f"{results['base_model']['name']}  {artifact.get('method') or 'no artifact'} {','.join(artifact.get('concepts') or [])}")
    if a["task"]["name"] != b["task"]["name"]:
        print(f"note: the runs are of different tasks ({a['task']['name']} vs {b['task']['name']})")
    rows = compare(a, b)
    width = max([len(r[0]) for r in rows] + [6])
    print(f"{'metric':<{width}}  {'A':>10}  {'B':>10}  {'B - A':>10}")

    def fmt(value):
        return "–" if value is None else f"{value:.4g}"

    shown = 0
    for name, va, vb, diff, verdict in rows:
        if not args.all and verdict == "same":
            continue
        if not args.all and diff is not None and abs(diff) < 1e-12:
            continue
        shown += 1
        print(f"{name:<{width}}  {fmt(va):>10}  {fmt(vb):>10}  {fmt(diff):>10}  {verdict}")
    if not shown:
        print("no differences")
