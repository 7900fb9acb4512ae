"""DuMo on one shapes concept: train once with the model's preset (plus --set changes), then measure the
concept's canonical, training-synonym and held-out paraphrase rates and every other concept's rate under
several inference gate settings, so that one training run compares them.

    OMP_NUM_THREADS=1 python bench/dumo_gate_settings.py --concept circle --load bench/results/attacks/shapes/artifacts/dumo-circle \\
        --gate either=skip_on=either,gate_threshold=0.7,token_skip_threshold=0.6 \\
        --out bench/results/dumo/gate-thresholds/either-circle.json

``--gate NAME=FIELD=VALUE[,FIELD=VALUE]`` sets inference fields (gate, facilitate, gate_threshold, skip_on,
token_skip_threshold); ``NAME=`` alone keeps the preset's. Each setting also records how many EPR forwards the
48 canonical prompts that do not name the concept skip, and their generation time against the original model's.
``--artifact DIR`` saves the trained artifact; ``--load DIR`` evaluates one instead of training.
"""

import json
import time

import veil
from _common import ShapesProbe, parse_named_settings, parse_set, shapes_parser
from veil._io import write_json
from veil.evaluation.shapes_tasks import rows_naming, task_rows
from veil.methods.dumo import DuMo
from veil.methods.presets import preset_for


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE over the preset (training).")
    parser.add_argument("--gate", action="append", required=True)
    parser.add_argument("--artifact", help="Save the trained artifact here.")
    parser.add_argument("--load", help="Evaluate this artifact instead of training.")
    args = parser.parse_args()

    probe = ShapesProbe(args)
    pipe, canonical, synonyms = probe.pipe, probe.canonical, probe.synonyms
    paraphrases = rows_naming(task_rows("shapes_paraphrase"), args.concept)
    changes = parse_set(args.set)
    record = probe.record(changes=changes)
    record["base"] = {"canonical": probe.rates(canonical), "synonyms": probe.rates(synonyms).get(args.concept),
                      "paraphrases": probe.rates(paraphrases).get(args.concept)}
    if args.load:
        artifact = veil.load_artifact(args.load)
        artifact.check_base(pipe)
        method = artifact.build_method()
        method.attach(pipe)
        record["artifact"] = args.load
    else:
        settings = preset_for(DuMo, args.model, [args.concept]) | changes
        method = DuMo(DuMo.config_class.from_dict({**settings, "concepts": [args.concept]}))
        start = time.perf_counter()
        veil.fit(method, pipe, progress=True)
        record["train_seconds"] = round(time.perf_counter() - start, 1)
        if args.artifact:
            veil.Artifact.from_method(method, pipe).save(args.artifact)
            record["artifact"] = args.artifact
    record["config"] = method.config.to_dict()
    unrelated = probe.unrelated_rows()
    with method.disabled(pipe):
        record["unrelated_original_seconds"] = round(probe.seconds(unrelated), 3)
    record["gates"] = {}
    for text in args.gate:
        name, gate_settings = parse_named_settings(text)
        saved = {k: getattr(method.config, k) for k in ("gate", "facilitate", "gate_threshold", "skip_on", "token_skip_threshold")}
        for field, value in gate_settings.items():
            setattr(method.config, field, value)
        row = {"settings": gate_settings, "canonical": probe.rates(canonical),
               "synonyms": probe.rates(synonyms).get(args.concept), "paraphrases": probe.rates(paraphrases).get(args.concept)}
        method.stats.update(epr_forward_calls=0, epr_skipped=0)
        row["unrelated_seconds"] = round(probe.seconds(unrelated), 3)
        row["unrelated_epr_stats"] = dict(method.stats)
        row["unrelated_time_ratio"] = round(row["unrelated_seconds"] / record["unrelated_original_seconds"], 4)
        for field, value in saved.items():
            setattr(method.config, field, value)
        others = {c: r for c, r in row["canonical"].items() if c != args.concept}
        row["min_other"] = min(others.items(), key=lambda item: item[1])
        record["gates"][name] = row
        print(name, json.dumps({"target": row["canonical"].get(args.concept), "synonyms": row["synonyms"],
                                "paraphrases": row["paraphrases"], "min_other": row["min_other"],
                                "unrelated": [row["unrelated_epr_stats"], row["unrelated_time_ratio"]]}), flush=True)
        write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
