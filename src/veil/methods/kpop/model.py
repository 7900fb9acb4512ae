"""KPOP's modules: the learnable key prompts and the cross-attention processor that appends them.

The processor is installed only while a key is active (:func:`keyed_attention`); outside that
block the UNet's own processor objects are in place, so the public model is untouched.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import VeilError

LAYERS = ("mid", "midout", "all")


def select_key_sites(unet, layers):
    """Names (as in ``unet.attn_processors``) of the cross-attention sites a key is attached to.

    ``mid``: the mid block only; ``midout``: the mid block and every up block; ``all``: every ``attn2``.
    """
    if layers not in LAYERS:
        raise VeilError(f"layers must be one of {', '.join(map(repr, LAYERS))}, got {layers!r}.")
    prefixes = {"mid": ("mid_block.",), "midout": ("mid_block.", "up_blocks."), "all": ("",)}[layers]
    sites = [name for name in unet.attn_processors if ".attn2." in name and name.startswith(prefixes)]
    if not sites:
        raise VeilError(f"layers={layers!r} selects no cross-attention layer of this UNet; use 'all'.")
    return sites


class KeyPrompts(nn.Module):
    """The learnable key: one ``(P_k, P_v)`` pair of shape ``(m, width)`` per concept.

    Args:
        concepts: the hidden concepts, in order.
        init: ``(len(concepts), m, width)`` text-encoder states to start from (``E(c)[:m]``, docs/methods/kpop.md).
    """

    def __init__(self, concepts, init, value_init=None):
        super().__init__()
        self.concepts = list(concepts)
        init = init.detach().to(torch.float32)
        value_init = init if value_init is None else value_init.detach().to(torch.float32)
        # P_k = P_v = init at the start unless value_init is given, as two independent parameters.
        self.key_tokens = nn.ParameterList([nn.Parameter(init[i].clone()) for i in range(len(self.concepts))])
        self.value_tokens = nn.ParameterList([nn.Parameter(value_init[i].clone()) for i in range(len(self.concepts))])

    def __repr__(self):
        return f"KeyPrompts(concepts={self.concepts!r})"  # never the values

    def pair(self, index):
        return self.key_tokens[index], self.value_tokens[index]

    def to_key(self):
        """A detached copy as a :class:`veil.methods.kpop.keys.Key`."""
        from .keys import Key

        return Key({c: self.pair(i) for i, c in enumerate(self.concepts)})

    @torch.no_grad()
    def load_key(self, key):
        for i, concept in enumerate(self.concepts):
            key_tokens, value_tokens = key[concept]
            if key_tokens.shape != self.key_tokens[i].shape:
                raise VeilError(
                    f"The key for {concept!r} has shape {tuple(key_tokens.shape)}, but this method uses "
                    f"{tuple(self.key_tokens[i].shape)}; was it made with other settings?"
                )
            self.key_tokens[i].copy_(key_tokens)
            self.value_tokens[i].copy_(value_tokens)


class KeyedCrossAttnProcessor(nn.Module):
    """Cross-attention with key prompts appended after the text tokens (KPOP, docs/methods/kpop.md).

    ``K = to_k(cat[E, P_k])``, ``V = to_v(cat[E, P_v])``, the query unchanged; the key tokens are
    never masked and serve every sample of the batch (both guidance halves). Stock processors
    cannot be reused because the key and value sequences differ. Without a key the call goes to the
    processor it replaced, so the output is the stock output bit for bit.

    Args:
        original: the processor this one stands in for.
        key_tokens, value_tokens: ``(m, width)`` tensors (or ``(batch, m, width)``, a key per sample),
            or ``None`` for no key.
        key_rows: optional ``(batch,)`` booleans: the samples that see the key (training runs the
            hiding and recovery predictions as one batch; a routed key, the prompts about its concept); the
            others attend to the text alone. With no sample chosen the call is the replaced processor's, bit for bit.
            ``(batch, m)`` booleans choose key tokens per sample (a routed key of several concepts: each prompt
            sees only the keys of the concepts it is about).
    """

    def __init__(self, original, key_tokens=None, value_tokens=None, key_rows=None):
        super().__init__()
        # Tuples keep the tensors (and a module-typed original) out of this module's registry, so the
        # UNet's state dict never holds the key and keeps its own names while a key is active.
        self._original = (original,)
        self.key = None if key_tokens is None else (key_tokens, value_tokens)
        self.key_rows = key_rows

    @property
    def original(self):
        return self._original[0]

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        rows = self.key_rows
        if self.key is None or encoder_hidden_states is None or (rows is not None and not bool(rows.any())):
            return self.original(
                attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, temb=temb, **kwargs
            )
        # The steps and their order follow diffusers' AttnProcessor2_0, so that a zero-length key
        # reproduces the stock output exactly.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, text_length, _ = encoder_hidden_states.shape
        # (m, width): one key for the whole batch; (batch, m, width): a key per sample (training's decoy rows).
        key_tokens, value_tokens = (t.to(encoder_hidden_states.device, encoder_hidden_states.dtype) for t in self.key)
        if key_tokens.ndim == 2:
            key_tokens, value_tokens = key_tokens[None], value_tokens[None]
        num_key_tokens = key_tokens.shape[1]

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            # The key tokens are visible to every query: "keep" in a boolean mask, 0 in an additive one.
            keep = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (0, num_key_tokens), value=keep)
        if self.key_rows is not None:
            attention_mask = self._hide_key_from_rows(
                attention_mask, batch_size, text_length, num_key_tokens, hidden_states.dtype, hidden_states.device
            )

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            # Per-token norms (SD uses none) treat the key tokens like text tokens.
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key_tokens = attn.norm_encoder_hidden_states(key_tokens)
            value_tokens = attn.norm_encoder_hidden_states(value_tokens)
        # A shared key is projected once and broadcast over the batch: (batch, text + m, inner_dim).
        key = torch.cat([attn.to_k(encoder_hidden_states), attn.to_k(key_tokens).expand(batch_size, -1, -1)], dim=1)
        value = torch.cat([attn.to_v(encoder_hidden_states), attn.to_v(value_tokens).expand(batch_size, -1, -1)], dim=1)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (batch, heads, pixels, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (batch, heads, text + m, head_dim)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # Default scale 1/sqrt(head_dim), as the stock processor uses.
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _hide_key_from_rows(self, attention_mask, batch_size, text_length, num_key_tokens, dtype, device):
        """An additive mask ``(batch, heads or 1, 1 or queries, text + m)`` with the key columns at -inf
        where ``key_rows`` hides them (softmax then gives them exactly zero weight)."""
        rows = self.key_rows.to(device)
        rows = rows.view(batch_size, 1).expand(batch_size, num_key_tokens) if rows.ndim == 1 else rows  # (batch, m)
        columns = torch.zeros(batch_size, 1, 1, text_length + num_key_tokens, dtype=dtype, device=device)
        hidden = torch.full((batch_size, 1, 1, num_key_tokens), float("-inf"), dtype=dtype, device=device)
        columns[..., text_length:] = torch.where(rows.view(batch_size, 1, 1, num_key_tokens), torch.zeros_like(hidden), hidden)
        if attention_mask is None:
            return columns
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(attention_mask, dtype=dtype).masked_fill(~attention_mask, float("-inf"))
        return attention_mask + columns


def install_keyed_attention(unet, sites, key_tokens, value_tokens, key_rows=None):
    """Make the cross-attention at ``sites`` read ``(P_k, P_v)``; returns ``restore()``, which puts the
    UNet's original processor objects back (the same objects, not copies)."""
    originals = unet.attn_processors
    processors = dict(originals)
    for name in sites:
        processors[name] = KeyedCrossAttnProcessor(originals[name], key_tokens, value_tokens, key_rows)
    unet.set_attn_processor(processors)

    def restore():
        unet.set_attn_processor(dict(originals))

    return restore


@contextlib.contextmanager
def keyed_attention(unet, sites, key_tokens, value_tokens, key_rows=None):
    """Inside the block, the cross-attention at ``sites`` reads ``(P_k, P_v)`` appended to its context."""
    restore = install_keyed_attention(unet, sites, key_tokens, value_tokens, key_rows)
    try:
        yield
    finally:
        restore()
