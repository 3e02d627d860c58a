#!/usr/bin/env python3
"""Memory of Stable Diffusion 1.5 per alignment algorithm, estimated from the configs (issue #9).

    pip install torch diffusers transformers
    python3 scripts/sd-memory-estimate.py [--size 512] [--lora-rank 4]
    python3 scripts/sd-memory-estimate.py --model fixtures/sd-tiny --size 64

Nothing is downloaded and nothing is computed: every model is built on PyTorch's `meta`
device from SD 1.5's published configs (written out below), or with `--model DIR` from a
diffusers SD directory's `unet/config.json`, `vae/config.json` (and `text_encoder/config.json`
where present), so the parameter counts are exact and the activation figures are the bytes
autograd saves for the backward pass of one image (counted with
`torch.autograd.graph.saved_tensors_hooks`), in fp32 and without gradient checkpointing.
docs/real-models.md turns them into per-algorithm totals. The latent side is
size / 2^(len(vae block_out_channels) - 1) (size / 8 for SD 1.5); the UNet's cross-attention
context is 77 tokens of the UNet config's `cross_attention_dim`.

Counting: saved tensors are deduplicated by the storage they keep alive (`untyped_storage()`,
which meta tensors have too, so a view saved by one op and its base saved by another count
once, at the storage's size), and storages of the model's own parameters (which linear and
convolution layers save for the input gradient) are left out: they are resident anyway and do
not grow with the batch. `--legacy-count` restores the earlier counting (distinct tensor
objects, parameters included), which overcounts both ways.

Attention is computed as burn does it: the softmax probabilities materialised. The UNet and
VAE are switched to diffusers' classic `AttnProcessor` (`set_attn_processor(AttnProcessor())`;
diffusers' default `AttnProcessor2_0` calls SDPA) and the CLIP vision tower to
`attn_implementation="eager"`. With the storage counting the classic and SDPA processors give
the same UNet figure on the meta device (SDPA's math fallback materialises the probabilities
too); with `--legacy-count` they do not, because SDPA saves views of the probabilities.
"""

import argparse
import re
import weakref

import torch
import json
import os

from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
)

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
# CLIP ViT-L/14 vision tower (LAION aesthetic predictor, PickScore uses ViT-H/14: see docs).
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)

# SD3 / SD3.5 (`--sd3`): the transformer configs are the published ones in fixtures/sd3-configs;
# the other components are the same for SD3-Medium, SD3.5-Medium and SD3.5-Large, published as
# written here (diffusers' `vae/config.json`, transformers' `text_encoder{,_2,_3}/config.json`).
SD3_NAMED = {"sd3-medium": "SD3-Medium", "sd3.5-medium": "SD3.5-Medium", "sd3.5-large": "SD3.5-Large"}
SD3_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "fixtures", "sd3-configs")
SD3_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=1.5305,
    shift_factor=0.0609,
)
# CLIP-L (`text_encoder`) and OpenCLIP bigG (`text_encoder_2`), both CLIPTextModelWithProjection.
SD3_CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
SD3_CLIP_G = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)
# T5 v1.1 XXL, encoder only (`text_encoder_3`, T5EncoderModel).
SD3_T5 = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    is_encoder_decoder=False,
    use_cache=False,
    tie_word_embeddings=False,
)
# Flow-GRPO's LoRA targets on SD3 (PEFT names, rank 32): the joint attention's image and context
# projections of every block; SD3.5's second attention (`attn2`) is not adapted.
SD3_LORA = re.compile(r"(^|\.)attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$")
# burn's overhead over the PyTorch count, measured on fixtures/sd-tiny (docs/real-models.md,
# "Measured on the tiny fixture"): 2.9x the whole count at 64x64 (the slope of four micro-batch
# settings, 2.91-2.93); with the 96x96 run (3.15x) split into ~3.4x on the attention
# probabilities and ~1.5x on the rest. Measured on the SD 1.x UNet, not on the MMDiT.
BURN_FLAT = 2.9
BURN_PROBS, BURN_REST = 3.4, 1.5
# DRaFT / AlignProp differentiate at most the sampler's 50 steps: under checkpointing each keeps its inputs.
K_MAX = 50


def count(model):
    return sum(p.numel() for p in model.parameters())


def lora_params(unet, rank):
    n = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(
            name.endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0")
        ):
            n += rank * (module.in_features + module.out_features)
    return n


def saved_bytes(fn, model, legacy=False):
    """Bytes autograd saves while `fn` runs: the distinct storages of the saved tensors (a view
    and its base, or a tensor saved by several operations, count once), without the storages of
    `model`'s parameters. `legacy`: the earlier count, distinct tensor objects at their own
    size, parameters included."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen = {}

    def pack(t):
        if legacy:
            seen[id(t)] = (t, t.numel() * t.element_size())
        else:
            st = t.untyped_storage()
            if st._cdata not in params:
                seen[st._cdata] = (t, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(b for _, b in seen.values())


# Storages of the attention probabilities of the SD3 transformer's last forward pass (filled by
# MaterialisedJointAttnProcessor, read by saved_split).
PROBS = set()


class MaterialisedJointAttnProcessor:
    """diffusers' `JointAttnProcessor2_0` (SD3's joint attention, and SD3.5's image-only `attn2`)
    with `F.scaled_dot_product_attention` written out as softmax(q kᵀ / √d) v, so that the
    probabilities are materialised and saved as burn saves them. diffusers has no classic
    (non-SDPA) joint processor to switch to."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b, n = hidden_states.shape[:2]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q = heads(attn.to_q(hidden_states))
        k = heads(attn.to_k(hidden_states))
        v = heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        PROBS.add(probs.untyped_storage()._cdata)
        out = (probs @ v).transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3])
        if encoder_hidden_states is not None:
            out, encoder_hidden_states = out[:, :n], out[:, n:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, encoder_hidden_states)


