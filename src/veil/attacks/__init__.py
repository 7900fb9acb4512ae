"""Attacks on hidden and erased concepts (docs/attacks.md).

Four attacks, each with a config of its budget and a stated threat model:

* ``prompt_search`` — adversarial prompt tokens found with the protected model's denoising loss
  (UnlearnDiffAtk-style), soft or projected to real tokens;
* ``ring_a_bell`` — a concept direction in text-embedding space added to innocent prompts;
* ``concept_inversion`` — a new word learnt on concept images (textual inversion);
* ``key_forging`` — for KPOP, a key learnt without the real one.

:func:`run_attacks` scores them (attack success rate before and after); :func:`forging_curve` gives
the concept rate against key-forging steps next to the real key's.

Example:
    >>> from veil.attacks import run_attacks
    >>> report = run_attacks(pipe, method, "circle", images, ["prompt_search", "concept_inversion"], classify)
"""

from .base import Attack, AttackConfig, AttackResult, Candidate, encode_images, get_attack, list_attacks
from .inversion import ConceptInversion, ConceptInversionConfig
from .key_forging import KeyForging, KeyForgingConfig
from .prompt_search import PromptSearch, PromptSearchConfig
from .ring_a_bell import RingABell, RingABellConfig
from .runner import forging_curve, make_attack, run_attacks

__all__ = [
    "Attack", "AttackConfig", "AttackResult", "Candidate", "ConceptInversion", "ConceptInversionConfig", "KeyForging",
    "KeyForgingConfig", "PromptSearch", "PromptSearchConfig", "RingABell", "RingABellConfig", "encode_images",
    "forging_curve", "get_attack", "list_attacks", "make_attack", "run_attacks",
]
