"""Many concepts in one artifact: erasure, preservation and cost as the count grows, on the shapes world.

    OMP_NUM_THREADS=1 nice -n 5 python bench/multi_concept.py --methods uce,rece,safree,sld,mace,esd,kpop,dumo \\
        --counts 1,2,4 --out bench/results/multi-concept/shapes

Each method is fitted from its shapes preset on the first N shapes of the model's shapes world at once (circle,
square, triangle, star, cross, then in world 2 oval, heart, ...; one artifact, saved under ``artifacts/``), in a
process of its own so that its peak memory is that fit's, and drawn on the bench's canonical prompts (world 1: every
shape × colour × background, 120 images a seed; world 2: every shape × style × colour, 360; ``--seeds``): each erased
concept's rate and their mean, and every other concept's rate as a share of the base model's (the lowest named).
On world 2 the issue's counts are ``--counts 1,3,6``.
KPOP rows add the erased concepts' rates with the whole key file, with each concept's own key alone and with a
random key of matched norm. ``multi_concept.json`` is rewritten after each row and ``table.md`` at the end; a row
already in the JSON is kept (delete it to measure it again).
"""

import argparse
import json
import os
import subprocess
import sys
import time



def world(args):
    from veil.shapes import model_world

    return model_world(args.model)


def peak_mb():
    from veil.training.loop import peak_memory_mb

    return peak_memory_mb("cpu")


def rss_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RSSPeak:
    """The highest resident memory while the block runs, sampled every 10 ms (the process's peak, ru_maxrss, is
    the model's loading when a fit needs less than that)."""

    def __enter__(self):
        import threading

        self.before = self.peak = rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def rates(pipe, rows, args):
    from veil.evaluation.concept_rate import evaluate_prompts
    from veil.shapes.classifier import classifier_for

    if not rows:
        return {}
    result = evaluate_prompts(pipe, rows, classifier_for(args.model), num_inference_steps=args.num_inference_steps,
                              guidance_scale=args.guidance_scale)
    return {concept: round(rate, 4) for concept, rate in result["rates"].items()}


def canonical_rows(args):
    from veil.bench import prompt_sets

    return prompt_sets(args.model, tuple(int(s) for s in args.seeds.split(",")))["canonical"]


def naming(rows, concepts):
    from veil.evaluation.shapes_tasks import rows_naming

    return rows_naming(rows, concepts)


def fit_row(args):
    """One method × concept set, in this process: fit, save the artifact, measure; the row as JSON on --row-out."""
    import torch

    import veil
    from veil.cli.common import parse_dotted_settings
    from veil.methods.presets import preset_for

    concepts = args.concepts.split(",")
    pipe = veil.load_pipeline(args.model)
    loaded_mb = peak_mb()
    cls = veil.get_method(args.row)
    overrides = parse_dotted_settings(args.set, "--set", lambda name: veil.get_method(name).name).get(cls.name, {})
    settings = {**preset_for(cls, args.model, concepts), **overrides}
    if args.steps_per_concept and "max_train_steps" in settings:  # each concept keeps the steps one concept has
        settings["max_train_steps"] = int(settings["max_train_steps"]) * len(concepts)
    method = cls(cls.config_class.from_dict({**settings, "concepts": concepts}))
    start = time.perf_counter()
    with RSSPeak() as memory:
        cost = veil.fit(method, pipe, progress=False)
    seconds = cost.get("seconds") or round(time.perf_counter() - start, 3)
    fit_peak = peak_mb()
    folder = os.path.join(args.out, "artifacts", f"{cls.name}-{len(concepts)}")
    artifact = veil.Artifact.from_method(method, pipe, {k: v for k, v in cost.items() if k != "losses"})
    artifact.save(folder, overwrite=True)
    saved = veil.load_artifact(folder)
    if saved.concepts != concepts:
        raise SystemExit(f"the artifact records {saved.concepts}, not {concepts}")
    key = getattr(method, "key", None)
    if key is not None:
        veil.save_key(key, folder + ".veilkey", artifact=artifact, overwrite=True)
    rows = canonical_rows(args)
    row = {"method": cls.name, "count": len(concepts), "concepts": concepts, "seconds": seconds,
           "steps": cost.get("steps"), "peak_mem_mb": round(fit_peak, 1), "model_loaded_mb": round(loaded_mb, 1),
           "fit_rss_before_mb": round(memory.before, 1), "fit_rss_peak_mb": round(memory.peak, 1),
           "fit_added_mb": round(memory.peak - memory.before, 1),
           "artifact_mb": round(os.path.getsize(os.path.join(folder, "model.safetensors")) / 2**20, 3)
           if os.path.isfile(os.path.join(folder, "model.safetensors")) else 0.0,
           "manifest_concepts": saved.concepts, "rates": rates(pipe, rows, args), "config": method.config.to_dict()}
    if key is not None:
        # The key holder draws with the whole key file (every concept's key appended), or with one concept's key.
        with method.unlocked(pipe, key):
            row["rates_with_key"] = {c: r for c, r in rates(pipe, naming(rows, concepts), args).items() if c in concepts}
        if len(concepts) > 1:
            row["rates_with_own_key"] = {}
            for concept in concepts:
                with method.unlocked(pipe, key.subset([concept])):
                    row["rates_with_own_key"][concept] = rates(pipe, naming(rows, [concept]), args).get(concept)
        random_key = veil.random_key_like(key, torch.Generator().manual_seed(1))
        with method.unlocked(pipe, random_key):
            row["rates_with_random_key"] = {c: r for c, r in rates(pipe, naming(rows, concepts), args).items() if c in concepts}
    with open(args.row_out, "w") as handle:
        json.dump(row, handle)


