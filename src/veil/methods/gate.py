"""Which prompts are about a concept, told from the text states a pipeline hands its UNet.

DuMo's eraser runs only for prompts about its concept (its gate), and KPOP's routed key is attached
only to them; both ask :class:`PromptGate`. Per concept and per sample the gate is
``facilitate · max(cosine of the flattened text states, token overlap)`` against the concept and each
of its synonyms; a sample whose gate is below ``gate_threshold`` (or, by ``skip_on``, whose best
content-token cosine is below ``token_skip_threshold``) gets a gate of exactly 0.

The UNet sees text states, not tokens: while attached, the gate remembers the text encoder's input
ids beside its output and finds them again from the UNet's context (prompt states passed in directly
fall back on the cosine alone). On SDXL, whose UNet context is the two encoders' penultimate states side
by side, it remembers the second encoder's and finds them in the context's last columns.
"""

import collections
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import VeilError

SKIP_ON = ("gate", "tokens", "either")
_SIGNATURE_POINTS = 8  # exact values that index captured text states (see `_remember_tokens`)
_MAX_CAPTURED = 256


@dataclass
class GateSettings:
    """The gate's numbers (DuMo's config fields of the same names; KPOP's routed key uses these defaults).

    The defaults are the shapes world's DuMo preset: the flattened cosine of two captions of one template is
    high (circle against other shapes' captions 0.57-0.64, the empty prompt 0.66), naming the concept gives 1,
    and held-out phrasings reach 0.67 or more on tokens where other shapes' captions stay at or below 0.55.
    """

    facilitate: float = 1.0
    gate_threshold: float = 0.7
    skip_on: str = "either"
    token_skip_threshold: float = 0.6

    def __post_init__(self):
        if self.skip_on not in SKIP_ON:
            raise VeilError(f"skip_on must be gate, tokens or either, got {self.skip_on!r}.")


