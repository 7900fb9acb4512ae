"""Prompts with free token slots, encoded through the pipeline's own text encoder.

A :class:`PromptTemplate` is a tokenised prompt with ``num_slots`` positions whose input embeddings
(rows of the text encoder's token-embedding table) the caller supplies: soft vectors, or vocabulary
rows for real tokens. :class:`Vocabulary` projects soft vectors to their nearest real tokens. The attacks
(:mod:`veil.attacks`) and AdvUnlearn's inner attack use them.
"""

import contextlib

import torch

from .architectures.sdxl import is_sdxl, pack
from .errors import VeilError


class PromptTemplate:
    """Token ids ``prefix + [slot] * num_slots + suffix``, with the tokenizer's special tokens and padding,
    laid out exactly as the pipeline's ``encode_prompt`` lays out a plain prompt.

    Args:
        tokenizer: the pipeline's tokenizer.
        prefix, suffix: text before and after the slots.
        num_slots: how many free positions.
    """

    def __init__(self, tokenizer, prefix="", suffix="", num_slots=0):
        length = tokenizer.model_max_length
        # The slots are held by a one-token word ("x") and found by their character offsets, so that the
        # tokenizer itself adds the special tokens, truncation and padding just as for a plain prompt.
        head = " ".join(prefix.split())
        fillers = " ".join(["x"] * num_slots)
        text = " ".join(part for part in (head, fillers, " ".join(suffix.split())) if part)
        try:
            encoded = tokenizer(text, padding="max_length", max_length=length, truncation=True, return_offsets_mapping=True)
        except NotImplementedError:
            raise VeilError("Attacks need a fast tokenizer (one that reports character offsets); load the pipeline with a fast tokenizer.") from None
        span_start = len(head) + (1 if head else 0)
        span_end = span_start + len(fillers)
        slots = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a >= span_start and b <= span_end]
        if len(slots) != num_slots:
            raise VeilError(
                f"The prompt {text!r} leaves no room for {num_slots} attack tokens within the text encoder's "
                f"{length} tokens; use a shorter prompt or fewer tokens."
            )
        self.input_ids = torch.tensor([encoded["input_ids"]])  # (1, tokens)
        self.attention_mask = torch.tensor([encoded["attention_mask"]])
        self.slots = torch.tensor(slots, dtype=torch.long)
        self.tokenizer = tokenizer

    def with_tokens(self, token_ids):
        """The ids with the slots filled by real tokens ``(num_slots,)``."""
        ids = self.input_ids.clone()
        ids[0, self.slots] = token_ids.to(ids.device)
        return ids

    def text(self, token_ids):
        """The readable prompt with the slots filled by ``token_ids``."""
        ids = self.with_tokens(token_ids)[0, self.attention_mask[0].bool()]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@contextlib.contextmanager
def slot_vectors(text_encoder, slots, vectors):
    """Inside the block, the token-embedding rows at positions ``slots`` are ``vectors`` ``(len(slots), width)``.

    A forward hook on the token-embedding table, because no text-encoder door takes embeddings for
    some positions and ids for the rest (``CLIPTextModel`` accepts no ``inputs_embeds``); the ids
    still reach the rest of the encoder (CLIP's end-of-text pooling reads them). Removed on exit.
    """

    def replace(module, args, output):
        output = output.clone()  # (batch, tokens, width)
        output[:, slots] = vectors.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def encode(pipe, template, vectors=None, token_ids=None):
    """The text encoder's last hidden state ``(1, tokens, width)`` for ``template`` with its slots filled
    by soft ``vectors`` or by real ``token_ids`` (gradients flow to ``vectors``); on SDXL the prompt
    states as :func:`veil.training.sampling.encode_prompts` lays them out, from both text encoders."""
    encoder = pipe.text_encoder
    ids = template.with_tokens(token_ids) if token_ids is not None else template.input_ids
    ids = ids.to(pipe.device)
    if is_sdxl(pipe):
        return _encode_sdxl(pipe, template, ids, vectors)
    mask = template.attention_mask.to(pipe.device) if getattr(encoder.config, "use_attention_mask", False) else None
    if vectors is None:
        return encoder(ids, attention_mask=mask)[0]
    with slot_vectors(encoder, template.slots.to(pipe.device), vectors):
        return encoder(ids, attention_mask=mask)[0]


def _encode_sdxl(pipe, template, ids, vectors):
    """SDXL: both encoders' penultimate states side by side, the pooled embedding as the last row. A slot
    vector is both encoders' input rows side by side (:func:`input_table`)."""
    first, second = pipe.text_encoder, pipe.text_encoder_2
    width = first.get_input_embeddings().weight.shape[1]
    slots = template.slots.to(pipe.device)
    ids_2 = ids.masked_fill(template.attention_mask.to(ids.device) == 0, pipe.tokenizer_2.pad_token_id)  # its own padding
    outputs = []
    for encoder, encoder_ids, part in ((first, ids, slice(0, width)), (second, ids_2, slice(width, None))):
        with slot_vectors(encoder, slots, vectors[:, part]) if vectors is not None else contextlib.nullcontext():
            outputs.append(encoder(encoder_ids, output_hidden_states=True))
    states = torch.cat([o.hidden_states[-2] for o in outputs], dim=-1)
    return pack(pipe, states, outputs[1][0])


def input_table(pipe):
    """The text encoder's token-embedding table ``(vocab, width)``, detached; on SDXL both encoders'
    tables side by side (one vocabulary, two widths)."""
    tables = [pipe.text_encoder.get_input_embeddings().weight.detach()]
    if is_sdxl(pipe):
        tables.append(pipe.text_encoder_2.get_input_embeddings().weight.detach())
    return torch.cat(tables, dim=1)


def word_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


class Vocabulary:
    """Real tokens for soft vectors: the nearest rows (Euclidean) of the token-embedding table,
    special tokens and ``banned`` ids excluded."""

    def __init__(self, pipe, banned=()):
        self.table = input_table(pipe).float()  # (vocab, width)
        allowed = torch.ones(self.table.shape[0], dtype=torch.bool)
        special = set(pipe.tokenizer.all_special_ids) | set(int(i) for i in banned)
        allowed[[i for i in special if 0 <= i < len(allowed)]] = False
        self.allowed = allowed.to(self.table.device)

    def project(self, vectors):
        """``(k,)`` ids of the nearest allowed tokens to ``vectors`` ``(k, width)``."""
        distances = torch.cdist(vectors.detach().float(), self.table)  # (k, vocab)
        return distances.masked_fill(~self.allowed, float("inf")).argmin(dim=1)

    def random(self, count, generator):
        """``count`` allowed token ids drawn with ``generator``."""
        pool = self.allowed.nonzero().flatten().cpu()
        return pool[torch.randint(len(pool), (count,), generator=generator)].to(self.table.device)

    def straight_through(self, vectors):
        """Forward: the nearest tokens' rows; backward: the identity to ``vectors`` (the gradient is taken
        at the projected prompt and applied to the soft one)."""
        projected = self.table[self.project(vectors)].to(vectors.dtype)
        return vectors + (projected - vectors).detach()
