"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure (Zhang et al., NeurIPS 2024)."""

import re

import torch
import torch.nn.functional as F

from ...architectures.sdxl import is_sdxl
from ...errors import VeilError
from ...registry import register_method
from ...token_slots import PromptTemplate, Vocabulary, encode, input_table
from ...training.hardware import latent_size
from ...training.sampling import PromptCache, TrajectoryPool, negative_guidance_target, trajectory_timesteps
from ..weights import WeightEditMethod
from .config import AdvUnlearnConfig
from .presets import MODEL_PRESETS

_LAYER = re.compile(r"\.layers?\.(\d+)\.")  # CLIP: encoder.layers.N.  BERT: encoder.layer.N.
_NORM = re.compile(r"layer_?norm", re.IGNORECASE)


def text_encoder_parameters(encoder, layers=(), component="all"):
    """Names of the text-encoder parameters AdvUnlearn trains: those of the transformer layers ``layers`` (empty:
    all) — every one (``all``, which adds the final layer norm where the encoder has one), the attention's
    projections (``attn``) or the MLP's (``mlp``); never the token or position embeddings."""
    names, found = [], set()
    for name, _ in encoder.named_parameters():
        match = _LAYER.search(name)
        if match is None:
            if component == "all" and "final_layer_norm" in name:
                names.append(name)
            continue
        index = int(match.group(1))
        found.add(index)
        if layers and index not in layers:
            continue
        norm, attn = bool(_NORM.search(name)), "attn" in name or ".attention." in name
        if component == "all" or (component == "attn" and attn and not norm) or (component == "mlp" and not attn and not norm):
            names.append(name)
    missing = sorted(set(layers) - found)
    if missing:
        raise VeilError(f"layers names layer {missing[0]}, but this text encoder has {len(found)} layers (0 to {len(found) - 1}); "
                        "pick layers in that range.")
    if not names:
        raise VeilError("The text encoder has no transformer layer veil can train; AdvUnlearn needs a CLIP or BERT text encoder.")
    return names


