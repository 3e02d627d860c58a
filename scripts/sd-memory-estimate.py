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

SD3 / SD3.5 (`--sd3 sd3-medium | sd3.5-medium | sd3.5-large`, or `--sd3 DIR` for a diffusers SD3
directory: transformer/, vae/, text_encoder/, text_encoder_2/ and, if present, text_encoder_3/):

    python3 scripts/sd-memory-estimate.py --sd3 sd3.5-medium             # 512x512 and 1024x1024
    python3 scripts/sd-memory-estimate.py --sd3 fixtures/sd3-tiny-pipeline

The published component configs (transformer, VAE, CLIP-L, OpenCLIP bigG, T5 v1.1 XXL) are read
from fixtures/sd3-configs/<name>/. The joint attention (diffusers'
`JointAttnProcessor2_0`, which calls SDPA; there is no classic joint processor) is replaced by
`MaterialisedJointAttnProcessor`, the same computation with the softmax written out, so the
probabilities are counted as burn keeps them and split out of the total. The script prints the
parameters (f16 frozen weights with and without T5), the activations of one image (transformer
step and VAE decode with gradients; transformer, VAE decode and text encoders without gradients:
the peak of the tensors alive at once, followed with a TorchDispatchMode), and per-algorithm
totals, once as counted and once scaled by burn's overhead measured on the SD 1.x fixture
(docs/real-models.md). The context is 77 CLIP tokens and `--t5-tokens` (256) T5 tokens, zeros
without T5 as diffusers feeds them.
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

# SD3 / SD3.5 (`--sd3`): the published component configs (transformer/, vae/, text_encoder/,
# text_encoder_2/, text_encoder_3/ config.json of the model repositories) are in
# fixtures/sd3-configs/<name>/, with the parameter counts diffusers / transformers build from them
# in param_counts.json.
SD3_NAMED = {"sd3-medium": "SD3-Medium", "sd3.5-medium": "SD3.5-Medium", "sd3.5-large": "SD3.5-Large"}
SD3_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "fixtures", "sd3-configs")
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


def transient_peak(fn, models, inputs=()):
    """Peak bytes of the activations alive at once while `fn` runs without gradients (a frozen
    forward pass: rollouts, text encoders, a reference model), weights and `inputs` left out."""
    skip = resident(*models) | {t.untyped_storage()._cdata for t in inputs}
    with torch.no_grad(), _LiveBytes(skip) as mode:
        fn()
    return mode.peak


GIB = 2**30