class PromptGate:
    """Per concept, the per-sample gate of a UNet call (see the module's text).

    Args:
        settings: a callable returning an object with ``facilitate``, ``gate_threshold``, ``skip_on`` and
            ``token_skip_threshold`` (read at every call, so a changed setting applies at once).
        capturing: a callable; while it returns False the text encoder's calls are not remembered (a
            method's own training encodes).
    """

    def __init__(self, settings, capturing=lambda: True):
        self._settings = settings
        self._capturing = capturing
        self._concepts = {}  # concept -> [(flattened states, token ids, unit content-token states)], one per phrasing
        self._captured = collections.OrderedDict()  # signature -> [(text states, token ids, content positions)]
        self._special_ids = frozenset()
        self._captured_ids = frozenset()  # the special ids of the tokenizer whose encoder is remembered
        self._width = None  # SDXL: the remembered encoder's width, the context's last columns; None: all of them
        self._cache = None  # (text states, (their version, settings), gates) of the last call
        self._handle = None

    # installation ---------------------------------------------------------------------------------------
    def attach(self, pipe, phrasings, encode, remember_tokens=True):
        """Learn each concept's phrasings (``{concept: [phrase, ...]}``; ``encode(phrase) -> (tokens, width)``)
        and, with ``remember_tokens``, start remembering the tokens of what ``pipe``'s text encoder encodes."""
        tokenizer = getattr(pipe, "tokenizer", None)
        self._special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()))
        self._concepts = {c: [self._phrase_info(tokenizer, p, encode(p)) for p in phrases] for c, phrases in phrasings.items()}
        self.detach()
        # SDXL's UNet context ends with its second encoder's states (and its tokenizer pads with another token).
        encoder, tokenizer = getattr(pipe, "text_encoder_2", None), getattr(pipe, "tokenizer_2", None)
        self._width = encoder.config.hidden_size if encoder is not None else None
        if encoder is None:
            encoder, tokenizer = getattr(pipe, "text_encoder", None), getattr(pipe, "tokenizer", None)
        self._captured_ids = frozenset(getattr(tokenizer, "all_special_ids", ())) | self._special_ids
        if remember_tokens and encoder is not None:
            self._handle = encoder.register_forward_hook(self._remember_tokens, with_kwargs=True)

    def detach(self):
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._captured, self._cache = None, collections.OrderedDict(), None

    def _phrase_info(self, tokenizer, phrase, embeds):
        tokens, content = frozenset(), embeds.float()
        if tokenizer is not None:
            ids = tokenizer(phrase)["input_ids"]
            tokens = frozenset(ids) - self._special_ids
            content = embeds[[i for i, t in enumerate(ids) if t not in self._special_ids]].float()
        return embeds.reshape(-1).float(), tokens, F.normalize(content, dim=-1)

    def _remember_tokens(self, module, args, kwargs, output):
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is None or not self._capturing():
            return
        if self._width is None:
            states = output[0]  # (batch, tokens, width): what the pipeline hands the UNet
        elif getattr(output, "hidden_states", None) is not None:
            states = output.hidden_states[-2]  # SDXL's pipeline hands the UNet the penultimate layer
        else:
            return
        for row, ids in zip(states.detach(), input_ids.tolist()):
            key = _signature(row)
            entries = self._captured.setdefault(key, [])
            if not any(torch.equal(row, r) for r, _, _ in entries):
                positions = [i for i, t in enumerate(ids) if t not in self._captured_ids]
                entries.append((row, frozenset(ids) - self._captured_ids, positions))
            self._captured.move_to_end(key)
        while len(self._captured) > _MAX_CAPTURED:
            self._captured.popitem(last=False)

    def _tokens_of(self, row):
        """``(token ids, content positions)`` of a captured prompt, or ``(None, None)``."""
        if self._width is not None:
            row = row[..., -self._width :]
        for stored, tokens, positions in self._captured.get(_signature(row), ()):
            if stored.shape == row.shape and torch.equal(stored, row.to(stored.dtype)):
                return tokens, positions
        return None, None  # prompt_embeds passed in directly: the cosine alone decides

    # the gate -------------------------------------------------------------------------------------------
    def gates(self, sample, encoder_hidden_states):
        """``{concept: (batch,) gate}``, exactly 0 for the samples that skip. In a classifier-free-guidance
        batch (``[uncond; cond]`` over repeated latents) both halves take the conditional prompt's gate."""
        config = self._settings()
        batch = encoder_hidden_states.shape[0]
        half = batch // 2
        paired = batch % 2 == 0 and half > 0 and torch.equal(sample[:half], sample[half:])
        # A pipeline hands the UNet the same text-state tensor at every denoising step: compute its gates
        # once. The cache holds the tensor itself, so its memory cannot be reused by another meanwhile.
        settings = (paired, config.facilitate, config.gate_threshold, config.skip_on, config.token_skip_threshold,
                    tuple(self._concepts))
        cached = self._cache
        if cached is not None and cached[0] is encoder_hidden_states and cached[1] == (encoder_hidden_states._version, settings):
            return cached[2]
        gates = self._compute(config, encoder_hidden_states, paired)
        self._cache = (encoder_hidden_states, (encoder_hidden_states._version, settings), gates)
        return gates

    def _compute(self, config, encoder_hidden_states, paired):
        batch = encoder_hidden_states.shape[0]
        flat = encoder_hidden_states.reshape(batch, -1).float()
        captured = [self._tokens_of(row) for row in encoder_hidden_states.detach()]
        tokens = [t for t, _ in captured]
        content = _content_states(encoder_hidden_states, captured) if config.skip_on != "gate" else None
        half = batch // 2
        gates = {}
        for concept, phrasings in self._concepts.items():
            similarity = torch.zeros(batch, device=flat.device)
            token_similarity = torch.zeros(batch, device=flat.device)
            for concept_flat, concept_tokens, concept_content in phrasings:  # the concept, each synonym
                if concept_flat.numel() == flat.shape[1]:
                    cosine = F.cosine_similarity(flat, concept_flat.to(flat.device)[None], dim=1)
                else:  # another sequence length: cannot compare, so err on the side of the concept
                    cosine = torch.ones(batch, device=flat.device)
                overlap = torch.tensor(
                    [len(t & concept_tokens) / len(concept_tokens) if (t is not None and concept_tokens) else 0.0 for t in tokens],
                    device=flat.device,
                )
                similarity = torch.maximum(similarity, torch.maximum(cosine, overlap))
                if config.skip_on != "gate":
                    token_similarity = torch.maximum(token_similarity, _token_similarity(content, concept_content, flat.device))
            gate = (config.facilitate * similarity).clamp(min=0.0)
            by_gate, by_tokens = gate >= config.gate_threshold, token_similarity >= config.token_skip_threshold
            keep = {"gate": by_gate, "tokens": by_tokens, "either": by_gate | by_tokens}[config.skip_on]
            if paired:
                gate, keep = torch.cat([gate[half:], gate[half:]]), torch.cat([keep[half:], keep[half:]])
            gates[concept] = torch.where(keep, gate, torch.zeros_like(gate))
        return gates


def _content_states(encoder_hidden_states, captured):
    """Per row, its content-token states as unit vectors; ``None`` for rows whose tokens are unknown."""
    return [None if positions is None else F.normalize(row[positions].float(), dim=-1)
            for row, (_, positions) in zip(encoder_hidden_states.detach(), captured)]


def _token_similarity(content, concept_content, device):
    """Per row, the highest cosine between one of the prompt's content-token states and one of the
    concept's; 1 for rows whose tokens are unknown (err on the side of the concept), 0 for the empty prompt."""
    concept_content = concept_content.to(device)
    values = [1.0 if states is None else float((states @ concept_content.T).max()) if len(states) else 0.0
              for states in content]
    return torch.tensor(values, device=device)


def _signature(row):
    """A few exact values of a text-state row: a cheap key to find the same row again."""
    flat = row.reshape(-1)
    step = max(1, flat.numel() // _SIGNATURE_POINTS)
    return tuple(flat[::step][:_SIGNATURE_POINTS].tolist())