@register_method("advunlearn")
class AdvUnlearn(WeightEditMethod):
    """AdvUnlearn (Zhang et al., NeurIPS 2024, arXiv 2405.15234): adversarial training of the text encoder.

    Each step an inner attack learns soft tokens put before the concept prompt so that the edited model draws the
    concept again, then the text encoder's layers are trained on ESD's negative-guidance target for that adversarial
    prompt plus a utility term that keeps retain prompts' predictions the original's. The UNet, the VAE and the token
    embeddings stay frozen; the artifact is a text-encoder edit, and the original text encoder is the frozen teacher.
    """

    single_concept_refusal = "AdvUnlearn takes one concept per artifact; run it once for each concept."

    component = "text_encoder"
    config_class = AdvUnlearnConfig
    model_presets = MODEL_PRESETS

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self._teacher = PromptCache()  # states of the original text encoder, only filled inside disabled()
        self._templates = {}
        self._trajectories = TrajectoryPool(self.config.trajectory_batch)
        self._retain = self.config.kept_retain_prompts() if self.config.retain_weight > 0 else []
        self._adversary = None  # (attack_tokens, width): the last attack's token vectors
        self._vocabulary = None
        self._step = 0  # unlearning steps taken: the warm-up and the attacks' schedule follow it

    def edited_parameter_names(self, module):
        return text_encoder_parameters(module, self.config.layers, self.config.component)

    def attach(self, pipe):
        if is_sdxl(pipe):
            raise VeilError("AdvUnlearn edits the one text encoder of SD 1.x / 2.x; SDXL's two encoders are not supported, "
                            "so use an SD 1.x or 2.x model.")
        super().attach(pipe)

    # training ----------------------------------------------------------------------------------------
    def _template(self, pipe, prompt, slots=0):
        key = (prompt, slots)
        if key not in self._templates:
            self._templates[key] = PromptTemplate(pipe.tokenizer, suffix=prompt, num_slots=slots)
        return self._templates[key]

    def _attacking(self, step):
        config = self.config
        return step >= config.warmup_steps and config.attack_steps > 0 and (step - config.warmup_steps) % config.attack_every == 0

    def _attack(self, pipe, template, latents, timesteps, target, generator):
        """The inner attack: soft tokens in ``template``'s slots that bring the edited model's prediction for the
        prompt to the original's for the concept (``target``), by ``attack_steps`` Adam steps on their gradient
        (``pgd``) or its sign (``fast_at``); the text encoder and the UNet are held fixed."""
        config = self.config
        if self._adversary is None or config.attack_init == "random":
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(pipe)
            start = self._vocabulary.random(config.attack_tokens, generator)
            self._adversary = input_table(pipe)[start].float().clone()
        vectors = self._adversary.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([vectors], lr=config.attack_learning_rate)
        loss = torch.zeros(())
        with torch.enable_grad():
            for _ in range(config.attack_steps):
                states = encode(pipe, template, vectors=vectors).expand(latents.shape[0], -1, -1)
                noise_pred = pipe.unet(latents, timesteps, encoder_hidden_states=states).sample
                loss = F.mse_loss(noise_pred.float(), target.float())
                (grad,) = torch.autograd.grad(loss, [vectors])  # nothing reaches the text encoder's weights
                vectors.grad = grad.sign() if config.attack_method == "fast_at" else grad
                optimizer.step()
        self._adversary = vectors.detach()
        return float(loss.detach())

    @torch.no_grad()
    def make_batch(self, pipe, generator):
        config = self.config
        step, self._step = self._step, self._step + 1
        with self.disabled(pipe):  # trajectories and targets come from the original model
            uncond = self._teacher(pipe, "")

            def draw(generator):
                sample = config.draw_sample(generator, phrases="several")  # the concept or a synonym, alone or in a context
                picks = torch.randint(len(self._retain), (config.retain_batch,), generator=generator).tolist() if self._retain else []
                retain = [self._retain[i] for i in picks]
                # batch_size trajectories of the prompt and one of each retain prompt, from one batched sampling run.
                prompt = self._teacher(pipe, sample.prompt).expand(config.batch_size, -1, -1)
                cond = torch.cat([prompt] + [self._teacher(pipe, r) for r in retain])
                return cond, sample.t_encs, {"sample": sample, "retain": retain}

            latents, cond, t_encs, info = self._trajectories.next(
                pipe, draw, uncond, num_inference_steps=config.ddim_steps, guidance_scale=config.start_guidance,
                generator=generator, sample_size=latent_size(pipe, config.resolution),
            )
            sample, retain = info["sample"], info["retain"]
            k = len(t_encs)  # latents per trajectory: the prompt's trajectories come first, then each retain prompt's
            n = k * config.batch_size  # the prompt's latents
            timesteps = trajectory_timesteps(pipe, t_encs * cond.shape[0], config.ddim_steps)
            anchor = self._teacher(pipe, sample.anchor)
            # The teacher's passes in one call: the anchor and the prompt on its latents, each retain prompt on its own,
            # and the empty prompt on the prompt's latents when the unconditional term is on.
            extra = n if config.unconditional_weight > 0 else 0
            states = torch.cat([anchor.expand(n, -1, -1), cond.repeat_interleave(k, dim=0), uncond.expand(extra, -1, -1)])
            noise = pipe.unet(torch.cat([latents[:n], latents, latents[:extra]]), torch.cat([timesteps[:n], timesteps, timesteps[:extra]]),
                              encoder_hidden_states=states).sample
        noise_anchor, noise_cond = noise[:n], noise[n : 2 * n]
        noise_retain, noise_uncond = noise[2 * n : len(noise) - extra], noise[len(noise) - extra :]
        batch = {
            "latents": latents, "timesteps": timesteps, "n": n, "k": k, "retain": retain,
            "target": negative_guidance_target(noise_anchor, noise_cond, config.negative_guidance),
            "retain_target": noise_retain, "uncond_target": noise_uncond if extra else None,
            "template": self._template(pipe, sample.prompt), "adversary": None, "plain": None,
        }
        # After the warm-up the prompt carries the adversarial tokens: a new attack's, or between attacks the last one's.
        if step >= config.warmup_steps and (self._attacking(step) or self._adversary is not None):
            template = self._template(pipe, sample.prompt, config.attack_tokens)
            if self._attacking(step):
                batch["attack_loss"] = self._attack(pipe, template, latents[:n], timesteps[:n], noise_cond, generator)
            if config.plain_weight > 0:
                batch["plain"] = batch["template"]  # the prompt without the adversarial tokens, unlearned too
            batch["template"], batch["adversary"] = template, self._adversary
        return batch

    def loss(self, pipe, batch, phase="main"):
        n, k, retain, plain = batch["n"], batch["k"], batch["retain"], batch["plain"]
        latents, timesteps = batch["latents"], batch["timesteps"]
        states = [encode(pipe, batch["template"], vectors=batch["adversary"]).expand(n, -1, -1)]
        if plain is not None:  # the prompt's latents once more, under the plain prompt
            states.append(encode(pipe, plain).expand(n, -1, -1))
            latents, timesteps = torch.cat([latents[:n], latents]), torch.cat([timesteps[:n], timesteps])
        states += [encode(pipe, self._template(pipe, r)).expand(k, -1, -1) for r in retain]
        if batch["uncond_target"] is not None:  # the empty prompt on the prompt's latents, last
            states.append(encode(pipe, self._template(pipe, "")).expand(n, -1, -1))
            latents, timesteps = torch.cat([latents, latents[:n]]), torch.cat([timesteps, timesteps[:n]])
        noise_pred = pipe.unet(latents, timesteps, encoder_hidden_states=torch.cat(states)).sample.float()
        if batch["uncond_target"] is not None:
            noise_pred, uncond = noise_pred[:-n], noise_pred[-n:]
            loss_uncond = self.config.unconditional_weight * F.mse_loss(uncond, batch["uncond_target"].float())
        else:
            loss_uncond = 0.0
        target = batch["target"].float()
        loss = F.mse_loss(noise_pred[:n], target)
        if plain is not None:
            loss = loss + self.config.plain_weight * F.mse_loss(noise_pred[n : 2 * n], target)
            noise_pred = noise_pred[n:]
        if retain:
            loss = loss + self.config.retain_weight * F.mse_loss(noise_pred[n:], batch["retain_target"].float())
        return loss + loss_uncond

    # persistence -----------------------------------------------------------------------------------------
    def checkpoint_state_dict(self, private=None):
        # The attack's last tokens and the step count resume the warm-up and attack schedule where it stopped.
        state = {**super().checkpoint_state_dict(private), "advunlearn.step": torch.tensor([self._step])}
        if self._adversary is not None:
            state["advunlearn.adversary"] = self._adversary.clone()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        step = state_dict.pop("advunlearn.step", None)
        adversary = state_dict.pop("advunlearn.adversary", None)
        if step is not None:
            self._step = int(step[0])
        if adversary is not None:
            self._adversary = adversary.clone()
        super().load_state_dict(state_dict)
