#!/usr/bin/env python3
"""Builds the tiny Stable Diffusion 3 MMDiT fixtures in `fixtures/sd3-tiny/`. Run by hand; CI never
runs it.

    pip install torch diffusers transformers safetensors numpy
    python3 scripts/make-sd3-fixtures.py                  # writes fixtures/sd3-tiny

Made with torch 2.15, diffusers 0.42.1 (the versions are recorded in reference.json). What it
writes, all with random weights drawn from fixed seeds (no download):

fixtures/sd3-tiny/
  transformer/       SD3Transformer2DModel, SD 3.5 style: qk_norm="rms_norm" and a dual-attention
                     block 0 (`transformer_blocks.0.attn2`, SD35AdaLayerNormZeroX); the last block is
                     context_pre_only (AdaLayerNormContinuous on the context, no context FF, no
                     `attn.to_add_out`) as diffusers always builds it
  transformer-sd3/   the same sizes, SD 3.0 (Medium) style: no qk norm, no dual attention
    config.json + diffusion_pytorch_model.safetensors       (save_pretrained, safetensors)
  reference.safetensors  fixed inputs and the PyTorch outputs:
    mmdit.hidden_states [2,4,8,8]  mmdit.encoder_hidden_states [2,5,16]
    mmdit.pooled_projections [2,12]  mmdit.timestep [2] = (3, 700)  mmdit.out [2,4,8,8]
    mmdit.wide.*     the same for a non-square latent [2,4,8,12] (4x6 patches, cropped from the
                     16x16 positional-embedding table)
    mmdit_sd3.*, mmdit_sd3.wide.*    the same inputs through transformer-sd3/
  reference.json     versions, both configs, input/output shapes and norms

Sizes: inner dim 16 (2 heads of 8), 3 blocks, patch 2, 4 latent channels, joint_attention_dim 16,
pooled_projection_dim 12, pos_embed_max_size 16. Every parameter is randomised, the adaLN
modulation and proj_out included (the reference SD3 code zero-initialises those, which would hide
them from a comparison); norm weights (the RMS q/k norms) get values around 1. The `pos_embed.pos_embed` buffer is saved as diffusers
computes it (the fixed 2-D sin-cos table), like the real checkpoints. Output is byte-for-byte
reproducible.
"""

import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import SD3Transformer2DModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "sd3-tiny")
torch.set_default_dtype(torch.float32)
torch.use_deterministic_algorithms(True)

BASE_CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=16,
    caption_projection_dim=16,  # must equal num_attention_heads * attention_head_dim
    pooled_projection_dim=12,
    out_channels=4,
    pos_embed_max_size=16,
)

VARIANTS = [
    # (directory, tensor prefix, extra config, weight seed)
    ("transformer", "mmdit", dict(qk_norm="rms_norm", dual_attention_layers=(0,)), 7),
    ("transformer-sd3", "mmdit_sd3", dict(qk_norm=None, dual_attention_layers=()), 8),
]

NORM_TYPES = (torch.nn.LayerNorm, diffusers.models.normalization.RMSNorm)


def randomize(module, seed, std=0.2):
    """Random weights everywhere. Weights of real normalisation layers (here only the RMS q/k
    norms) get values around 1; every other matrix gets 1/sqrt(fan_in) scaled normals and every
    bias std-scaled normals. The adaLN `norm*.linear` layers are Linear, not norms, despite the
    name, so they are matched by module type rather than by name."""
    g = torch.Generator().manual_seed(seed)
    owners = {}
    for mname, m in module.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = m
    with torch.no_grad():
        for name, p in module.named_parameters():
            if isinstance(owners[name], NORM_TYPES) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1] * int(np.prod(p.shape[2:])) if p.dim() > 1 else 1
                scale = std if p.dim() == 1 else 1.0 / np.sqrt(fan_in)
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


def inputs(seed, height, width):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, BASE_CONFIG["in_channels"], height, width, generator=g)
    context = torch.randn(2, 5, BASE_CONFIG["joint_attention_dim"], generator=g)
    pooled = torch.randn(2, BASE_CONFIG["pooled_projection_dim"], generator=g)
    timestep = torch.tensor([3.0, 700.0])
    return hidden, context, pooled, timestep


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    tensors = {}
    meta = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "call": "model(hidden_states, encoder_hidden_states, pooled_projections, timestep).sample",
        "variants": {},
    }
    cases = [("", 8, 8, 40), ("wide.", 8, 12, 41)]
    for directory, prefix, extra, seed in VARIANTS:
        torch.manual_seed(0)
        model = SD3Transformer2DModel(**BASE_CONFIG, **extra).eval()
        randomize(model, seed)
        model.save_pretrained(os.path.join(ROOT, directory), safe_serialization=True)
        info = {"directory": directory, "prefix": prefix, "config": dict(model.config), "outputs": {}}
        info["config"]["dual_attention_layers"] = list(info["config"]["dual_attention_layers"])
        for tag, h, w, input_seed in cases:
            hidden, context, pooled, timestep = inputs(input_seed, h, w)
            with torch.no_grad():
                out = model(
                    hidden_states=hidden,
                    encoder_hidden_states=context,
                    pooled_projections=pooled,
                    timestep=timestep,
                ).sample
            assert out.shape == hidden.shape[:1] + (BASE_CONFIG["out_channels"],) + hidden.shape[2:]
            assert torch.isfinite(out).all()
            p = f"{prefix}.{tag}"
            tensors[p + "hidden_states"] = hidden
            tensors[p + "encoder_hidden_states"] = context
            tensors[p + "pooled_projections"] = pooled
            tensors[p + "timestep"] = timestep
            tensors[p + "out"] = out
            info["outputs"][p + "out"] = {
                "shape": list(out.shape),
                "l2_norm": round(float(out.norm()), 6),
                "mean_abs": round(float(out.abs().mean()), 6),
            }
        meta["variants"][prefix] = info
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ROOT, "reference.safetensors"))
    with open(os.path.join(ROOT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    total = 0
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            total += os.path.getsize(os.path.join(dirpath, name))
    for prefix, info in meta["variants"].items():
        for k, v in info["outputs"].items():
            print(f"{k}: shape {v['shape']} |out| = {v['l2_norm']:.6f}")
    print(f"fixtures written to {os.path.normpath(ROOT)}: {total / 1e3:.1f} kB")


CONFIGS = os.path.join(os.path.dirname(ROOT), "sd3-configs")


def write_param_counts():
    """fixtures/sd3-configs/param_counts.json: what diffusers builds from the published
    transformer configs written by hand in fixtures/sd3-configs/*/transformer/config.json
    (SD3-Medium, SD3.5-Medium, SD3.5-Large model cards), on the meta device (no memory)."""
    out = {
        "_note": "SD3Transformer2DModel(**config) built by diffusers "
        + diffusers.__version__
        + " on the meta device (scripts/make-sd3-fixtures.py): parameters, and the "
        "pos_embed buffer the checkpoint also stores"
    }
    for name in ["sd3-medium", "sd3.5-medium", "sd3.5-large"]:
        with open(os.path.join(CONFIGS, name, "transformer", "config.json")) as f:
            config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        with torch.device("meta"):
            model = SD3Transformer2DModel(**config)
        out[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "pos_embed": sum(b.numel() for _, b in model.named_buffers()),
        }
    with open(os.path.join(CONFIGS, "param_counts.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
    write_param_counts()