def summarise(row, base, concept_kind):
    """Add the row's headline numbers: mean target rate, the lowest other concept's share of its base."""
    from veil.bench import lowest_share

    concepts = row["concepts"]
    row["target_rate"] = round(sum(row["rates"][c] for c in concepts) / len(concepts), 4)
    shares = {c: round(row["rates"].get(c, 0.0) / base[c], 4) for c in concept_kind if c not in concepts and base.get(c)}
    lowest, share = lowest_share(shares)
    row.update(other_shares=shares, lowest_other=lowest, lowest_other_share=share)
    for name in ("rates_with_key", "rates_with_random_key"):
        if name in row:
            row[name.replace("rates_", "target_rate_")] = round(sum(row[name][c] for c in concepts) / len(concepts), 4)
    if "rates_with_own_key" in row:
        row["target_rate_with_own_key"] = round(sum(row["rates_with_own_key"].values()) / len(concepts), 4)
    return row


def fmt(value):
    return "—" if value is None else f"{100 * value:.1f} %"


def memory(row):
    if "fit_added_mb" not in row:
        return f"{row['peak_mem_mb']:.0f} (process peak)"
    return f"{row['fit_rss_peak_mb']:.0f} (+{row['fit_added_mb']:.0f})"


def table(record):
    lines = [f"Model `{record['model']}`, canonical prompts, seeds {record['seeds']}, DDIM {record['num_inference_steps']} "
             f"steps, guidance {record['guidance_scale']}; each row one artifact fitted on all its concepts at once"
             + ("; the preset's max_train_steps times the number of concepts." if record.get("steps_per_concept") else "."), "",
             "| method | concepts | target (mean) | each erased concept | lowest other concept (share of base) | "
             "KPOP: whole key / own key / random key | fit seconds | memory during the fit, MB (added by the fit) | artifact MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {}  # methods in the order they first appear, each method's rows by count
    for row in record["rows"]:
        order.setdefault(row["method"], len(order))
    for row in sorted(record["rows"], key=lambda r: (order[r["method"]], r["count"])):
        keyed = (f"{fmt(row.get('target_rate_with_key'))} / {fmt(row.get('target_rate_with_own_key', row.get('target_rate_with_key')))}"
                 f" / {fmt(row.get('target_rate_with_random_key'))}" if "target_rate_with_key" in row else "")
        lines.append(f"| {row['method']} | {row['count']}: {'+'.join(row['concepts'])} | {fmt(row['target_rate'])} | "
                     + ", ".join(f"{c} {fmt(row['rates'][c])}" for c in row["concepts"])
                     + f" | {row['lowest_other']} {fmt(row['lowest_other_share'])} | {keyed} | {row['seconds']:.1f} | "
                     f"{memory(row)} | {row['artifact_mb']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="uce,rece,safree,sld,mace,esd,kpop,dumo")
    parser.add_argument("--counts", default="1,2,4", help="How many of the world's shapes (circle, square, triangle, ...) each row erases.")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE", help="Override a preset; repeatable.")
    parser.add_argument("--steps-per-concept", action="store_true",
                        help="Multiply the preset's max_train_steps by the number of concepts (trained methods share their steps).")
    parser.add_argument("--out", default="bench/results/multi-concept/shapes")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # the child process: fit this method
    parser.add_argument("--concepts", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        return fit_row(args)

    from veil._io import write_json

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "multi_concept.json")
    protocol = {"model": args.model, "seeds": [int(s) for s in args.seeds.split(",")],
                "num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale,
                **({"steps_per_concept": True} if args.steps_per_concept else {})}
    record = json.load(open(path)) if os.path.isfile(path) else {**protocol, "base": None, "rows": []}
    if any(record.get(k) != v for k, v in protocol.items()):
        raise SystemExit(f"{path} was measured with another protocol; use another --out")
    if record["base"] is None:
        import veil

        record["base"] = rates(veil.load_pipeline(args.model), canonical_rows(args), args)
        write_json(path, record)
    done = {(r["method"], r["count"]) for r in record["rows"]}
    for method in args.methods.split(","):
        for count in (int(c) for c in args.counts.split(",")):
            if (method, count) in done:
                continue
            concepts = world(args).SHAPES[:count]
            row_out = os.path.join(args.out, f".row-{method}-{count}.json")
            print(f"{method} × {'+'.join(concepts)}: fitting and measuring", flush=True)
            child = [sys.executable, __file__, "--row", method, "--concepts", ",".join(concepts), "--row-out", row_out,
                     "--model", args.model, "--seeds", args.seeds, "--num-inference-steps", str(args.num_inference_steps),
                     "--guidance-scale", str(args.guidance_scale), "--out", args.out]
            child += [f"--set={item}" for item in args.set] + (["--steps-per-concept"] if args.steps_per_concept else [])
            if subprocess.run(child).returncode != 0:
                print(f"{method} × {count}: failed; its row is missing", flush=True)
                continue
            with open(row_out) as handle:
                row = summarise(json.load(handle), record["base"], world(args).CONCEPT_KIND)
            os.remove(row_out)
            record["rows"].append(row)
            write_json(path, record)
            print(f"  target {fmt(row['target_rate'])}, lowest other {row['lowest_other']} {fmt(row['lowest_other_share'])}, "
                  f"{row['seconds']:.0f} s, peak {row['peak_mem_mb']:.0f} MB", flush=True)
    order = {m: i for i, m in enumerate(args.methods.split(","))}
    record["rows"].sort(key=lambda r: (order.get(r["method"], len(order)), r["count"]))
    write_json(path, record)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(table(record))
    print(table(record))


if __name__ == "__main__":
    main()
