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

import torch
import json
import os

from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument(
        "--model",
        help="a diffusers SD directory (unet/config.json, vae/config.json) instead of SD 1.5's configs",
    )
    ap.add_argument(
        "--legacy-count",
        action="store_true",
        help="count distinct saved tensor objects, parameters included (the earlier, overcounting figure)",
    )
    args = ap.parse_args()
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
