#!/usr/bin/env python3
"""Memory of Stable Diffusion 1.5 per alignment algorithm, estimated from the configs (issue #9).

    pip install torch diffusers transformers
    python3 scripts/sd-memory-estimate.py [--size 512] [--lora-rank 4]

Nothing is downloaded and nothing is computed: every model is built on PyTorch's `meta`
device from SD 1.5's published configs (written out below), so the parameter counts are exact
and the activation figures are the bytes autograd saves for the backward pass of one image
(counted with `torch.autograd.graph.saved_tensors_hooks`, deduplicated by storage), in fp32 and
without gradient checkpointing. docs/real-models.md turns them into per-algorithm totals.
"""

import argparse

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
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


def saved_bytes(fn):
    """Bytes of the distinct tensors autograd saves while `fn` runs (a tensor saved by several
    operations counts once; meta tensors have no storage to compare, so identity is used)."""
    seen = {}

    def pack(t):
        seen[id(t)] = (t, t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(b for _, b in seen.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--lora-rank", type=int, default=4)
    args = ap.parse_args()
    s = args.size
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14))
        for m in (unet, vae, text, vit):
            m.requires_grad_(True)
        lat = torch.randn(1, 4, s // 8, s // 8)
        ctx = torch.randn(1, 77, 768)
        t = torch.tensor([500.0])
        unet_act = saved_bytes(lambda: unet(lat, t, encoder_hidden_states=ctx).sample)
        dec_act = saved_bytes(lambda: vae.decode(lat).sample)
        img = torch.randn(1, 3, 224, 224)
        vit_act = saved_bytes(lambda: vit(pixel_values=img).image_embeds)
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
    print(f"  UNet step (latent {s // 8}x{s // 8}, 77 tokens)   {unet_act / 2**30:7.3f} GiB")
    print(f"  VAE decode                                      {dec_act / 2**30:7.3f} GiB")
    print(f"  CLIP ViT-L/14 at 224x224                        {vit_act / 2**30:7.3f} GiB")


if __name__ == "__main__":
    main()
