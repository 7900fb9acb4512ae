"""DuMo on a model, stage by stage: stage 1 (EPR) alone, then with stage 2 (TLMO), each measured with
the gate on and off (canonical prompts, the concept's training synonyms, every other concept); the
learned TLMO table, training times, EPR parameter count and artifact size; and the gate's cost: time
to generate prompts that do not name the concept with the artifact attached vs the original model.

    OMP_NUM_THREADS=1 python bench/dumo_stages.py --concept circle --out bench/results/dumo/ablation-stages/circle-preserve.json \\
        [--set learning_rate=2e-3 --set max_train_steps=300 ...]

Settings start from the model's DuMo preset (veil.methods.presets); --set FIELD=VALUE overrides one.
"""

import os
import tempfile
import time

import veil
from _common import ShapesProbe, parse_set, shapes_parser
from veil._io import write_json
from veil.artifact import WEIGHTS_NAME
from veil.methods.dumo import DuMo
from veil.methods.presets import preset_for
from veil.training.loop import train_stage


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--timing-repeats", type=int, default=3)
    args = parser.parse_args()

    probe = ShapesProbe(args)
    pipe, canonical, synonyms, rates = probe.pipe, probe.canonical, probe.synonyms, probe.rates
    settings = preset_for(DuMo, args.model, [args.concept])
    settings.update(parse_set(args.set))
    method = DuMo(DuMo.config_class.from_dict({**settings, "concepts": [args.concept]}))
    record = probe.record(config=method.config.to_dict())

    def measure():
        out = {}
        for gate in (True, False):
            method.config.gate = gate
            out["gate_on" if gate else "gate_off"] = {"canonical": rates(canonical), "synonyms": rates(synonyms).get(args.concept)}
        method.config.gate = settings.get("gate")
        return out

    record["base"] = rates(canonical)
    for stage in method.stages():
        start = time.perf_counter()
        cost = train_stage(method, pipe, stage, progress=True)
        stage = stage.name
        record[f"{stage}_seconds"] = round(time.perf_counter() - start, 1)
        record[f"{stage}_steps"] = cost["steps"]
        record[f"after_{stage}"] = measure()
        print(stage, record[f"{stage}_seconds"], "s;", {g: (v["canonical"][args.concept], v["synonyms"]) for g, v in record[f"after_{stage}"].items()}, flush=True)
        write_json(args.out, record)
    record["train_seconds"] = round(sum(record[f"{s.name}_seconds"] for s in method.stages()), 1)
    record["time_scale"] = [[round(float(x), 4) for x in row] for row in method.time_scale(args.concept)]
    record["epr_parameters"] = sum(p.numel() for p in method.eprs[args.concept].parameters())
    with tempfile.TemporaryDirectory() as tmp:
        veil.Artifact.from_method(method, pipe).save(os.path.join(tmp, "a"))
        record["artifact_mb"] = round(os.path.getsize(os.path.join(tmp, "a", WEIGHTS_NAME)) / 2**20, 2)

    # The gate's cost on prompts that do not name the concept: the same images, timed with and without the artifact.
    method.config.gate = None
    unrelated = probe.unrelated_rows()

    method.stats.update(epr_forward_calls=0, epr_skipped=0)
    attached = probe.seconds(unrelated, args.timing_repeats)
    stats = dict(method.stats)
    method.detach(pipe)  # the stock pipeline, no hook at all
    original = probe.seconds(unrelated, args.timing_repeats)
    record["gate_timing"] = {"prompts": len(unrelated), "original_seconds": round(original, 3), "attached_seconds": round(attached, 3),
                             "ratio": round(attached / original, 4), "epr_stats": stats}
    print("gate timing", record["gate_timing"], flush=True)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
