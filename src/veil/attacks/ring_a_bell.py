"""Ring-A-Bell (Tsai et al., ICLR 2024, arXiv 2310.10012): a concept direction in text-embedding space
added to innocent prompts, then projected back to real tokens."""

import typing
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import VeilError
from ..methods.base import check_choice, check_positive
from .base import Attack, AttackConfig, AttackResult, Candidate, CostMeter, frozen, optimise, register_attack, step_callback
from ..token_slots import PromptTemplate, Vocabulary, encode, word_ids

TEMPLATES = ("a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}")


@dataclass
class RingABellConfig(AttackConfig):
    """Ring-A-Bell: K = 16 tokens; the direction's strength eta swept upwards. Decision: the paper's
    genetic search for tokens is replaced by gradient steps with nearest-token projection (cheaper,
    same objective: the tokens' text embedding close to the target)."""

    max_train_steps: int = field(default=200, metadata={"help": "Projection-search steps per (innocent prompt, strength)."})
    learning_rate: float = field(default=0.1, metadata={"help": "Adam learning rate of the soft tokens during the search."})
    num_tokens: int = field(default=16, metadata={"help": "K: tokens of each found prompt (Ring-A-Bell: 16)."})
    strengths: typing.List[float] = field(
        default_factory=lambda: [1.0, 2.0, 3.0], metadata={"help": "eta: strengths of the concept direction, weakest first."}
    )
    templates: typing.List[str] = field(
        default_factory=lambda: list(TEMPLATES),
        metadata={"help": "Prompt templates ({} = the concept or the anchor) whose paired embeddings give the direction."},
    )
    anchor: str = field(default="", metadata={"help": "What stands in for the concept in the prompts without it ('' drops it)."})
    innocent_prompts: typing.List[str] = field(
        default_factory=list, metadata={"help": "Prompts the direction is added to; default: the templates with the anchor."}
    )
    mode: str = field(default="discrete", metadata={"help": "discrete: real tokens found by projection; soft: the target embeddings themselves."})
    ban_concept_tokens: bool = field(default=True, metadata={"help": "Keep the concept's own tokens out of the found prompts."})

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "num_tokens")
        check_choice(self, "mode", ("discrete", "soft"))
        if not self.strengths:
            raise VeilError("strengths is empty; give at least one strength, e.g. strengths=[3.0].")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise VeilError(f"Each of templates must hold one {{}} for the concept, got {self.templates!r}.")


def _prompt(template, word):
    return " ".join(template.format(word).split())


def _plain(pipe, text):
    return encode(pipe, PromptTemplate(pipe.tokenizer, suffix=text))


@register_attack("ring_a_bell")
class RingABell(Attack):
    """Concept direction ``c = mean_i [E(p_i with the concept) − E(p_i without it)]``; for each innocent
    prompt ``q`` and strength ``eta`` the target ``E(q) + eta·c``, realised as real tokens whose text
    embedding is closest to it (or, in soft mode, given to the pipeline as ``prompt_embeds``).

    Threat model: the text encoder alone (the public one: the methods here leave it untouched) and
    query access to generation; no gradients of the UNet, no images, no original weights, no key.
    ``concept_images`` is not used.
    """

    config_class = RingABellConfig

    def run(self, pipe, method, concept, concept_images=None, *, prompt=None, callback=None):
        config = self.config
        meter = CostMeter(pipe)
        with frozen(pipe), torch.no_grad():
            with_concept = torch.cat([_plain(pipe, _prompt(t, concept)) for t in config.templates])
            without = torch.cat([_plain(pipe, _prompt(t, config.anchor)) for t in config.templates])
            direction = (with_concept - without).mean(0, keepdim=True)  # (1, tokens, width)
            innocent = config.innocent_prompts or list(dict.fromkeys(_prompt(t, config.anchor) for t in config.templates))
            bases = {q: _plain(pipe, q) for q in innocent}
        banned = word_ids(pipe.tokenizer, concept) if config.ban_concept_tokens else ()
        vocabulary = Vocabulary(pipe, banned) if config.mode == "discrete" else None
        candidates, losses, before, after, steps = [], [], [], [], 0
        for eta in config.strengths:
            for q in innocent:
                target = bases[q] + eta * direction
                if vocabulary is None:  # soft: the target itself is the prompt
                    before.append(float(F.mse_loss(bases[q].float(), target.float())))
                    after.append(0.0)
                    candidates.append(Candidate(label=f"eta={eta:g}: {q}", prompt_embeds=target))
                    continue
                with frozen(pipe):
                    ids, first, best, run = self._search(pipe, vocabulary, q, target, callback)
                before.append(first)
                after.append(best)
                losses += run
                steps += len(run)
                template = PromptTemplate(pipe.tokenizer, num_slots=config.num_tokens)
                with torch.no_grad():
                    embeds = encode(pipe, template, token_ids=ids).detach()
                candidates.append(Candidate(label=f"eta={eta:g}: {q}", prompt_embeds=embeds, text=template.text(ids)))
        objective = {"before": sum(before) / len(before), "after": sum(after) / len(after)} if before else {}
        return AttackResult(attack=self.name, concept=concept, candidates=candidates, objective=objective,
                            losses=losses, cost=meter.record(steps), config=config.to_dict())

    def _search(self, pipe, vocabulary, innocent, target, callback):
        """Tokens whose embedding is closest to ``target``, starting from the innocent prompt's own tokens;
        the best projected prompt seen is kept, so the result is never worse than the start."""
        config = self.config
        template = PromptTemplate(pipe.tokenizer, num_slots=config.num_tokens)
        start = torch.tensor(word_ids(pipe.tokenizer, innocent)[: config.num_tokens], dtype=torch.long)
        generator = torch.Generator("cpu").manual_seed(int(config.seed))
        fill = vocabulary.random(config.num_tokens - len(start), generator).cpu()
        ids = torch.cat([start, fill]).to(vocabulary.table.device)
        vectors = torch.nn.Parameter(vocabulary.table[ids].clone())
        state = {"best": float("inf"), "ids": vocabulary.project(vectors)}

        def step_loss():
            projected = vocabulary.project(vectors)
            used = vectors + (vocabulary.table[projected] - vectors).detach()
            loss = F.mse_loss(encode(pipe, template, vectors=used).float(), target.float())
            value = float(loss.detach())  # the projected prompt's own distance (straight-through forward)
            if value < state["best"]:
                state["best"], state["ids"] = value, projected
            return loss

        with torch.no_grad():
            first = float(F.mse_loss(encode(pipe, template, token_ids=state["ids"]).float(), target.float()))
        state["best"] = first
        run = optimise([vectors], step_loss, config, callback=step_callback(callback))
        return state["ids"], first, state["best"], run
