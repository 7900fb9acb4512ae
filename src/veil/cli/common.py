"""Flags and helpers several subcommands share."""

import argparse
import math
import os

from ..config import MAX_SEED

DEFAULT_MODEL = "shapes"


def _number(text, kind, minimum, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (minimum == 0 and kind is float and value == 0):
        raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}")
    return value


def positive_int(text):
    """argparse type: a whole number greater than 0 (steps, counts, limits)."""
    return _number(text, int, 1, "a whole number greater than 0")


def positive_float(text):
    """argparse type: a finite number greater than 0 (learning rates)."""
    return _number(text, float, 0, "a finite number greater than 0")


def finite_float(text):
    """argparse type: a finite number, not nan or inf (guidance scales)."""
    return _number(text, float, -math.inf, "a finite number")


def seed_int(text):
    """argparse type: a seed torch takes, a whole number from 0 to 2**64 - 1."""
    value = _number(text, int, 0, f"a whole number from 0 to {MAX_SEED}")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"takes a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def add_model_flags(parser):
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="'shapes' (bundled, default), 'tiny', a local diffusers folder (SD 1.x/2.x or SDXL), a hub id, or "
             "'sd15-random', 'sd21-random', 'sdxl-random': the true SD 1.5 / 2.1 / SDXL architectures with random "
             "weights, which draw noise (for tests, smoke runs and hardware benchmarks).",
    )
    parser.add_argument("--variant", help="Weight files' variant of a folder or hub id, e.g. fp16 (saved with variant='fp16').")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def resolve_device(name):
    """``auto``: CUDA where there is a GPU, else the CPU; any other name is checked against this machine."""
    import torch

    from ..errors import VeilError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise VeilError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VeilError(f"--device {name} needs a CUDA GPU, and this machine (or this torch build) has none; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VeilError(f"--device {name} names GPU {device.index}, but this machine has {torch.cuda.device_count()}; use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise VeilError(f"--device {name} needs Apple's MPS, which this machine lacks; use --device cpu.")
    elif device.type != "cpu":
        raise VeilError(f"--device {name!r} is not a device veil runs on; use auto, cpu, cuda or cuda:N.")
    return name


def load_model(args):
    from .. import load_pipeline

    return load_pipeline(args.model, device=resolve_device(args.device), variant=getattr(args, "variant", None))


def add_key_routing_flag(parser):
    parser.add_argument(
        "--key-routing", choices=("routed", "unrouted"), default="routed",
        help="routed (default): the key is attached only to prompts about its concept, told from the prompt's text "
             "states, so every other prompt is drawn as the original model draws it; unrouted: to every prompt "
             "(which then tends to draw the concept).",
    )


def open_artifact(path):
    """The artifact behind ``--artifact``: a veil artifact folder, or a DuMo checkpoint folder in the authors'
    layout (their config.json names the DuMo class), read as a DuMo artifact in paper mode."""
    from ..artifact import load_artifact
    from ..methods.dumo.compat import authors_artifact, is_authors_folder

    if path is not None and is_authors_folder(str(path)):
        return authors_artifact(str(path))
    return load_artifact(path)


def add_training_flags(parser, what="the method's"):
    """Flags of every command that trains a method through veil's loop (erase, hide)."""
    parser.add_argument("--steps", type=positive_int, help=f"Training steps ({what} max_train_steps).")
    parser.add_argument("--lr", type=positive_float, help=f"Learning rate ({what} learning_rate).")
    parser.add_argument("--seed", type=seed_int, help="Random seed.")
    parser.add_argument("--config", help="YAML file of method settings.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="One method setting; repeatable.")
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted run from its last checkpoint.")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50, help="Steps between checkpoints.")
    add_hardware_flags(parser)


def add_hardware_flags(parser):
    """The training settings of :class:`veil.methods.base.TrainingConfig`, named as its fields; unset, the config's."""
    parser.add_argument("--resolution", type=positive_int, help="Training image side in pixels (default: the model's own).")
    parser.add_argument("--batch-size", type=positive_int, help="Trajectories per training step (default 1).")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="Recompute the UNet's activations in the backward pass: less memory, more time.")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"),
                        help="Frozen weights in bf16/fp16 and passes under autocast; trained weights stay float32 (fp16: CUDA only).")
    parser.add_argument("--attention", choices=("sdpa", "eager"), help="Attention kernel (default sdpa).")


