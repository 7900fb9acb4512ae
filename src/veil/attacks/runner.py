"""Running attacks and scoring them: attack success rates before and after, and the key-forging curve."""

from ..errors import VeilError
from .base import Attack, concept_prompt, generate_from, get_attack
from ..token_slots import PromptTemplate, encode


def make_attack(attack, config=None):
    """An :class:`Attack` from a name (or an instance, returned as is) and an optional config or dict of fields."""
    if isinstance(attack, Attack):
        return attack
    cls = get_attack(attack)
    if config is None or isinstance(config, dict):
        return cls(cls.config_class.from_dict(dict(config or {})))
    return cls(config)


def _hits(labels, concept, count):
    """Per image, whether the classifier names ``concept`` (``labels``: ``{kind: [label]}`` or ``[label]``)."""
    if isinstance(labels, dict):
        columns = [list(v) for v in labels.values() if len(v) == count]
        return [any(column[i] == concept for column in columns) for i in range(count)]
    return [label == concept for label in labels]


def _rate(pipe, candidate, seeds, classify, concept, settings, keep):
    images = generate_from(pipe, candidate, seeds, **settings)
    if keep is not None:
        keep.append((candidate.label, images))
    if classify is None:  # images only, no scorer
        return None, len(images), 0
    hits = _hits(classify(images), concept, len(images))
    return sum(hits) / len(hits), len(hits), sum(hits)


def _plain_candidate(pipe, prompt):
    from .base import Candidate

    return Candidate(label=f"prompt: {prompt}", prompt_embeds=encode(pipe, PromptTemplate(pipe.tokenizer, suffix=prompt)).detach(), text=prompt)


def run_attacks(pipe, method, concept, concept_images, attacks, classify, *, prompt=None, seeds=(0, 1, 2, 3),
                num_inference_steps=20, guidance_scale=3.0, configs=None, return_images=False, return_results=False, log=None):
    """Attack ``method`` on ``concept`` with each of ``attacks`` and score the outputs.

    The attack success rate is the share of generated images the classifier labels as the concept:
    ``before`` from the plain prompt, and per attack over all its candidates' images (plus the best
    single candidate's rate).

    Args:
        pipe: the base pipeline; ``method`` is attached for the run (and detached after if it was not).
        method: the protected method (a fitted method or ``artifact.attach(pipe)``), or ``None`` to
            attack the base model itself (the reference).
        concept: the hidden or erased concept.
        concept_images: PIL images or uint8 arrays of the concept (from the original model, or the
            shapes renderer), encoded with the pipeline's VAE by the attacks that use them.
        attacks: attack names (``veil.attacks.list_attacks()``) or :class:`Attack` instances.
        classify: ``images -> {kind: [label, ...]}`` (or ``[label, ...]``); ``None`` to generate without scoring.
        prompt: the prompt naming the concept (default ``"a {concept}"``).
        seeds: one image per seed and candidate.
        configs: ``{attack name: config or {field: value}}``.
        return_images: add ``"images"``: ``{"before": [...], attack: [(label, [images])]}``.
        return_results: add ``"results"``: ``{attack: AttackResult}`` (its tensors: found prompts, forged key).

    Returns:
        `dict`: ``{"concept", "prompt", "seeds", "before", "attacks": {name: {"attack_success_rate",
        "best_candidate_rate", "candidates", "objective", "cost", "config"} or {"skipped": reason}}}``.

    Example:
        >>> report = run_attacks(pipe, method, "circle", images, ["prompt_search", "key_forging"], classify)
        >>> report["before"], report["attacks"]["prompt_search"]["attack_success_rate"]
    """
    log = log or (lambda message: None)
    configs = dict(configs or {})
    instances = [make_attack(a, configs.get(a if isinstance(a, str) else a.name)) for a in attacks]
    if not seeds:
        raise VeilError("No seeds to generate with; give at least one seed.")
    prompt = concept_prompt(concept, prompt)
    settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    attached_here = method is not None and method.attached_to is not pipe
    if attached_here:
        method.attach(pipe)
    images = {} if return_images else None
    results = {}
    try:
        keep = [] if return_images else None
        before, _, _ = _rate(pipe, _plain_candidate(pipe, prompt), seeds, classify, concept, settings, keep)
        if return_images:
            images["before"] = keep[0][1]
        report = {"concept": concept, "prompt": prompt, "seeds": list(seeds), "before": before, "attacks": {}}
        for attack in instances:
            if not attack.applies_to(method):
                name = getattr(method, "name", "the base model")
                report["attacks"][attack.name] = {"skipped": f"{attack.name} does not apply to {name}"}
                continue
            log(f"attack {attack.name} × {concept}: {attack.config.max_train_steps} steps")
            result = results[attack.name] = attack.run(pipe, method, concept, concept_images, prompt=prompt)
            keep = [] if return_images else None
            rows, hits, total = [], 0, 0
            for candidate in result.candidates:
                rate, count, hit = _rate(pipe, candidate, seeds, classify, concept, settings, keep)
                rows.append({"label": candidate.label, "text": candidate.text, "rate": rate})
                hits, total = hits + hit, total + count
            entry = result.to_dict()
            entry.pop("losses")
            scored = classify is not None
            entry.update(attack_success_rate=hits / total if scored else None,
                         best_candidate_rate=max(r["rate"] for r in rows) if scored else None, candidates=rows)
            report["attacks"][attack.name] = entry
            if return_images:
                images[attack.name] = keep
            if scored:
                log(f"  {attack.name}: attack success {100 * before:.1f} % -> {100 * entry['attack_success_rate']:.1f} %")
    finally:
        if attached_here:
            method.detach(pipe)
    if return_images:
        report["images"] = images
    if return_results:
        report["results"] = results
    return report


