"""``veil report``: one self-contained HTML page from evaluation and bench folders."""


def register(sub):
    parser = sub.add_parser("report", help="Write an HTML report (image grids, metric tables, charts) from veil eval / veil bench folders.")
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="Folders written by veil eval (results.json) or veil bench (bench.json).")
    parser.add_argument("--out", default="report.html", help="The HTML file to write (default report.html); refused if it exists unless --overwrite.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out (and --screenshot) if it exists.")
    parser.add_argument("--title", default="veil evaluation report")
    parser.add_argument("--screenshot", metavar="PNG", help="Also save a PNG of the page, taken by headless Chromium.")
    parser.set_defaults(run=run)


def run(args):
    from ..evaluation.report import write_report
    from .common import check_output

    check_output(args.out, args.overwrite, kind="file")
    if args.screenshot:
        check_output(args.screenshot, args.overwrite, flag="--screenshot", kind="file")
    write_report(args.folders, args.out, title=args.title, screenshot=args.screenshot, overwrite=args.overwrite)
    print(f"report written to {args.out}" + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
