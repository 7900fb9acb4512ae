"""DuMo's EPR (Eraser with PRior knowledge): a trainable copy of the UNet's encoder half.

The module reads what the UNet reads (noisy latent, timestep, text states) and returns one
residual per UNet skip connection plus one for the mid block, each through a zero-initialised 1×1
convolution, so that adding them to the UNet (``down_block_additional_residuals`` /
``mid_block_additional_residual``) changes nothing until it is trained. It is a ControlNet without
the conditioning-image branch. Parameter names follow the authors' release (``conv_in``,
``time_embedding``, ``down_blocks``, ``mid_block``, ``dumo_down_blocks.{i}``, ``dumo_mid_block``) so
that their per-concept checkpoints load unchanged.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block
from torch import nn

from ...errors import VeilError

# UNet settings EPR copies; a UNet that needs anything else (class embeddings, ...) is refused in
# `epr_config_from_unet` rather than copied wrongly. SDXL's added text/time embedding is copied.
_COPIED = (
    "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
    "in_channels", "conv_in_kernel", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
    "num_attention_heads", "use_linear_projection", "only_cross_attention", "upcast_attention",
    "resnet_time_scale_shift", "time_embedding_dim", "timestep_post_act",
)
_MUST_BE = {
    "center_input_sample": False, "time_embedding_type": "positional", "time_cond_proj_dim": None,
    "class_embed_type": None, "num_class_embeds": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "time_embedding_act_fn": None, "dual_cross_attention": False,
    "attention_type": "default", "resnet_skip_time_act": False, "cross_attention_norm": None,
    "resnet_out_scale_factor": 1.0,
}


def epr_config_from_unet(unet_config):
    """The :class:`DuMoEPR` settings that mirror ``unet_config`` (an SD 1.x / 2.x or SDXL UNet)."""
    config = dict(unet_config)
    if config.get("addition_embed_type") not in (None, "text_time"):
        raise VeilError(
            f"DuMo supports SD 1.x/2.x and SDXL UNets, but this UNet sets addition_embed_type="
            f"{config['addition_embed_type']!r}; use a Stable Diffusion 1.x, 2.x or XL model."
        )
    for key, expected in _MUST_BE.items():
        if config.get(key, expected) != expected:
            raise VeilError(
                f"DuMo supports SD 1.x/2.x and SDXL UNets, but this UNet sets {key}={config[key]!r}; "
                "use a Stable Diffusion 1.x, 2.x or XL model."
            )
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise VeilError(f"DuMo needs a cross-attention mid block, but this UNet has {config['mid_block_type']!r}.")
    return {key: config[key] for key in _COPIED if key in config}


def _per_block(value, count):
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


class DuMoEPR(ModelMixin, ConfigMixin):
    """The EPR module of DuMo (Han et al., AAAI 2025, arXiv 2501.01125).

    Build it with :meth:`from_unet`; the constructor takes the UNet's own settings. Call it as
    ``down, mid = epr(sample, timestep, encoder_hidden_states)``: ``down`` is a list of
    ``num_down_residuals`` tensors matching the UNet's skip features, ``mid`` matches its mid-block
    output.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels=4,
        conv_in_kernel=3,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1.0,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=768,
        transformer_layers_per_block=1,
        attention_head_dim=8,
        num_attention_heads=None,
        use_linear_projection=False,
        only_cross_attention=False,
        upcast_attention=False,
        resnet_time_scale_shift="default",
        time_embedding_dim=None,
        timestep_post_act=None,
        addition_embed_type=None,
        addition_time_embed_dim=None,
        projection_class_embeddings_input_dim=None,
    ):
        super().__init__()
        count = len(down_block_types)
        # diffusers' UNet reads the legacy `attention_head_dim` as the number of heads when
        # `num_attention_heads` is unset; mirror that so the copied blocks have the same shapes.
        heads = _per_block(num_attention_heads or attention_head_dim, count)
        head_dims = _per_block(attention_head_dim, count)
        layers = _per_block(layers_per_block, count)
        transformer_layers = _per_block(transformer_layers_per_block, count)
        cross_dims = _per_block(cross_attention_dim, count)
        only_cross = _per_block(only_cross_attention, count)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(
            block_out_channels[0], time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act
        )
        if addition_embed_type == "text_time":  # SDXL: pooled text embedding and size/crop ids, as the UNet adds them
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        self.down_blocks = nn.ModuleList()
        self.dumo_down_blocks = nn.ModuleList([_zero_conv(block_out_channels[0])])
        for i, block_type in enumerate(down_block_types):
            in_ch = block_out_channels[max(i - 1, 0)]
            out_ch = block_out_channels[i]
            is_final = i == count - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=transformer_layers[i],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_dims[i],
                    num_attention_heads=heads[i],
                    downsample_padding=downsample_padding,
                    use_linear_projection=use_linear_projection,
                    only_cross_attention=only_cross[i],
                    upcast_attention=upcast_attention,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    attention_head_dim=head_dims[i] if head_dims[i] is not None else out_ch,
                )
            )
            # One residual per resnet layer, plus one for the downsampler (all but the last block).
            for _ in range(layers[i] + (0 if is_final else 1)):
                self.dumo_down_blocks.append(_zero_conv(out_ch))
        self.mid_block = UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=transformer_layers[-1],
            in_channels=block_out_channels[-1],
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift,
            cross_attention_dim=cross_dims[-1],
            num_attention_heads=heads[-1],
            resnet_groups=norm_num_groups,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
        self.dumo_mid_block = _zero_conv(block_out_channels[-1])

    # construction -----------------------------------------------------------------------------------
    @classmethod
    def from_unet(cls, unet, load_weights_from_unet=True):
        """An EPR shaped like ``unet``'s encoder; with ``load_weights_from_unet`` its weights are copied
        from ``unet`` (the prior knowledge) and the output convolutions are zero, so it starts as the
        identity. Without, the weights are left uninitialised for the caller to load."""
        with torch.device("meta"):  # no time spent on a random initialisation that is overwritten
            epr = cls(**epr_config_from_unet(unet.config))
        epr = epr.to_empty(device=unet.device)
        nn.Module.to(epr, dtype=unet.dtype)  # plain cast: ModelMixin.to warns about fp32-only modules EPR lacks
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"):
                if hasattr(epr, name):
                    getattr(epr, name).load_state_dict(getattr(unet, name).state_dict())
            with torch.no_grad():
                for conv in [*epr.dumo_down_blocks, epr.dumo_mid_block]:
                    conv.weight.zero_()
                    conv.bias.zero_()
        epr.eval()
        return epr

    # introspection ---------------------------------------------------------------------------------
    @property
    def num_down_residuals(self):
        return len(self.dumo_down_blocks)

    @property
    def num_slots(self):
        """Residual slots: every skip feature plus the mid block (13 for SD 1.x)."""
        return len(self.dumo_down_blocks) + 1

    def slot_labels(self):
        """A short name per slot, e.g. ``"down1.res0 64ch /2"``, for tables and heat maps."""
        config = self.config
        layers = _per_block(config.layers_per_block, len(config.down_block_types))
        labels, scale = [f"conv_in {config.block_out_channels[0]}ch /1"], 1
        for i, channels in enumerate(config.block_out_channels):
            labels += [f"down{i}.res{j} {channels}ch /{scale}" for j in range(layers[i])]
            if i < len(config.block_out_channels) - 1:
                scale *= 2
                labels.append(f"down{i}.downsample {channels}ch /{scale}")
        labels.append(f"mid {config.block_out_channels[-1]}ch /{scale}")
        return labels

    # forward ------------------------------------------------------------------------------------------
    def forward(self, sample, timestep, encoder_hidden_states, cross_attention_kwargs=None, added_cond_kwargs=None):
        """Residuals for ``sample`` ``(batch, channels, h, w)`` at ``timestep`` (scalar or ``(batch,)``);
        ``added_cond_kwargs`` (``text_embeds``, ``time_ids``) as the UNet takes them, on SDXL.

        Returns:
            `tuple`: (list of down residuals, mid residual), already through the 1×1 convolutions.
        """
        timesteps = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        timesteps = timesteps.to(sample.device).reshape(-1).expand(sample.shape[0])
        # Timesteps returns float32; the embedding may run in half precision.
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))
        if self.config.addition_embed_type == "text_time":
            if not added_cond_kwargs:
                raise VeilError("This EPR copies an SDXL UNet and needs added_cond_kwargs (text_embeds, time_ids).")
            time_ids = added_cond_kwargs["time_ids"]
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(time_ids.shape[0], -1)  # (batch, 6·dim)
            add_embeds = torch.cat([added_cond_kwargs["text_embeds"], time_embeds.to(added_cond_kwargs["text_embeds"].dtype)], dim=-1)
            emb = emb + self.add_embedding(add_embeds.to(emb.dtype))

        hidden = self.conv_in(sample)
        features = [hidden]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, outputs = block(
                    hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                hidden, outputs = block(hidden_states=hidden, temb=emb)
            features.extend(outputs)
        hidden = self.mid_block(
            hidden, emb, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs
        )
        down = [conv(feature) for conv, feature in zip(self.dumo_down_blocks, features)]
        return down, self.dumo_mid_block(hidden)


def _zero_conv(channels):
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def count_parameters(module):
    """Number of parameters of ``module`` (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