def forging_curve(pipe, method, concept, concept_images, classify, *, eval_steps=(0, 25, 50, 100, 250, 500, 1000),
                  reference_key=None, config=None, prompt=None, seeds=tuple(range(8)), num_inference_steps=20,
                  guidance_scale=3.0):
    """Concept rate against key-forging steps, next to the public model's and the real key's rates.

    The real key (``reference_key``, the evaluator's, e.g. ``method.key`` after training or
    ``veil.methods.kpop.keys.load_key_for``) is used only to measure the reference rate, before the attack starts;
    the attack itself never sees it.

    Args:
        eval_steps: steps at which the forged key's concept rate is measured; the attack runs to the last.
        config: a :class:`~veil.attacks.key_forging.KeyForgingConfig` or ``{field: value}``
            (``max_train_steps`` is set to ``max(eval_steps)``).

    Returns:
        `dict`: ``{"steps", "forged_rate", "public_rate", "real_key_rate", "half_recovery_rate",
        "steps_to_half", "objective", "cost"}`` — the data of the plot; ``steps_to_half`` is the first
        measured step at which the forged key reaches half of the real key's recovery (``None`` if never
        or without a reference).
    """
    from .key_forging import KeyForging

    eval_steps = sorted(set(int(s) for s in eval_steps))
    if not eval_steps or eval_steps[0] < 0:
        raise VeilError(f"eval_steps must be steps of 0 or more, got {eval_steps!r}.")
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else (config or {}))
    fields["max_train_steps"] = max(eval_steps[-1], 1)
    attack = KeyForging(KeyForging.config_class.from_dict(fields))
    prompt = concept_prompt(concept, prompt)
    settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
    attached_here = method.attached_to is not pipe
    if attached_here:
        method.attach(pipe)
    try:
        plain = _plain_candidate(pipe, prompt)
        public_rate = _rate(pipe, plain, seeds, classify, concept, settings, None)[0]
        real_rate = None
        if reference_key is not None:
            with method.unlocked(pipe, reference_key):
                real_rate = _rate(pipe, plain, seeds, classify, concept, settings, None)[0]
        measured = {}

        def measure(step, candidate):
            if step in eval_steps:
                measured[step] = _rate(pipe, candidate, seeds, classify, concept, settings, None)[0]

        result = attack.run(pipe, method, concept, concept_images, prompt=prompt, callback=measure)
    finally:
        if attached_here:
            method.detach(pipe)
    steps = [s for s in eval_steps if s in measured]
    forged = [measured[s] for s in steps]
    half = steps_to_half = None
    if real_rate is not None:
        half = public_rate + 0.5 * (real_rate - public_rate)
        if real_rate > public_rate:
            steps_to_half = next((s for s, r in zip(steps, forged) if r >= half), None)
    return {"concept": concept, "prompt": prompt, "steps": steps, "forged_rate": forged, "public_rate": public_rate,
            "real_key_rate": real_rate, "half_recovery_rate": half, "steps_to_half": steps_to_half,
            "objective": result.objective, "cost": result.cost, "config": result.config}