def resident(*models):
    """Storages of the models' parameters and buffers."""
    return {
        t.untyped_storage()._cdata for m in models for t in list(m.parameters()) + list(m.buffers())
    }


def saved_split(fn, *models):
    """saved_bytes' count (distinct storages, without the models' parameters and buffers) and the
    part of it that is attention probabilities of a MaterialisedJointAttnProcessor."""
    skip = resident(*models)
    PROBS.clear()
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in skip:
            seen[st._cdata] = (t, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    total = sum(b for _, b in seen.values())
    probs = sum(b for key, (_, b) in seen.items() if key in PROBS)
    PROBS.clear()
    return total, probs


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive (held by a tensor) while operations run: every operation's
    outputs are followed until their last tensor dies; `peak` is the largest sum seen. Storages
    of `skip` (weights) and tensors made before the mode (the inputs) are not counted."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.live, self.now, self.peak = skip, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.follow(t)
        return out

    def follow(self, t):
        st = t.untyped_storage()
        key = st._cdata
        if key in self.skip:
            return
        if key not in self.live:
            self.live[key] = [st.nbytes(), 0]
            self.now += st.nbytes()
            self.peak = max(self.peak, self.now)
        self.live[key][1] += 1
        weakref.finalize(t, self.release, key)

    def release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]


def transient_peak(fn, *models):
    """Peak bytes of the activations alive at once while `fn` runs without gradients (a frozen
    forward pass: rollouts, text encoders, a reference model), weights and inputs left out."""
    with torch.no_grad(), _LiveBytes(resident(*models)) as mode:
        fn()
    return mode.peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, help="pixels per side (default: 512; --sd3: 512 and 1024)")
    ap.add_argument("--lora-rank", type=int, help="LoRA rank (default: 4; --sd3: 32, Flow-GRPO's)")
    ap.add_argument(
        "--model",
        help="a diffusers SD directory (unet/config.json, vae/config.json) instead of SD 1.5's configs",
    )
    ap.add_argument(
        "--legacy-count",
        action="store_true",
        help="count distinct saved tensor objects, parameters included (the earlier, overcounting figure)",
    )
    ap.add_argument(
        "--sd3",
        metavar="NAME_OR_DIR",
        help="SD3 / SD3.5 instead of SD 1.5: " + ", ".join(SD3_NAMED)
        + " (the published transformer configs in fixtures/sd3-configs) or a diffusers SD3 directory",
    )
    ap.add_argument(
        "--t5-tokens",
        type=int,
        default=256,
        help="--sd3: T5 tokens of the context (diffusers' max_sequence_length, default 256; "
        "zeros of that length without T5)",
    )
    args = ap.parse_args()
    if args.sd3:
        return main_sd3(args)
    if args.size is None:
        args.size = 512
    if args.lora_rank is None:
        args.lora_rank = 4
    s = args.size

    def config(sub):
        with open(os.path.join(args.model, sub, "config.json")) as f:
            return json.load(f)

    with torch.device("meta"):
        if args.model:
            unet = UNet2DConditionModel.from_config(config("unet"))
            vae = AutoencoderKL.from_config(config("vae"))
            if os.path.exists(os.path.join(args.model, "text_encoder", "config.json")):
                text_config = CLIPTextConfig.from_json_file(
                    os.path.join(args.model, "text_encoder", "config.json")
                )
            else:
                text_config = CLIPTextConfig(**SD15_TEXT)
        else:
            unet = UNet2DConditionModel(**SD15_UNET)
            vae = AutoencoderKL(**SD15_VAE)
            text_config = CLIPTextConfig(**SD15_TEXT)
        text = CLIPTextModel(text_config)
        vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14, attn_implementation="eager"))
        # burn materialises the attention probabilities: diffusers' classic processor does too.
        unet.set_attn_processor(AttnProcessor())
        vae.set_attn_processor(AttnProcessor())
        for m in (unet, vae, text, vit):
            m.requires_grad_(True)
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        ls = s // down
        lat = torch.randn(1, unet.config.in_channels, ls, ls)
        ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
        t = torch.tensor([500.0])
        z = torch.randn(1, vae.config.latent_channels, ls, ls)
        legacy = args.legacy_count
        unet_act = saved_bytes(lambda: unet(lat, t, encoder_hidden_states=ctx).sample, unet, legacy)
        dec_act = saved_bytes(lambda: vae.decode(z).sample, vae, legacy)
        img = torch.randn(1, 3, 224, 224)
        vit_act = saved_bytes(lambda: vit(pixel_values=img).image_embeds, vit, legacy)
    rows = [
        ("UNet parameters", count(unet)),
        ("text encoder parameters", count(text)),
        ("VAE parameters", count(vae)),
        ("VAE decoder parameters", count(vae.decoder) + count(vae.post_quant_conv)),
        ("CLIP ViT-L/14 vision parameters", count(vit)),
        (f"LoRA rank {args.lora_rank} parameters (UNet attention)", lora_params(unet, args.lora_rank)),
    ]
    for name, n in rows:
        print(f"{name:48s} {n:>14,d}   fp32 {4 * n / 2**30:7.3f} GiB   fp16 {2 * n / 2**30:7.3f} GiB")
    print(f"activations saved for backward, per image, fp32, {s}x{s}:")
    print(f"  UNet step (latent {ls}x{ls}, 77 tokens)   {unet_act / 2**30:7.3f} GiB")
    print(f"  VAE decode                                      {dec_act / 2**30:7.3f} GiB")
    print(f"  CLIP ViT-L/14 at 224x224                        {vit_act / 2**30:7.3f} GiB")


if __name__ == "__main__":
    main()
