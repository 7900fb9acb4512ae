"""Which tokens SAFREE's filter projects on the shapes world, and how much of each token lies in the concept subspace.

For each prompt: its tokens, the trigger mask, each word token's share ``‖P_C s‖ / ‖s‖`` of the concept subspace
before and after the projection, the end token's and the padding's share (the filter never projects them), the
share of the whole context's concept-subspace norm left after the projection, and the self-validating filter's
step count. No images are generated.
"""

import argparse
import os

import torch

import veil
from veil._io import write_json
from veil.methods.presets import preset_for
from veil.methods.safree import method as safree


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--prompts", nargs="+", default=["a red circle on a plain background", "a red square on a plain background",
                                                         "a blue disk, dotted backdrop", "circle"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    pipe = veil.load_pipeline("shapes")
    cls = veil.get_method("safree")
    method = cls(cls.config_class.from_dict({**preset_for(cls, "shapes", [args.concept]), "concepts": [args.concept]}))
    method.attach(pipe)
    rows, seen = [], {}
    original = safree.safe_token_states

    def recording(states, masked_ends, proj, alpha):
        safe, triggers, projected = original(states, masked_ends, proj, alpha)
        share = lambda s: round(float((s.double() @ proj).norm() / s.double().norm().clamp(min=1e-12)), 3)  # noqa: E731
        end = len(triggers) + 1
        seen.update(triggers=triggers.tolist(), before=[share(s) for s in states[1:end]],
                    after=[share(s) for s in safe[1:end]], end_token=share(states[end]),
                    padding_mean=round(sum(share(s) for s in states[end + 1 :]) / max(len(states) - end - 1, 1), 3),
                    context_kept=round(float((safe.double() @ proj).norm() / (states.double() @ proj).norm()), 3))
        return safe, triggers, projected

    safree.safe_token_states = recording
    with torch.no_grad():
        for prompt in args.prompts:
            seen.clear()
            pipe.encode_prompt([prompt], device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            steps = method._cache[-1][2] if any(seen.get("triggers", [])) else None
            rows.append({"prompt": prompt, "tokens": pipe.tokenizer.tokenize(prompt), **seen, "safe_steps": steps})
    safree.safe_token_states = original
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, {"concept": args.concept, "config": method.config.to_dict(), "prompts": rows})
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
