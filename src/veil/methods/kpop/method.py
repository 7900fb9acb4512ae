"""KPOP: hiding and recovering knowledge behind a learnable prompt (Bui et al., arXiv 2403.12326)."""

import contextlib
import os

import torch
import torch.nn.functional as F

from ...architectures.sdxl import token_states
from ...errors import VeilError
from ...registry import register_method
from ...training.hardware import latent_size
from ...training.prediction import to_x0
from ...training.sampling import (
    PromptCache,
    TrajectoryPool,
    encode_prompts,
    negative_guidance_target,
    trajectory_timesteps,
)
from ..base import Stage, phrasings
from ..gate import GateSettings, PromptGate
from ..weights import WeightEditMethod, select_unet_parameters
from .config import KPOPConfig
from .model import KeyPrompts, install_keyed_attention, keyed_attention, select_key_sites
from .presets import MODEL_PRESETS


def token_noise(tokens, scale, generator):
    """Random directions, one per token of ``tokens`` (``(..., m, width)``, on the CPU), each ``scale`` times its token's norm."""
    noise = torch.randn(tokens.shape, generator=generator)
    return noise * (scale * tokens.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))


def secret_generator():
    """A generator seeded from the operating system's randomness: what a key starts from must not follow from
    anything the public artifact records (its config holds ``seed``)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


STAGES = ("main", "key_finish")
SEALED = "key_sealed"  # a checkpoint's key part, sealed under the passphrase (KPOP.checkpoint_state_dict)


@register_method("kpop")
class KPOP(WeightEditMethod):
    """KPOP (Bui, Doan, Le, Montague, Abraham, Phung, arXiv 2403.12326): hide a concept, recover it with a key.

    Trains a subset of the UNet (``train_method``) so that the concept's prediction follows the
    negative-guidance target without the key and the original's prediction with it, and learns the
    key ``(P_k, P_v)`` per concept, appended to the cross-attention context of ``layers``; text
    encoder and VAE stay frozen. The public artifact is the UNet delta alone; the key is a separate
    file (:mod:`veil.methods.kpop.keys`), unlocked with :meth:`unlocked`.

    Example:
        >>> method = KPOP(KPOPConfig.paper(["circle"], max_train_steps=300))
        >>> veil.fit(method, pipe)  # with key_finish_steps, then the key alone
        >>> veil.Artifact.from_method(method, pipe).save("hidden/")
        >>> veil.methods.kpop.keys.save_key(method.key, "circle.veilkey", passphrase=secret)
        >>> with method.unlocked(pipe, method.key):
        ...     image = pipe("a circle").images[0]
    """

    config_class = KPOPConfig
    multi_concept = (
        "One key per concept, which the UNet learns to answer on the steps that draw its concept, written "
        "together to one key file that can be split per concept (Key.subset)."
    )
    model_presets = MODEL_PRESETS

    def __init__(self, config=None, **kwargs):
        self._stage = "main"
        super().__init__(config, **kwargs)
        self.key_prompts = None  # created when training starts; never part of state_dict()
        self._retain = None
        self._pending = []  # undo callbacks of the current training phase (see loss / after_step)
        self._resumed_without_key = False
        # The passphrase that seals the key's part of training checkpoints (veil hide --passphrase-file); None: kept plain.
        self.checkpoint_passphrase = None
        self.last_losses = {}
        self._trajectories = TrajectoryPool(self.config.trajectory_batch)
        self._prompts = PromptCache()  # the phrasings, their contexts and anchors
        self._prefetched = False

    def stages(self):
        """``main`` (the UNet and the key), then ``key_finish`` (the key alone) when ``key_finish_steps`` > 0."""
        main = Stage("main", int(self.config.max_train_steps))
        return [main, Stage("key_finish", int(self.config.key_finish_steps))] if self.config.key_finish_steps > 0 else [main]

    def set_stage(self, stage):
        if stage not in STAGES:
            raise VeilError(f"KPOP has no stage {stage!r}; its stages are {', '.join(STAGES)}.")
        self._stage = stage
        self._trajectories.clear()  # trajectories of the model before this stage

    # installation: the shared UNet weight edit, on the layers that read the key -----------------------------
    def edited_parameter_names(self, unet):
        return select_unet_parameters(unet, self.config.train_method)

    def attach(self, pipe):
        if self.attached_to is not pipe:
            select_key_sites(pipe.unet, self.config.layers)  # refuse a UNet without those layers now, not mid-training
        super().attach(pipe)

    def detach(self, pipe):
        if self.attached_to is pipe:
            self._release()
        super().detach(pipe)

    @contextlib.contextmanager
    def unlocked(self, pipe, key=None, routed=False, gate=None):
        """Inside the block, ``pipe`` draws with ``key`` attached to its cross-attention.

        Args:
            key: a :class:`veil.methods.kpop.keys.Key` (from :func:`veil.methods.kpop.keys.load_key_for`), a mapping
                ``{concept: (P_k, P_v)}``, or ``None`` for this method's own trained key. Several
                concepts' keys are appended one after another.
            routed: attach the key only to the prompts about its concepts (or their synonyms), told from each
                prompt's text states as DuMo's gate tells them (:class:`veil.methods.gate.PromptGate`); every
                other prompt is drawn by the public model bit for bit. A key attached to every prompt turns
                other prompts into its concept, so with ``routed`` the key holder's pipeline draws as the
                original model did. Each prompt gets the keys of the concepts it is about (each key was trained
                alone, on its own concept); without ``routed`` every prompt gets every key.
            gate: the gate's numbers for ``routed`` (:class:`veil.methods.gate.GateSettings`; default: its defaults).
        """
        from .keys import Key

        if key is None:
            key = self.key
            if key is None:
                raise VeilError("This method holds no key; pass the key read with veil.methods.kpop.keys.load_key_for.")
        if not isinstance(key, Key):
            key = Key(key)
        strangers = [c for c in key.concepts if c not in self.config.concepts]
        if strangers:
            raise VeilError(
                f"The key holds concept {strangers[0]!r}, which this artifact does not hide "
                f"({', '.join(map(repr, self.config.concepts))}); pass the key written with this artifact."
            )
        width = pipe.unet.config.cross_attention_dim  # the prompt states' width (two encoders' together on SDXL)
        pairs = [key[c] for c in self.config.concepts if c in key]
        if any(k.shape[-1] != width for k, _ in pairs):
            raise VeilError(f"The key's width does not match this model's prompt states ({width}); was it made for another model?")
        key_tokens = torch.cat([k for k, _ in pairs]).to(pipe.device, pipe.unet.dtype)
        value_tokens = torch.cat([v for _, v in pairs]).to(pipe.device, pipe.unet.dtype)
        sites = select_key_sites(pipe.unet, self.config.layers)
        if not routed:
            with keyed_attention(pipe.unet, sites, key_tokens, value_tokens):
                yield
            return
        with self._routed(pipe, [c for c in self.config.concepts if c in key], [k.shape[0] for k, _ in pairs],
                          gate or GateSettings()) as route:
            with keyed_attention(pipe.unet, sites, key_tokens, value_tokens):
                route([pipe.unet.attn_processors[name] for name in sites])
                yield

    @contextlib.contextmanager
    def _routed(self, pipe, concepts, sizes, settings):
        """Yields ``route(processors)``: from then on each UNet call sets the processors' ``key_rows`` to the key
        tokens each sample sees: those of the ``concepts`` its prompt is about (``sizes``: each concept's number of
        key tokens, in the key's order; ``None``: every sample sees every key)."""
        prompt_gate = PromptGate(lambda: settings)
        with torch.no_grad():
            prompt_gate.attach(pipe, {c: phrasings(self.config, c) for c in concepts},
                              lambda phrase: token_states(pipe, encode_prompts(pipe, [phrase]))[0])
        processors = []

        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
            rows = None
            if context is not None:
                about = torch.stack([g > 0 for g in prompt_gate.gates(sample, context).values()], dim=1)  # (batch, concepts)
                if not bool(about.all()):
                    rows = about.repeat_interleave(torch.tensor(sizes, device=about.device), dim=1)  # (batch, key tokens)
            for processor in processors:
                processor.key_rows = rows

        handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield processors.extend
        finally:
            handle.remove()
            prompt_gate.detach()

    # the key ----------------------------------------------------------------------------------------------
    @property
    def key(self):
        """The trained key as a :class:`veil.methods.kpop.keys.Key` (a detached copy), or ``None`` before training."""
        return None if self.key_prompts is None else self.key_prompts.to_key()

    def load_key(self, key):
        """Start from (or continue with) an existing key; needs the method attached."""
        self._ensure_key(self.attached_to)
        self.key_prompts.load_key(key)
        self._resumed_without_key = False

    def _ensure_key(self, pipe):
        if self.key_prompts is not None:
            return
        if pipe is None:
            raise VeilError("Attach the method to a pipeline before training its key.")
        config = self.config
        embeds = token_states(pipe, encode_prompts(pipe, config.concepts))  # (concepts, tokens, width)
        # P_k = P_v = E(c)[:m]; a context shorter than m tokens is repeated.
        index = torch.arange(config.num_key_tokens) % embeds.shape[1]
        start = embeds[:, index].float().cpu()
        if not config.key_init_noise > 0:
            # Checked here rather than in the config, so that artifacts saved with 0 still load.
            raise VeilError(
                "key_init_noise is 0, so the key would start at the concept's own text states and anyone could train "
                "the same key again from the public artifact's settings; set key_init_noise above 0 (default 1)."
            )
        # A secret starting point: the OS's randomness, since the artifact's config (public) holds the seed.
        generator = secret_generator()
        if config.key_start == "random":
            # Nothing public in it: P_k and P_v each a random direction of E(c)[:m]'s norm, drawn as decoys are.
            pair = torch.randn((2, *start.shape), generator=generator)
            pair = pair * (start.norm(dim=(-2, -1), keepdim=True) / pair.norm(dim=(-2, -1), keepdim=True))
            self.key_prompts = KeyPrompts(config.concepts, pair[0], pair[1]).to(pipe.device)
            return
        start = start + token_noise(start, config.key_init_noise, generator)
        self.key_prompts = KeyPrompts(config.concepts, start).to(pipe.device)

    def bench_keys(self, concepts):
        """Keys for the bench's rows about ``concepts`` (one concept, or several hidden together): the right one,
        other concepts' keys relabelled as theirs (when this artifact hides enough others), and a random one of
        matched norm."""
        from .keys import Key, random_key_like

        concepts = [concepts] if isinstance(concepts, str) else list(concepts)
        key = self.key.subset(concepts)
        keys = {"with_key": key}
        others = [c for c in self.config.concepts if c not in concepts]
        if len(others) >= len(concepts):
            keys["wrong_key"] = Key({c: self.key[other] for c, other in zip(concepts, others)})
        keys["random_key"] = random_key_like(key, torch.Generator().manual_seed(int(self.config.seed) + 1))
        return keys

    # training -----------------------------------------------------------------------------------------------
    def trainable_parameters(self):
        return self.edit.parameters() + ([] if self.key_prompts is None else list(self.key_prompts.parameters()))

    def optimizer_groups(self):
        """A UNet step on ``w1·L_hide + w2·L_recover (+ retain)``, then a key step on ``L_recover``; with
        ``key_update="joint"`` one step for both."""
        if self._resumed_without_key:
            # A fresh key beside a half-trained UNet would train on silently and unlock less.
            raise VeilError(
                "This checkpoint holds the UNet but not the key (it was saved with state_dict, not "
                "checkpoint_state_dict), so KPOP cannot resume from it; start afresh without --resume."
            )
        self._ensure_key(self.attached_to)
        unet = [{"params": self.edit.parameters(), "lr": self.config.learning_rate}]
        key = [{"params": list(self.key_prompts.parameters()), "lr": self.config.key_learning_rate}]
        if self._stage == "key_finish":
            return {"key": key}
        if not self.config.key_learning_rate:
            return {"unet": unet}  # the key keeps its secret start; only the UNet learns to answer it
        if self.config.key_update == "joint":
            return {"unet": unet + key}  # one optimizer, two learning rates; loss() lets the key's gradient through
        return {"unet": unet, "key": key}

    def _retain_embeds(self, pipe):
        """Text states of the retain concepts, ``(n, tokens, width)``, encoded once."""
        if self._retain is None and self.config.retain_concepts:
            self._retain = encode_prompts(pipe, self.config.retain_concepts)
        return self._retain

    def _prefetch_prompts(self, pipe):
        """Encode every prompt a step can draw in batches, when the run is long enough to draw a good share of them:
        a step draws about three (the concept's, its anchor, a retained concept's) and a batched prompt costs a quarter."""
        config = self.config
        contexts = [None] + sorted(set(config.contexts))
        prompts = {config.place(c, p) for concept in config.concepts for p in phrasings(config, concept) for c in contexts}
        prompts |= {config.place(c, config.context_guide) for c in contexts if c is not None} | {""}
        prompts |= {config.place(c, keep) for keep in config.context_retain_concepts for c in contexts if c is not None}
        prompts |= set(config.decoy_word_list)
        steps = config.key_finish_steps if self._stage == "key_finish" else config.max_train_steps
        if len(prompts) <= 12 * steps:
            self._prompts.prefetch(pipe, prompts)
        self._prefetched = True

    @torch.no_grad()
    def make_batch(self, pipe, generator):
        config = self.config
        self._release()  # a phase that raised before its step may have left its key installed
        self._ensure_key(pipe)
        if not self._prefetched:
            self._prefetch_prompts(pipe)

        finishing = self._stage == "key_finish"  # the key alone: L_recover (and the keyed retain term) only
        retained = config.key_retain_weight > 0 if finishing else config.retain_weight > 0 or config.key_retain_weight > 0

        # One concept per step, so that one concept's key is trained on it; one of its phrasings, alone or
        # in one of the contexts.
        def draw(generator):
            step = config.draw_sample(generator, phrases="always")
            info = {"concept": step.concept, "anchor": step.anchor, "context": step.context}
            if step.context is not None and config.context_retain_concepts:
                keeps = config.context_retain_concepts
                info["keep"] = keeps[int(torch.randint(len(keeps), (1,), generator=generator))]
            # batch_size trajectories of the prompt, each from its own noise.
            return self._prompts(pipe, step.prompt).expand(config.batch_size, -1, -1), step.t_encs, info

        # x_t from the public model (no key is installed here), at most trajectory_batch - 1 steps old.
        latents, cond, t_encs, info = self._trajectories.next(
            pipe, draw, self._prompts(pipe, ""), num_inference_steps=config.ddim_steps, guidance_scale=config.start_guidance,
            generator=generator, sample_size=latent_size(pipe, config.resolution),
        )
        concept = info["concept"]
        t_encs, cond = t_encs * config.batch_size, cond[:1]  # the latents come trajectory after trajectory
        # The hiding target's anchor: the empty prompt, or the context with context_guide (or nothing) in the concept's place.
        anchor = self._prompts(pipe, info["anchor"])
        timesteps = trajectory_timesteps(pipe, t_encs, config.ddim_steps)  # each latent at its own noise level
        batch = latents.shape[0]
        cond, anchor = cond.expand(batch, -1, -1), anchor.expand(batch, -1, -1)
        out = {"latents": latents, "timesteps": timesteps, "cond": cond, "concept": concept}
        states = [cond] if finishing else [anchor, cond]
        if retained:
            if "keep" in info:
                # Another concept in the step's own context: preserving it contrasts only the concept.
                out["retain_cond"] = self._prompts(pipe, config.place(info["context"], info["keep"])).expand(batch, -1, -1)
            else:
                index = int(torch.randint(len(config.retain_concepts), (1,), generator=generator))
                out["retain_cond"] = self._retain_embeds(pipe)[index : index + 1].expand(batch, -1, -1)
            states.append(out["retain_cond"])
        own = 1 if finishing else 2  # rows of the concept itself
        with self.disabled(pipe):  # the original model's predictions, in one call
            targets = pipe.unet(
                latents.repeat(len(states), 1, 1, 1), timesteps.repeat(len(states)), encoder_hidden_states=torch.cat(states)
            ).sample.chunk(len(states))
        if len(states) > own:
            out["retain_target"] = targets[own]
        out["target_recover"] = targets[own - 1]
        if finishing:
            return out
        noise_anchor, noise_cond = targets[0], targets[1]
        if config.decoy_weight > 0:
            # Directions of the decoy key, random or another word's text states; loss() gives them the key's norms.
            words = config.decoy_word_list
            if config.word_decoy_probability > 0 and float(torch.rand(1, generator=generator)) < config.word_decoy_probability:
                word = words[int(torch.randint(len(words), (1,), generator=generator))]
                states = self._prompts(pipe, word)[0]
                tokens = states[torch.arange(config.num_key_tokens) % states.shape[0]].float().cpu()  # as _ensure_key starts a key
                if config.key_init_noise > 0:
                    tokens = tokens + token_noise(tokens, config.key_init_noise, generator)
                out["decoy"] = torch.stack([tokens, tokens]).to(pipe.device)
            else:
                shape = (2, config.num_key_tokens, cond.shape[-1])
                out["decoy"] = torch.randn(shape, generator=generator).to(pipe.device)
        out["target_hide"] = negative_guidance_target(noise_anchor, noise_cond, config.negative_guidance)
        return out

    def _distance(self, pipe, noise_pred, target, batch):
        """Mean squared error on the model's output (``eps``: noise, or v on a v-prediction model) or on the clean
        latents it implies (``x0``)."""
        noise_pred, target = noise_pred.float(), target.float()
        if self.config.loss_space == "x0":
            # The clean latents each prediction implies, whatever the model predicts (noise or v).
            latents, timesteps = batch["latents"], batch["timesteps"]
            noise_pred = to_x0(noise_pred, latents, timesteps, pipe.scheduler)
            target = to_x0(target, latents, timesteps, pipe.scheduler)
        return F.mse_loss(noise_pred, target)

    def loss(self, pipe, batch, phase="unet"):
        config = self.config
        self._release()
        unet, size = pipe.unet, batch["latents"].shape[0]
        key_tokens, value_tokens = self.key_prompts.pair(batch["concept"])
        if phase == "key":
            # L_recover (and the keyed retain term) for the key alone; the UNet's weights stay out of this graph.
            self._freeze(self.edit.parameters())
            self._install(unet, key_tokens, value_tokens)
            names = ["cond"] + (["retain_cond"] if config.key_retain_weight > 0 else [])
            noise_preds = unet(
                batch["latents"].repeat(len(names), 1, 1, 1), batch["timesteps"].repeat(len(names)),
                encoder_hidden_states=torch.cat([batch[name] for name in names]),
            ).sample.chunk(len(names))
            loss = self._distance(pipe, noise_preds[0], batch["target_recover"], batch)
            self.last_losses["recover_key_step"] = float(loss.detach())
            if config.key_retain_weight > 0:
                key_retain = self._distance(pipe, noise_preds[1], batch["retain_target"], batch)
                self.last_losses["key_retain_key_step"] = float(key_retain.detach())
                loss = loss + config.key_retain_weight * key_retain
            return loss
        if phase != "unet":
            raise VeilError(f"KPOP trains in the phases 'unet' and 'key', not {phase!r}.")
        # One UNet call for all terms: the concept without the key, the concept with it, and the
        # retain concept without and with it. The key is held fixed (detached) here and moves in its own step,
        # unless key_update is joint: then the keyed rows' gradient reaches it (the decoys' norms stay detached).
        rows = [("cond", False), ("cond", True)]
        rows += [("retain_cond", False)] if config.retain_weight > 0 else []
        rows += [("retain_cond", True)] if config.key_retain_weight > 0 else []
        rows += [("cond", "decoy")] if config.decoy_weight > 0 else []
        key_rows = torch.tensor([keyed is not False for _, keyed in rows], device=pipe.device).repeat_interleave(size)
        if config.key_update != "joint" or not config.key_learning_rate:
            key_tokens, value_tokens = key_tokens.detach(), value_tokens.detach()
        if config.decoy_weight > 0:
            # A key per sample: the real one, or for the decoy rows a random key of the same norms.
            decoy_k, decoy_v = (d * (t.detach().norm() / d.norm()) for d, t in zip(batch["decoy"], (key_tokens, value_tokens)))
            per_row = [(decoy_k, decoy_v) if keyed == "decoy" else (key_tokens, value_tokens) for _, keyed in rows]
            key_tokens = torch.stack([k for k, _ in per_row]).repeat_interleave(size, dim=0)
            value_tokens = torch.stack([v for _, v in per_row]).repeat_interleave(size, dim=0)
        self._install(unet, key_tokens, value_tokens, key_rows)
        noise_preds = unet(
            batch["latents"].repeat(len(rows), 1, 1, 1), batch["timesteps"].repeat(len(rows)),
            encoder_hidden_states=torch.cat([batch[name] for name, _ in rows]),
        ).sample.chunk(len(rows))
        hide = self._distance(pipe, noise_preds[0], batch["target_hide"], batch)
        recover = self._distance(pipe, noise_preds[1], batch["target_recover"], batch)
        loss = config.hide_weight * hide + config.recover_weight * recover
        self.last_losses = {"hide": float(hide.detach()), "recover": float(recover.detach())}
        terms = {"retain": config.retain_weight, "key_retain": config.key_retain_weight, "decoy": config.decoy_weight}
        for (prompt, keyed), noise_pred in list(zip(rows, noise_preds))[2:]:
            name = {False: "retain", True: "key_retain", "decoy": "decoy"}[keyed]
            target = batch["target_hide"] if name == "decoy" else batch["retain_target"]
            value = self._distance(pipe, noise_pred, target, batch)
            loss = loss + terms[name] * value
            self.last_losses[name] = float(value.detach())
        return loss

    # The keyed processors and frozen flags set up in loss() stay until the optimizer step is done:
    # gradient checkpointing re-runs the forward inside backward, which must see the same model.
    def _install(self, unet, key_tokens, value_tokens, key_rows=None):
        sites = select_key_sites(unet, self.config.layers)
        self._pending.append(install_keyed_attention(unet, sites, key_tokens.to(unet.dtype), value_tokens.to(unet.dtype), key_rows))

    def _freeze(self, params):
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)

        def unfreeze():
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

        self._pending.append(unfreeze)

    def _release(self):
        while self._pending:
            self._pending.pop()()

    def after_step(self, phase):
        self._release()

    # persistence: state_dict() is the public part only, the ``unet.`` tensors; the key goes to its own file
    # (:func:`veil.methods.kpop.keys.save_key`) --------------------------------------------------------------------
    def secret_parameters(self):
        return [] if self.key_prompts is None else list(self.key_prompts.parameters())

    def checkpoint_state_dict(self, private=None):
        """What a training checkpoint must hold to resume exactly: the public part, the key (``key.``) and
        ``private`` (the key's optimizer state, ``private.``). With :attr:`checkpoint_passphrase` set, the key's part
        and ``private`` are sealed under it as a key file is (one ``uint8`` tensor, ``key_sealed``), so that a
        checkpoint left on disk does not give the key away."""
        state = self.state_dict()
        secret = {f"private.{name}": tensor for name, tensor in (private or {}).items()}
        if self.key_prompts is not None:
            secret.update({f"key.{name}": tensor for name, tensor in self.key_prompts.to_key().tensors().items()})
        if self.checkpoint_passphrase is None:
            state.update(secret)
        elif secret:
            from .keys import sealed_tensors_bytes

            sealed = sealed_tensors_bytes(secret, self.checkpoint_passphrase)
            state[SEALED] = torch.frombuffer(bytearray(sealed), dtype=torch.uint8)
        return state

    def _unsealed(self, tensors, where):
        tensors = dict(tensors)
        if SEALED in tensors:
            from .keys import open_sealed_tensors

            sealed = tensors.pop(SEALED).numpy().tobytes()
            tensors.update(open_sealed_tensors(sealed, f"The key in {where}", self.checkpoint_passphrase))
        return tensors

    def load_checkpoint(self, tensors, where="this checkpoint"):
        return super().load_checkpoint(self._unsealed(tensors, where), where)

    def load_state_dict(self, state_dict, where="this checkpoint"):
        state_dict = {k: v for k, v in self._unsealed(state_dict, where).items() if not k.startswith("private.")}
        key_part = {k[len("key."):]: v for k, v in state_dict.items() if k.startswith("key.")}
        # Artifacts hold no key; only a training loop resuming calls optimizer_groups() after this.
        self._resumed_without_key = not key_part and self.key_prompts is None
        was = self.attached_to
        super().load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("key.")})
        if key_part:
            from .keys import Key

            key = Key.from_tensors(self.config.concepts, key_part)
            if self.key_prompts is None:
                init = torch.stack([key[c][0] for c in self.config.concepts])
                self.key_prompts = KeyPrompts(self.config.concepts, init).to(was.device if was is not None else "cpu")
            self.key_prompts.load_key(key)

    def extra_manifest(self):
        """Each concept's key fingerprint (SHA-256 over its tensors); never the key."""
        if self.key_prompts is None:
            return {}
        return {"key_fingerprint": self.key.fingerprints(), "num_key_tokens": self.config.num_key_tokens}
