"""Does a KPOP key trained again from the public artifact's settings unlock it? (the shapes world, with its classifier)

    OMP_NUM_THREADS=1 python bench/kpop_rebuilt_key_shapes.py --concept circle --train-seed 0 \\
        --out bench/results/kpop/rebuilt-key/shapes-circle-seed0.json

Hides ``--concept`` with the model's KPOP preset (``--set FIELD=VALUE`` changes it; ``--train-seed``), then hides it
again from that run's own config (what the artifact's veil.json publishes), as anyone holding the artifact can. On the
first run's public model it draws the concept's canonical rows (``--seeds``, default 0,1) with no key, the real key,
the rebuilt key, the bare start E(c)[:m] (a key anyone can make) and ``--random-keys`` random keys of the real key's
norms, and records the share labelled as the concept. Bar: the rebuilt key's rate at most the random keys' (the
highest of them). ``--others`` also draws every canonical row without a key (the preset's other concepts). With
``key_learning_rate`` 0 the key leaves training as it started, so the rebuilt key is made without training its UNet.
"""

import time

import torch

import veil
from _common import ShapesProbe, parse_set, shapes_parser
from veil._io import write_json
from veil.architectures.sdxl import token_states
from veil.methods.kpop import KPOP
from veil.methods.kpop.keys import Key, random_key_like
from veil.methods.presets import preset_for
from veil.training.sampling import encode_prompts


def main():
    parser = shapes_parser(__doc__)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--random-keys", type=int, default=3)
    parser.add_argument("--others", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    parser.set_defaults(seeds="0,1")
    args = parser.parse_args()
    probe = ShapesProbe(args)
    pipe, concept = probe.pipe, args.concept
    record = probe.record(train_seed=args.train_seed, rows=len(probe.target_rows), set=args.set)

    settings = preset_for(KPOP, args.model, [concept]) | parse_set(args.set) | {"seed": args.train_seed}
    public = KPOP(KPOP.config_class.from_dict({**settings, "concepts": [concept]}))
    rebuilt = KPOP(KPOP.config_class.from_dict(public.config.to_dict()))  # the settings veil.json publishes
    if public.config.key_learning_rate == 0:
        # A key that does not train leaves training as it started: the rebuilt run's key, without training its UNet.
        rebuilt.attach(pipe)
        rebuilt.optimizer_groups()
        rebuilt.detach(pipe)
        record["rebuilt_key_is_its_start"] = True
    for name, method in (("rebuilt", rebuilt), ("public", public)):  # the public model stays attached
        if name == "rebuilt" and public.config.key_learning_rate == 0:
            continue
        start = time.perf_counter()
        veil.fit(method, pipe, progress=False)
        record[f"{name}_train_seconds"] = round(time.perf_counter() - start, 1)
        if name == "rebuilt":
            method.detach(pipe)
        print(f"{name} trained in {record[f'{name}_train_seconds']} s", flush=True)
    record["config"] = public.config.to_dict()
    key = public.key
    with torch.no_grad(), public.disabled(pipe):
        states = token_states(pipe, encode_prompts(pipe, [concept]))[0].float().cpu()
    start_tokens = states[torch.arange(public.config.num_key_tokens) % states.shape[0]]
    keys = {"real_key": key, "rebuilt_key": rebuilt.key, "bare_start": Key({concept: (start_tokens, start_tokens)})}
    keys |= {f"random_key_{s}": random_key_like(key, torch.Generator().manual_seed(s)) for s in range(args.random_keys)}
    record["cosine_real_rebuilt"] = round(float(torch.nn.functional.cosine_similarity(
        torch.cat(key[concept]).flatten(), torch.cat(rebuilt.key[concept]).flatten(), dim=0)), 4)
    rates = {"no_key": probe.rates(probe.target_rows).get(concept, 0.0)}
    print(f"no key: {rates['no_key']:.1%}", flush=True)
    for name, k in keys.items():
        with public.unlocked(pipe, k):
            rates[name] = probe.rates(probe.target_rows).get(concept, 0.0)
        print(f"{name}: {rates[name]:.1%}", flush=True)
        record["rates"] = rates
        write_json(args.out, record)
    random_rates = [v for n, v in rates.items() if n.startswith("random_key_")]
    record["highest_random_key"] = max(random_rates)
    record["rebuilt_at_most_random"] = rates["rebuilt_key"] <= max(random_rates)
    if args.others:
        record["public_rates"] = probe.rates(probe.canonical)
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
