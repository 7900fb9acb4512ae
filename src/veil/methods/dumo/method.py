"""DuMo: Dual Encoder Modulation Network for Precise Concept Erasure (Han et al., AAAI 2025)."""

import contextlib
import io
import re

import numpy as np
import torch
import torch.nn.functional as F

from ...architectures.sdxl import token_states
from ...errors import VeilError
from ...models import model_fingerprint
from ...registry import register_method
from ...training.hardware import latent_size
from ...training.sampling import (
    TrajectoryPool,
    encode_guidance_prompts,
    negative_guidance_target,
    trajectory_timesteps,
)
from ..base import Method, Stage, phrasings
from ..gate import PromptGate
from .config import STAGES, DuMoConfig
from .model import DuMoEPR
from .presets import MODEL_PRESETS

PREFIX = "dumo."
TIME_ROWS = 20  # TLMO rows: one per 50 of SD's 1000 training timesteps


@register_method("dumo")
class DuMo(Method):
    """DuMo (Han, Chen, Gong, Wei, Chen, Jiang, AAAI 2025, arXiv 2501.01125).

    Per concept, EPR — a trainable copy of the UNet's encoder and mid block with zero-initialised 1×1
    output convolutions — adds residuals to the frozen UNet's skip connections; TLMO scales residual
    ``i`` at timestep ``t`` by a learned ``S[t // 50, i]``. Stage 1 trains EPR on ESD's
    negative-guidance loss (``S`` fixed at ones); stage 2 freezes EPR and learns ``S`` on erase +
    lambda·preserve. The UNet, text encoder and VAE are never trained.

    Example:
        >>> method = veil.get_method("dumo")(concepts=["circle"])
        >>> veil.fit(method, pipe)                 # stage 1 (EPR), then stage 2 (TLMO)
        >>> veil.Artifact.from_method(method, pipe).save("erased/")
    """

    config_class = DuMoConfig
    multi_concept = (
        "One eraser per concept (its own EPR and time-scale table, behind its own gate), each trained on "
        "the steps that draw its concept; their residuals add up when sampling."
    )
    model_presets = MODEL_PRESETS
    pipeline_export_refusal = "adds a trained EPR network beside the UNet"
    optimizer_class = torch.optim.AdamW

    def __init__(self, config=None, **kwargs):
        self._stage = "epr"
        super().__init__(config, **kwargs)
        self.eprs = {}  # concept -> DuMoEPR
        self.time_scales = {}  # concept -> Parameter (TIME_ROWS, num_slots), float32
        self._pending = {}  # concept -> tensors loaded before the EPR could be built
        self._handles = []
        self._bypass = 0
        self._training_concept = None  # while training: only this concept's EPR, ungated
        self._embeds = {}
        self._num_train_timesteps = 1000
        self.stats = {"epr_forward_calls": 0, "epr_skipped": 0}
        # Which prompts are about each concept; the method's own training encodes are not remembered.
        self._gate = PromptGate(lambda: self.config, capturing=lambda: not self._bypass)
        self._trajectories = TrajectoryPool(self.config.trajectory_batch)

    # stages: EPR (max_train_steps), then TLMO (tlmo_max_train_steps) unless it has none ----------------
    def stages(self):
        epr = Stage("epr", int(self.config.max_train_steps))
        return [epr, Stage("tlmo", int(self.config.tlmo_max_train_steps))] if self.config.tlmo_max_train_steps > 0 else [epr]

    def set_stage(self, stage):
        if stage not in STAGES:
            raise VeilError(f"DuMo has no stage {stage!r}; its stages are {', '.join(STAGES)}.")
        self._stage = stage
        self._trajectories.clear()  # trajectories of the last stage's model

    # installation ---------------------------------------------------------------------------------
    def attach(self, pipe):
        if self.attached_to is pipe:
            return
        if self.attached_to is not None:
            raise VeilError("This DuMo method is already attached to another pipeline; detach it first.")
        model_fingerprint(pipe.unet)  # cache the base fingerprint while the pipeline is untouched
        self._build(pipe.unet)
        self._num_train_timesteps = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
        # No public door passes residuals through a pipeline call (`pipe(...)` forwards no UNet kwargs),
        # so a forward pre-hook adds them to every UNet call's `down_block_additional_residuals` and
        # `mid_block_additional_residual`; removing the hook restores the original exactly.
        self._handles = [pipe.unet.register_forward_pre_hook(self._unet_pre_hook, with_kwargs=True)]
        if self.config.gate_enabled:
            # SDXL's prompt states carry a pooled row: the gate compares token states.
            self._gate.attach(pipe, {c: phrasings(self.config, c) for c in self.config.concepts},
                              lambda phrase: token_states(pipe, self._prompt_embeds(pipe, [phrase]))[0])
        self.attached_to = pipe

    def detach(self, pipe):
        if self.attached_to is not pipe:
            return
        for handle in self._handles:
            handle.remove()
        self._gate.detach()
        self._handles = []
        self.attached_to = None

    @contextlib.contextmanager
    def disabled(self, pipe):
        self._bypass += 1
        try:
            yield
        finally:
            self._bypass -= 1

    @contextlib.contextmanager
    def _training_view(self, concept):
        """Only ``concept``'s EPR, gate off: each concept's eraser is trained on its own."""
        previous, self._training_concept = self._training_concept, concept
        try:
            yield
        finally:
            self._training_concept = previous

    def _build(self, unet):
        for concept in self.config.concepts:
            if concept in self.eprs:
                continue
            pending = dict(self._pending.get(concept) or {})
            epr = DuMoEPR.from_unet(unet, load_weights_from_unet=not pending)
            scale = pending.pop("time_scale", None)
            scale = torch.ones(TIME_ROWS, epr.num_slots) if scale is None else scale
            if pending:
                _load_strict(epr, pending, concept)
            if tuple(scale.shape) != (TIME_ROWS, epr.num_slots):
                raise VeilError(
                    f"The time-scale table of {concept!r} has shape {tuple(scale.shape)}, but this UNet needs "
                    f"({TIME_ROWS}, {epr.num_slots}); was it made for another model?"
                )
            epr.requires_grad_(False)
            if self.config.gradient_checkpointing:
                epr.enable_gradient_checkpointing()
            self._pending.pop(concept, None)
            self.eprs[concept] = epr
            self.time_scales[concept] = torch.nn.Parameter(scale.to(unet.device, torch.float32), requires_grad=False)

    # training -------------------------------------------------------------------------------------------
    def trainable_parameters(self):
        if self._stage == "tlmo":
            return [self.time_scales[c] for c in self.config.concepts if c in self.time_scales]
        return [p for c in self.config.concepts if c in self.eprs for p in self.eprs[c].parameters()]

    def optimizer_groups(self):
        if self._stage == "tlmo":  # no weight decay: it would pull the scales towards zero
            return {"tlmo": [{"params": self.trainable_parameters(), "lr": self.config.tlmo_learning_rate, "weight_decay": 0.0}]}
        return {"epr": [{"params": self.trainable_parameters(), "lr": self.config.learning_rate,
                         "weight_decay": self.config.adam_weight_decay}]}

    def after_step(self, phase):
        if phase == "tlmo":
            with torch.no_grad():
                for scale in self.time_scales.values():
                    scale.clamp_(min=0.0)

    def _prompt_embeds(self, pipe, prompts):
        key = tuple(prompts)
        if key not in self._embeds:
            with self.disabled(pipe):
                self._embeds[key] = encode_guidance_prompts(pipe, list(prompts))
        return self._embeds[key]

    def anchor_pool(self, concept):
        """The anchor prompts used for ``concept``: the configured pool minus prompts naming it or a synonym."""
        def words(text):
            return " " + " ".join(re.findall(r"\w+", text.lower())) + " "

        names = [words(p) for p in phrasings(self.config, concept)]
        pool = [p for p in self.config.anchor_prompts if not any(name in words(p) for name in names)]
        if not pool:
            raise VeilError(f"Every anchor prompt names {concept!r}; add anchor_prompts that do not.")
        return pool

    @torch.no_grad()
    def make_batch(self, pipe, generator):
        config = self.config
        uncond = self._prompt_embeds(pipe, [""])

        def draw(generator):
            step = config.draw_sample(generator, phrases="several")  # the concept or a synonym, alone or in a context
            info = {"group": config.concepts[step.concept], "anchor": step.anchor}
            if self._stage == "epr" and config.epr_preserve_weight > 0:
                # A concept to keep, in the same context: EPR must leave its prediction as it was.
                keep = config.epr_preserve_concepts[int(torch.randint(len(config.epr_preserve_concepts), (1,), generator=generator))]
                info["preserve"] = config.place(step.context, keep)
            # batch_size trajectories of the prompt, each from its own noise.
            return self._prompt_embeds(pipe, [step.prompt]).expand(config.batch_size, -1, -1), step.t_encs, info

        # x_t from the erased model, each concept's trajectories under its own view.
        latents, cond, t_encs, info = self._trajectories.next(
            pipe, draw, uncond, num_inference_steps=config.ddim_steps, guidance_scale=config.start_guidance,
            generator=generator, view=self._training_view, sample_size=latent_size(pipe, config.resolution),
        )
        t_encs, cond = t_encs * config.batch_size, cond[:1]  # the latents come trajectory after trajectory
        concept = info["group"]
        anchor = self._prompt_embeds(pipe, [info["anchor"]])  # the empty prompt, or the context without the concept
        timesteps = trajectory_timesteps(pipe, t_encs, config.ddim_steps)  # each latent at its own noise level
        batch = latents.shape[0]
        cond = cond.expand(batch, -1, -1)
        states = [anchor.expand(batch, -1, -1), cond]
        if "preserve" in info:
            states.append(self._prompt_embeds(pipe, [info["preserve"]]).expand(batch, -1, -1))
        with self.disabled(pipe):  # the original model's predictions, in one call
            targets = pipe.unet(
                latents.repeat(len(states), 1, 1, 1), timesteps.repeat(len(states)), encoder_hidden_states=torch.cat(states),
            ).sample.chunk(len(states))
        target = negative_guidance_target(targets[0], targets[1], config.negative_guidance)
        out = {"concept": concept, "latents": latents, "timesteps": timesteps, "cond": cond, "target": target}
        if "preserve" in info:
            out["preserve_cond"], out["preserve_target"] = states[2], targets[2]
        if self._stage == "tlmo":
            # Preservation at the same x_t as the erase term (docs/methods/dumo.md), one anchor per sample.
            pool = self.anchor_pool(concept)
            picks = torch.randint(len(pool), (batch,), generator=generator).tolist()
            anchors = torch.cat([self._prompt_embeds(pipe, [pool[i]]) for i in picks])
            with self.disabled(pipe):
                out["anchor_target"] = pipe.unet(latents, timesteps, encoder_hidden_states=anchors).sample
            out["anchors"] = anchors
        return out

    def loss(self, pipe, batch, phase="epr"):
        latents, timesteps = batch["latents"], batch["timesteps"]
        with self._training_view(batch["concept"]):
            if phase != "tlmo":
                if "preserve_cond" not in batch:
                    noise_pred = pipe.unet(latents, timesteps, encoder_hidden_states=batch["cond"]).sample
                    return F.mse_loss(noise_pred.float(), batch["target"].float())
                # One UNet call for the concept and the concept to keep.
                noise_pred, keep_pred = pipe.unet(
                    torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                    encoder_hidden_states=torch.cat([batch["cond"], batch["preserve_cond"]]),
                ).sample.chunk(2)
                erase = F.mse_loss(noise_pred.float(), batch["target"].float())
                keep = F.mse_loss(keep_pred.float(), batch["preserve_target"].float())
                return erase + self.config.epr_preserve_weight * keep
            # One UNet call for the concept and its anchors.
            noise_pred, anchor_pred = pipe.unet(
                torch.cat([latents, latents]), torch.cat([timesteps, timesteps]),
                encoder_hidden_states=torch.cat([batch["cond"], batch["anchors"]]),
            ).sample.chunk(2)
        erase = F.mse_loss(noise_pred.float(), batch["target"].float())
        preserve = F.mse_loss(anchor_pred.float(), batch["anchor_target"].float())
        return erase + self.config.preserve_weight * preserve

    # the residuals -------------------------------------------------------------------------------------
    def _unet_pre_hook(self, module, args, kwargs):
        if self._bypass or not self.eprs:
            return None
        sample = args[0] if len(args) > 0 else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        if context is None:
            return None
        residuals = self.residuals(
            sample, timestep, context, kwargs.get("cross_attention_kwargs"), kwargs.get("added_cond_kwargs")
        )
        if residuals is None:
            return None
        down, mid = residuals
        given_down, given_mid = kwargs.get("down_block_additional_residuals"), kwargs.get("mid_block_additional_residual")
        if given_down is not None and given_mid is None:
            raise VeilError(
                "DuMo cannot share down_block_additional_residuals with a T2I-Adapter; pass the adapter's "
                "residuals as down_intrablock_additional_residuals."
            )
        if given_down is not None:  # e.g. a ControlNet: residuals add up
            down = [a + b for a, b in zip(given_down, down)]
            mid = given_mid + mid
        return args, dict(kwargs, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)

    def residuals(self, sample, timestep, encoder_hidden_states, cross_attention_kwargs=None, added_cond_kwargs=None):
        """The summed, scaled and gated residuals of every concept's EPR for one UNet call, or ``None``
        when every EPR was skipped (the UNet then runs exactly as the original)."""
        batch = sample.shape[0]
        timesteps = timestep if torch.is_tensor(timestep) else torch.tensor([timestep])
        timesteps = timesteps.to(sample.device).reshape(-1).expand(batch)
        bucket = max(1, self._num_train_timesteps // TIME_ROWS)
        rows = (timesteps.float() // bucket).long().clamp(0, TIME_ROWS - 1)  # (batch,)
        gates = None if self._training_concept is not None else self.gates(sample, encoder_hidden_states)
        total_down, total_mid = None, None
        for concept in self.config.concepts:
            if self._training_concept is not None and concept != self._training_concept:
                continue
            epr, scale = self.eprs[concept], self.time_scales[concept]
            if scale.device != sample.device:
                epr.to(sample.device)
                scale.data = scale.data.to(sample.device)
            if self.config.apply_time_scale or self._training_concept is not None:
                factors = scale[rows]  # (batch, slots)
            else:  # the release's nudity path: the residuals as EPR gives them
                factors = torch.ones_like(scale[rows])
            index = None
            if gates is not None:
                gate = gates[concept]
                active = gate > 0
                if not bool(active.any()):
                    self.stats["epr_skipped"] += 1
                    continue
                factors = factors * gate[:, None]
                if not bool(active.all()):
                    index = active.nonzero().squeeze(1)
            self.stats["epr_forward_calls"] += 1
            pick = (lambda x: x) if index is None else (lambda x: x.index_select(0, index))
            added = None if added_cond_kwargs is None else {k: pick(v) for k, v in added_cond_kwargs.items()}
            down, mid = epr(pick(sample), pick(timesteps), pick(encoder_hidden_states), cross_attention_kwargs, added)
            factors = pick(factors)
            outputs = [r * factors[:, i, None, None, None].to(r.dtype) for i, r in enumerate([*down, mid])]
            if index is not None:  # rows the gate skipped get exact zeros
                outputs = [r.new_zeros((batch,) + r.shape[1:]).index_copy(0, index, r) for r in outputs]
            if total_down is None:
                total_down, total_mid = outputs[:-1], outputs[-1]
            else:
                total_down = [a + b for a, b in zip(total_down, outputs[:-1])]
                total_mid = total_mid + outputs[-1]
        return None if total_down is None else (total_down, total_mid)

    # the gate ----------------------------------------------------------------------------------------------
    def gates(self, sample, encoder_hidden_states):
        """Per concept, the per-sample gate ``(batch,)``: ``facilitate · max(cos, token overlap)``,
        zero below ``gate_threshold`` (:class:`veil.methods.gate.PromptGate`); ``None`` when the gate is off
        (every residual at full strength)."""
        if not self.config.gate_enabled:
            return None
        return self._gate.gates(sample, encoder_hidden_states)

    # persistence ---------------------------------------------------------------------------------------------
    def state_dict(self):
        tensors = {}
        for concept in self.config.concepts:
            if concept in self.eprs:
                for name, tensor in self.eprs[concept].state_dict().items():
                    tensors[f"{PREFIX}{concept}.{name}"] = tensor.detach()
                tensors[f"{PREFIX}{concept}.time_scale"] = self.time_scales[concept].detach()
            elif concept in self._pending:
                tensors.update({f"{PREFIX}{concept}.{k}": v for k, v in self._pending[concept].items()})
        return tensors

    def load_state_dict(self, state_dict):
        grouped = {c: {} for c in self.config.concepts}
        for key, tensor in state_dict.items():
            concept = next((c for c in grouped if key.startswith(f"{PREFIX}{c}.")), None)
            if concept is None:
                raise VeilError(f"The tensor {key!r} belongs to no DuMo concept of this config ({', '.join(grouped)}).")
            grouped[concept][key[len(PREFIX) + len(concept) + 1:]] = tensor
        for concept, tensors in grouped.items():
            if not tensors:
                continue
            if concept not in self.eprs:
                self._pending[concept] = tensors
                continue
            tensors = dict(tensors)
            scale = tensors.pop("time_scale", None)
            _load_strict(self.eprs[concept], tensors, concept)
            if scale is not None:
                if scale.shape != self.time_scales[concept].shape:
                    raise VeilError(f"The time-scale table of {concept!r} has shape {tuple(scale.shape)}, expected {tuple(self.time_scales[concept].shape)}.")
                with torch.no_grad():
                    self.time_scales[concept].copy_(scale)

    def time_scale(self, concept=None):
        """The learned TLMO table of ``concept`` (default: the first) as float32 ``(20, num_slots)``."""
        concept = self.config.concepts[0] if concept is None else concept
        if concept in self.time_scales:
            return self.time_scales[concept].detach().float().cpu().numpy()
        if concept in self._pending and "time_scale" in self._pending[concept]:
            return self._pending[concept]["time_scale"].float().cpu().numpy()
        if concept in self._pending:  # weights without a table: it starts at ones, as `_build` makes it
            slots = 1 + sum(1 for k in self._pending[concept] if re.fullmatch(r"dumo_down_blocks\.\d+\.weight", k))
            return np.ones((TIME_ROWS, slots), np.float32)
        raise VeilError(f"No time-scale table for {concept!r} yet; attach or train the method first.")

    def slot_labels(self, concept=None):
        """Column names of :meth:`time_scale`, e.g. ``"down1.res0 64ch /2"``."""
        concept = self.config.concepts[0] if concept is None else concept
        if concept not in self.eprs:
            raise VeilError(f"The EPR of {concept!r} is not built yet; attach the method to a pipeline first.")
        return self.eprs[concept].slot_labels()

    def extra_files(self):
        concepts = self.config.concepts
        files = {}
        for concept in concepts:
            name = "time_scale.npy" if len(concepts) == 1 else f"time_scale_{_slug(concept)}.npy"
            buffer = io.BytesIO()
            np.save(buffer, self.time_scale(concept).astype(np.float32))
            files[name] = buffer.getvalue()
        return files


def _slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "concept"


def _load_strict(epr, tensors, concept):
    try:
        epr.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise VeilError(f"The EPR weights of {concept!r} do not fit this UNet ({first}); were they made for another model?") from None