def hardware_settings(args):
    """``{field: value}`` of the hardware flags given on the command line."""
    names = ("resolution", "batch_size", "gradient_checkpointing", "mixed_precision", "attention")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def parse_dotted_settings(items, flag, resolve):
    """``NAME.FIELD=VALUE`` items → ``{resolve(NAME): {FIELD: value}}`` (bench's --set and --attack-set)."""
    from ..errors import VeilError

    settings = {}
    for item in items:
        name, equals, value = item.partition("=")
        owner, dot, field = name.partition(".")
        if not (equals and dot and field):
            raise VeilError(f"{flag} takes NAME.FIELD=VALUE, got {item!r}.")
        settings.setdefault(resolve(owner), {})[field] = parse_value(value)
    return settings


def add_output_flags(parser, what="folder"):
    parser.add_argument("--out", required=True, help=f"Output {what}; refused if it exists unless --overwrite.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")


def check_output(path, overwrite, flag="--out", kind="folder", exists_ok=False):
    """Refuse an output that could not be written, before any long work (see :func:`veil._io.check_writable`)."""
    from .._io import check_writable

    return check_writable(path, flag=flag, kind=kind, overwrite=overwrite, exists_ok=exists_ok)


def check_concept(concept, flag="--concept"):
    """Refuse an empty concept, or one holding a newline or another control character, in one sentence."""
    import unicodedata

    from ..errors import VeilError

    if not str(concept).strip():
        raise VeilError(f"The concept is empty; give the word or phrase, e.g. {flag} circle.")
    control = next((c for c in str(concept) if unicodedata.category(c) in ("Cc", "Cf")), None)
    if control is not None:
        shown = str(concept) if len(str(concept)) <= 40 else str(concept)[:40] + "..."
        raise VeilError(f"The concept {shown!r} holds the control character {control!r}; give it as plain text on one line with {flag}.")
    return str(concept).strip()


def parse_value(text):
    """A ``--set`` value as YAML; numbers YAML 1.1 reads as text (``1e-3``) are mended per field by
    :func:`veil.config.coerce_numbers` when the config is built."""
    import yaml

    return yaml.safe_load(text)


def method_config(method_cls, concepts, config_file=None, settings=(), model=None, **overrides):
    """Build a method config from the model's preset, a YAML file, ``--set key=value`` pairs and explicit
    flags, each overriding the one before (:mod:`veil.methods.presets` for the presets)."""
    import dataclasses

    import yaml

    from ..errors import VeilError
    from ..config import coerce_numbers
    from ..methods.presets import preset_for

    values = {}
    if config_file:
        try:
            with open(config_file) as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
            raise VeilError(f"Could not read the config file {config_file!r} ({error}).") from None
        if not isinstance(loaded, dict):
            raise VeilError(f"The config file {config_file!r} must hold a mapping of field: value.")
        values.update(loaded.get("config", loaded))
    for item in settings:
        if "=" not in item:
            raise VeilError(f"--set takes field=value, got {item!r}.")
        key, value = item.split("=", 1)
        values[key.strip()] = parse_value(value)
    # --concept (repeatable) wins; without it the config file's (or --set's) concepts: [a, b] are the concepts.
    concepts = list(concepts) if concepts else values.get("concepts")
    if isinstance(concepts, str):
        concepts = [concepts]
    if not isinstance(concepts, (list, tuple)) or not concepts:
        raise VeilError("No concept given; name it with --concept (repeat the flag for several) or list it in the "
                        "config file as concepts: [circle, square].")
    concepts = [check_concept(c) for c in concepts]
    # The model's preset goes under everything the user gave; a method preset chosen by name (KPOP's
    # paper / tuned) keeps its own numbers, so only the model's concept lists are added to it.
    defaults = preset_for(method_cls, model, concepts) if model is not None else {}
    if "preset" in values:
        defaults = {k: v for k, v in defaults.items() if k in ("synonyms", "retain_concepts")}
    values = {**defaults, **values}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["concepts"] = concepts
    values = method_cls.config_class.without_retired(values)
    fields = {f.name for f in dataclasses.fields(method_cls.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise VeilError(
            f"The {method_cls.name} method has no setting {unknown[0]!r}; its settings are {', '.join(sorted(fields))}."
        )
    try:
        return method_cls.config_class(**coerce_numbers(method_cls.config_class, values))
    except TypeError as error:
        raise VeilError(f"Bad {method_cls.name} settings: {error}.") from None


def work_dir_for(out):
    return os.path.abspath(out).rstrip(os.sep) + ".work"
