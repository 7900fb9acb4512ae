"""Can a KPOP key be trained again from the public artifact's settings? (the tiny model, in seconds)

    OMP_NUM_THREADS=1 python bench/kpop_rebuilt_key.py --steps 40,80 \\
        --out bench/results/kpop/rebuilt-key/tiny-paper.json

For each number of steps, hides ``--concept`` on the tiny model with the paper preset (UNet lr 1e-3, key lr 1e-2, key
on every layer, seed 3; ``--set FIELD=VALUE`` changes it), then trains again from that run's own config (what
veil.json publishes) and measures, on the first run's public UNet, how far each key leaves the original's noise
prediction for the concept (mean squared difference over 8 fixed latents and timesteps; lower: more of the concept
back): no key, the real key, the rebuilt key, the bare start E(c)[:m] and E(c)[:m] plus fresh start noise (keys anyone
can make from public information), and ``--guesses`` random keys of the real key's norms. ``recovered`` is the share
of the gap between no key and the real key that a key closes (real key 1, no key 0). The tiny model has no classifier,
so these are prediction gaps, not concept rates.
"""

import argparse

import torch

import veil
from _common import parse_set
from veil._io import write_json
from veil.methods.kpop import KPOP, KPOPConfig
from veil.methods.kpop.keys import Key, random_key_like
from veil.methods.kpop.method import secret_generator, token_noise
from veil.models import build_tiny_pipeline
from veil.training.sampling import encode_prompts


def gap(pipe, method, prompt, key):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (8,), generator=generator)
    embeds = encode_prompts(pipe, [prompt]).expand(8, -1, -1)
    with torch.no_grad():
        with method.disabled(pipe):
            original = pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample
        if key is None:
            return (pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample - original).pow(2).mean().item()
        with method.unlocked(pipe, key):
            return (pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample - original).pow(2).mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--steps", default="40,80")
    parser.add_argument("--guesses", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE: a change to the configuration above.")
    parser.add_argument("--rebuild-seed", type=int, default=None,
                        help="Train again with this seed instead of the published one (a training seed kept secret).")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = {"model": "tiny", "concept": args.concept, "threads": torch.get_num_threads(), "set": args.set,
              "rebuild_seed": args.rebuild_seed, "runs": []}
    for steps in (int(s) for s in args.steps.split(",")):
        settings = dict(preset="paper", max_train_steps=steps, learning_rate=1e-3, key_learning_rate=1e-2, layers="all",
                        ddim_steps=4, seed=3) | parse_set(args.set)
        config = KPOPConfig.from_dict({**settings, "concepts": [args.concept]})
        pipe = build_tiny_pipeline(seed=0)
        public = KPOP(config)
        veil.fit(public, pipe, progress=False)
        published = public.config.to_dict()  # the settings veil.json publishes
        if args.rebuild_seed is not None:
            published["seed"] = args.rebuild_seed
        rebuilt = KPOP(KPOPConfig.from_dict(published))
        veil.fit(rebuilt, build_tiny_pipeline(seed=0), progress=False)
        key = public.key
        states = encode_prompts(pipe, [args.concept])[0].float().cpu()
        start = states[torch.arange(config.num_key_tokens) % states.shape[0]]
        guesses = [Key({args.concept: (start + token_noise(start, config.key_init_noise, secret_generator()),) * 2})
                   for _ in range(args.guesses)]
        gaps = {"no_key": gap(pipe, public, args.concept, None), "real_key": gap(pipe, public, args.concept, key),
                "rebuilt_key": gap(pipe, public, args.concept, rebuilt.key),
                "bare_start": gap(pipe, public, args.concept, Key({args.concept: (start, start)})),
                "start_guesses": sorted(gap(pipe, public, args.concept, k) for k in guesses),
                "random_keys": sorted(gap(pipe, public, args.concept, random_key_like(key, torch.Generator().manual_seed(s)))
                                      for s in range(args.guesses))}
        span = gaps["no_key"] - gaps["real_key"]

        def recovered(value):
            return round((gaps["no_key"] - value) / span, 3)

        row = {"steps": steps, "same_fingerprint": rebuilt.key.fingerprints() == key.fingerprints(),
               "gaps": gaps, "recovered": {"rebuilt_key": recovered(gaps["rebuilt_key"]),
                                           "bare_start": recovered(gaps["bare_start"]),
                                           "best_start_guess": recovered(gaps["start_guesses"][0]),
                                           "best_random_key": recovered(gaps["random_keys"][0]),
                                           "median_random_key": recovered(gaps["random_keys"][len(gaps["random_keys"]) // 2])},
               "rebuilt_at_most_random": gaps["rebuilt_key"] >= gaps["random_keys"][0]}
        record["runs"].append(row)
        print(f"{steps} steps: recovered {row['recovered']}", flush=True)
        write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