def main_sd3(args):
    """`--sd3`: parameters, per-image activations and per-algorithm totals of SD3 / SD3.5."""
    if args.sd3 in SD3_NAMED:
        label, root, published = SD3_NAMED[args.sd3], os.path.join(SD3_CONFIGS, args.sd3), True
    elif os.path.isfile(os.path.join(args.sd3, "transformer", "config.json")):
        label, root, published = args.sd3.rstrip("/"), args.sd3, False
    else:
        raise SystemExit(
            f"--sd3 {args.sd3}: neither {', '.join(SD3_NAMED)} nor a diffusers SD3 directory "
            "(transformer/config.json)"
        )
    rank = 32 if args.lora_rank is None else args.lora_rank

    def path(sub):
        return os.path.join(root, sub, "config.json")

    with open(path("transformer")) as f:
        transformer_config = json.load(f)
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(transformer_config)
        # a named model reads fixtures/sd3-configs/<name>/, like a directory
        with open(path("vae")) as f:
            vae = AutoencoderKL.from_config(json.load(f))
        clip_configs = [CLIPTextConfig.from_json_file(path(sub)) for sub in ("text_encoder", "text_encoder_2")]
        has_t5 = os.path.isfile(path("text_encoder_3"))
        t5_config = T5Config.from_json_file(path("text_encoder_3")) if has_t5 else None
        for c in clip_configs + [t5_config]:
            if c is not None:
                c._attn_implementation = "eager"  # materialised probabilities (frozen: no backward anyway)
        clip_l, clip_g = (CLIPTextModelWithProjection(c) for c in clip_configs)
        t5 = T5EncoderModel(t5_config) if t5_config is not None else None
        # diffusers' JointAttnProcessor2_0 calls SDPA: write the softmax out, as burn computes it.
        transformer.set_attn_processor(MaterialisedJointAttnProcessor())
        vae.set_attn_processor(AttnProcessor())
        for m in (transformer, vae):
            m.requires_grad_(True)

        tc = transformer.config
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        sizes = [args.size] if args.size else [512, 1024] if published else [tc.sample_size * down // 2, tc.sample_size * down]
        context = 77 + args.t5_tokens
        act = {}
        for s in sizes:
            ls = s // down
            if s % (down * tc.patch_size):
                raise SystemExit(f"--size {s}: not a multiple of {down * tc.patch_size} (VAE factor x patch size)")
            lat = torch.randn(1, tc.in_channels, ls, ls)
            ctx = torch.randn(1, context, tc.joint_attention_dim)
            pooled = torch.randn(1, tc.pooled_projection_dim)
            t = torch.tensor([500.0])
            z = torch.randn(1, vae.config.latent_channels, ls, ls)

            def step():
                return transformer(
                    hidden_states=lat, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t
                ).sample

            a, probs = saved_split(step, transformer)
            act[s] = dict(
                tokens=(ls // tc.patch_size) ** 2,
                A=a,
                probs=probs,
                burn=BURN_PROBS * probs + BURN_REST * (a - probs),
                P=transient_peak(step, [transformer], [lat, ctx, pooled, t]),
                D=saved_split(lambda: vae.decode(z).sample, vae)[0],
                Dp=transient_peak(lambda: vae.decode(z).sample, [vae], [z]),
                inputs=sum(x.numel() * 4 for x in (lat, ctx, pooled, t)),
            )
        ids = torch.zeros(1, 77, dtype=torch.long)
        text_peak = [
            transient_peak(lambda: m(input_ids=ids, output_hidden_states=True), [m], [ids])
            for m in (clip_l, clip_g)
        ]
        if t5 is not None:
            t5_ids = torch.zeros(1, args.t5_tokens, dtype=torch.long)
            text_peak.append(transient_peak(lambda: t5(input_ids=t5_ids).last_hidden_state, [t5], [t5_ids]))

    n_transformer = count(transformer)
    n_pos = sum(b.numel() for b in transformer.buffers())
    lora_modules = [
        m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and SD3_LORA.search(name)
    ]
    n_lora = sum(rank * (m.in_features + m.out_features) for m in lora_modules)
    n_text = count(clip_l) + count(clip_g)
    n_t5 = count(t5) if t5 is not None else 0
    n_vae = count(vae)
    n_decoder = count(vae.decoder) + (count(vae.post_quant_conv) if vae.post_quant_conv is not None else 0)
    published_counts = {}
    if published:
        with open(os.path.join(SD3_CONFIGS, "param_counts.json")) as f:
            published_counts = json.load(f).get(args.sd3, {})

    def check(n, key):
        if key not in published_counts:
            return ""
        return "  = param_counts.json" if published_counts[key] == n else f"  != param_counts.json {published_counts[key]:,d}"

    source = f"the published configs in {os.path.join('fixtures', 'sd3-configs', args.sd3)}" if published else f"the configs of {root}"
    print(f"{label}: {source}; built on the meta device")
    rows = [
        ("transformer (SD3Transformer2DModel)", n_transformer, check(n_transformer, "parameters")),
        ("  pos_embed buffer (in the checkpoint, resident)", n_pos, check(n_pos, "pos_embed")),
        ("CLIP-L with projection (text_encoder)", count(clip_l), check(count(clip_l), "text_encoder")),
        ("OpenCLIP bigG with projection (text_encoder_2)", count(clip_g), check(count(clip_g), "text_encoder_2")),
    ]
    if t5 is not None:
        rows.append(("T5 v1.1 XXL encoder (text_encoder_3)" if published else "T5 encoder (text_encoder_3)", n_t5, check(n_t5, "text_encoder_3")))
    rows += [
        ("VAE (AutoencoderKL)", n_vae, check(n_vae, "vae")),
        ("  VAE decoder", n_decoder, ""),
        (f"LoRA rank {rank}, {len(lora_modules)} attn.* projections", n_lora, ""),
    ]
    for name, n, note in rows:
        print(f"{name:48s} {n:>14,d}   fp32 {4 * n / GIB:7.3f} GiB   fp16 {2 * n / GIB:7.3f} GiB{note}")
    # everything below in bytes, printed in GiB (MiB for a tiny directory)
    unit, uname = (GIB, "GiB") if n_transformer > 2**26 else (2**20, "MiB")
    w_no_t5 = 2 * (n_transformer + n_pos + n_text + n_vae)
    w_t5 = w_no_t5 + 2 * n_t5
    lora_state = 16 * n_lora  # fp32 factors, their gradients, AdamW's two moments
    weights = [("+T5", w_t5), ("-T5", w_no_t5)] if t5 is not None else [("-T5", w_no_t5)]

    def g(b):
        return f"{b / unit:.3f}"

    print(
        "frozen weights W, f16 (parameters + pos_embed): "
        + ", ".join(f"{'with' if k == '+T5' else 'without'} T5 {g(w)} {uname}" for k, w in weights)
        + f"; LoRA state L (fp32 factors + gradients + AdamW moments, 16 B/param) {g(lora_state)} {uname}"
    )
    print(
        f"context: 77 CLIP + {args.t5_tokens} T5 tokens with T5; without T5 diffusers feeds "
        f"{args.t5_tokens} zero tokens, so the transformer's cost is the same"
    )
    print(f"activations per image, fp32 (attention probabilities materialised), {uname}:")
    print(f"  {'':56s}" + "".join(f"{f'{s}x{s}':>11s}" for s in sizes))
    lines = [
        ("image + context tokens", lambda a: f"{a['tokens']}+{context}"),
        ("A  transformer step with gradients (saved)", lambda a: g(a["A"])),
        ("     of it attention probabilities", lambda a: g(a["probs"])),
        ("     A less the probabilities (~ a fused attention kernel)", lambda a: g(a["A"] - a["probs"])),
        (f"A' burn estimate, {BURN_PROBS}x probabilities + {BURN_REST}x rest", lambda a: g(a["burn"])),
        (f"   burn estimate, flat {BURN_FLAT}x A (for comparison)", lambda a: g(BURN_FLAT * a["A"])),
        ("P  transformer call without gradients (peak)", lambda a: g(a["P"])),
        ("D  VAE decode with gradients (saved)", lambda a: g(a["D"])),
        ("Dp VAE decode without gradients (peak)", lambda a: g(a["Dp"])),
        ("I  one step's inputs (kept per step when checkpointed)", lambda a: g(a["inputs"])),
    ]
    for name, f in lines:
        print(f"  {name:56s}" + "".join(f"{f(act[s]):>11s}" for s in sizes))
    names = ["CLIP-L", "bigG"] + ([f"T5 ({args.t5_tokens} tokens)"] if t5 is not None else [])
    print(
        "text encoders, forward only (frozen, once per prompt), peak per prompt: "
        + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in zip(names, text_peak))
    )

    algorithms = [
        ("Flow-GRPO / DenseGRPO / SDPO update, no CFG", "A", lambda a, x: x),
        ("  same, CFG in the update (Flow-GRPO's SD3 default)", "2A", lambda a, x: 2 * x),
        ("Diffusion-DPO (flow): winner + loser, + reference no grad", "2A+2P", lambda a, x: 2 * x + 2 * a["P"]),
        (f"DRaFT-K / AlignProp, CFG, checkpointed, K <= {K_MAX}", "2A+D+2KI", lambda a, x: 2 * x + a["D"] + 2 * K_MAX * a["inputs"]),
        ("DRaFT-K / AlignProp, CFG, unrolled, K = 1", "2A+D", lambda a, x: 2 * x + a["D"]),
        ("  each further unrolled step adds", "2A", None),
        ("sampling / rollout, CFG, 1 image (no gradients)", "max(2P,Dp)", lambda a, x: max(2 * a["P"], a["Dp"])),
    ]
    cols = [(s, k, w) for s in sizes for k, w in weights]
    for title, key, mark in (
        ("PyTorch count", "A", ""),
        (f"burn estimate (A' = {BURN_PROBS}x probabilities + {BURN_REST}x rest of A; D, P as counted)", "burn", "'"),
    ):
        print(
            f"per-algorithm peak, {uname}, {title}: W (f16) + L + activations (fp32), micro-batch 1 image "
            "(1 pair for DPO), reward model not included"
        )
        print(f"  {'algorithm':56s}{'acts':>11s}" + "".join(f"{f'{s} {k}':>11s}" for s, k, _ in cols))
        for name, formula, f in algorithms:
            if f is None:
                cells = [g(2 * act[s][key]) for s, _, _ in cols]
            else:
                cells = [g(w + lora_state + f(act[s], act[s][key])) for s, _, w in cols]
            print(f"  {name:56s}{formula.replace('A', 'A' + mark):>11s}" + "".join(f"{c:>11s}" for c in cells))
    print(f"(align loads weights as f32 today: add {', '.join(f'{g(w)} {uname} {k}' for k, w in weights)})")

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
