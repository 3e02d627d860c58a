#!/usr/bin/env python3
"""Builds the tiny real-model fixtures in `fixtures/` (issue #9). Run by hand; CI never runs it.

    pip install torch diffusers transformers tokenizers safetensors numpy
    python3 scripts/make-real-model-fixtures.py            # writes fixtures/sd-tiny, fixtures/clip-tiny

What it writes, all with random weights drawn from fixed seeds (no download):

fixtures/sd-tiny/           a Stable Diffusion 1.x directory in the diffusers layout
  model_index.json
  scheduler/scheduler_config.json     (SD 1.5's DDIM/PNDM settings)
  unet/config.json + diffusion_pytorch_model.safetensors      UNet2DConditionModel
  vae/config.json + diffusion_pytorch_model.safetensors       AutoencoderKL
  text_encoder/config.json + model.safetensors                CLIPTextModel
  tokenizer/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
  reference.safetensors       fixed inputs and the PyTorch outputs (names below)
  reference.json              tokenizer strings and their ids

fixtures/sd2-tiny-unet/     a UNet2DConditionModel with SD 2.x's linear projections, per-block
                            head counts and two transformer layers in a block, + reference

fixtures/clip-tiny/         a CLIP model in the transformers layout (PickScore / CLIP-score
                            style), plus an aesthetic-predictor MLP head
  config.json + model.safetensors, preprocessor_config.json, tokenizer files
  aesthetic/model.safetensors          LAION "improved aesthetic predictor" layout
  reference.safetensors, reference.json

The tokenizer is a real CLIP byte-level BPE (the same algorithm and file format as
openai/clip-vit-large-patch14) whose merges are learned here from a small corpus, because no
vocabulary can be downloaded. The script checks that the slow and the fast transformers
tokenizers agree on every reference string before writing it.
"""

import collections
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPTokenizerFast,
    CLIPVisionConfig,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
torch.set_default_dtype(torch.float32)

# ----------------------------------------------------------------------------------------
# Tokenizer: CLIP byte-level BPE learned on a small corpus.
# ----------------------------------------------------------------------------------------

CORPUS = """
a photo of a cat sitting on a red chair . two blue squares and one yellow triangle .
three red circles on a white background , a painting of an astronaut riding a horse on the moon .
the quick brown fox jumps over the lazy dog ! it's a beautiful day , isn't it ? we'll see .
a watercolor landscape with mountains , trees and a river at sunset ; highly detailed , 4k .
one green circle . four purple squares and two orange triangles . a dog and a cat playing .
portrait of a woman with long hair , digital art , trending on artstation , octane render .
an oil painting of a city street in the rain with people holding umbrellas at night .
""" * 3

BYTE_PATTERN_NOTE = "see transformers.models.clip.tokenization_clip.bytes_to_unicode"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def learn_bpe(corpus, num_merges):
    import regex as re

    pat = re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        re.IGNORECASE,
    )
    b2u = bytes_to_unicode()
    words = collections.Counter()
    for tok in pat.findall(corpus.lower()):
        chars = [b2u[b] for b in tok.encode("utf-8")]
        chars[-1] = chars[-1] + "</w>"
        words[tuple(chars)] += 1
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, f in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged = collections.Counter()
        for w, f in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return merges


def write_tokenizer(directory, merges):
    os.makedirs(directory, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab = list(b2u.values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for a, b in merges:
        vocab.append(a + b)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    slow = CLIPTokenizer(
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    slow.save_pretrained(directory)
    # save_pretrained of the slow tokenizer writes vocab/merges again (same content) plus the
    # json configs; the fast tokenizer is converted from them.
    for extra in ["added_tokens.json"]:
        p = os.path.join(directory, extra)
        if os.path.exists(p):
            os.remove(p)
    fast = CLIPTokenizerFast.from_pretrained(directory)
    return len(vocab), slow, fast


TOKENIZER_STRINGS = [
    "two red circles",
    "Two Blue Squares and one yellow triangle",
    "a photo of a cat",
    "  An astronaut,   riding a HORSE!  ",
    "it's 4k; isn't it? we'll see...",
    "zebra xylophone qwerty",
    "",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "café naïve — ünïcödé",
]


def tokenizer_reference(slow, fast):
    out = []
    for s in TOKENIZER_STRINGS:
        a = slow(s, padding="max_length", max_length=77, truncation=True).input_ids
        b = fast(s, padding="max_length", max_length=77, truncation=True).input_ids
        if a != b:
            sys.exit(f"slow and fast CLIP tokenizers disagree on {s!r}:\n{a}\n{b}")
        unpadded = fast(s).input_ids
        out.append({"text": s, "ids": a, "unpadded": unpadded})
    return out


# ----------------------------------------------------------------------------------------
# Components.
# ----------------------------------------------------------------------------------------


def text_config(vocab_size, eos):
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=16,
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def randomize(module, seed, std=0.2):
    """Random weights everywhere (diffusers zero-initialises some output layers, which would
    hide those layers from the comparison); norms get weights around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1] * int(np.prod(p.shape[2:])) if p.dim() > 1 else 1
                scale = std if p.dim() == 1 else 1.0 / np.sqrt(fan_in)
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


def build_sd(out, vocab_size, eos, tok_dir):
    os.makedirs(out, exist_ok=True)
    shutil.copytree(tok_dir, os.path.join(out, "tokenizer"), dirs_exist_ok=True)
    torch.manual_seed(0)
    text = randomize(CLIPTextModel(text_config(vocab_size, eos)).eval(), 1)
    text.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)

    # SD 1.x topology in miniature: cross-attention down blocks then a plain one, the mirror on
    # the way up, two ResNets per down block, conv projections in the transformers, GEGLU
    # feed-forwards, "attention_head_dim" meaning the number of heads as in SD 1.5's config.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=2,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    randomize(unet.eval(), 2)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.18215,
    )
    randomize(vae.eval(), 3)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)

    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    sched.save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(
            {
                "_class_name": "StableDiffusionPipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
            },
            f,
            indent=2,
        )

    fast = CLIPTokenizerFast.from_pretrained(os.path.join(out, "tokenizer"))
    g = torch.Generator().manual_seed(10)
    prompts = ["two red circles", "a photo of a cat"]
    ids = torch.tensor(fast(prompts, padding="max_length", max_length=77).input_ids)
    with torch.no_grad():
        enc = text(ids)
        hidden = enc.last_hidden_state
        pooled = enc.pooler_output
        sample = torch.randn(2, 4, 8, 8, generator=g)
        timestep = torch.tensor([10.0, 981.0])
        context = hidden.clone()
        eps = unet(sample, timestep, encoder_hidden_states=context).sample
        latents = torch.randn(2, 4, 8, 8, generator=g)
        decoded = vae.decode(latents).sample
        image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
        posterior = vae.encode(image).latent_dist
        enc_mean, enc_std = posterior.mean, posterior.std
        # A whole guided DDIM sampling run through diffusers' own pipeline (η = 0, CFG 7.5,
        # 3 steps) from fixed initial latents: the end-to-end check of the Rust pipeline.
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=fast,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        init_latents = torch.randn(2, 4, 8, 8, generator=g)
        pipe_latents = pipe(
            prompts,
            height=16,
            width=16,
            num_inference_steps=3,
            guidance_scale=7.5,
            eta=0.0,
            latents=init_latents.clone(),
            output_type="latent",
        ).images
        pipe_images = vae.decode(pipe_latents / vae.config.scaling_factor).sample
    tensors = {
        "text.input_ids": ids.to(torch.int64),
        "text.last_hidden_state": hidden,
        "text.pooler_output": pooled,
        "unet.sample": sample,
        "unet.timestep": timestep,
        "unet.encoder_hidden_states": context,
        "unet.out": eps,
        "vae.latents": latents,
        "vae.decoded": decoded,
        "vae.image": image,
        "vae.posterior_mean": enc_mean,
        "vae.posterior_std": enc_std,
        "pipeline.init_latents": init_latents,
        "pipeline.latents": pipe_latents,
        "pipeline.images": pipe_images,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "prompts": prompts,
                "pipeline": {"steps": 3, "guidance_scale": 7.5, "eta": 0.0, "height": 16, "width": 16},
                "tokenizer": tokenizer_reference(
                    CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer")), fast
                ),
                "versions": {
                    "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__,
                },
            },
            f,
            ensure_ascii=False,
            indent=1,
        )


def build_sd2_unet(out):
    """A UNet with Stable Diffusion 2.x's differences: linear transformer projections, a
    per-block list of head counts, two transformer layers in one block, and no bias-free
    assumptions beyond diffusers' own."""
    os.makedirs(out, exist_ok=True)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=24,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(2, 1),
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    randomize(unet.eval(), 6)
    unet.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(30)
    with torch.no_grad():
        sample = torch.randn(2, 4, 8, 8, generator=g)
        timestep = torch.tensor([3.0, 777.0])
        context = torch.randn(2, 5, 24, generator=g)
        eps = unet(sample, timestep, encoder_hidden_states=context).sample
    save_file(
        {"unet.sample": sample, "unet.timestep": timestep, "unet.encoder_hidden_states": context, "unet.out": eps},
        os.path.join(out, "reference.safetensors"),
    )


def build_clip(out, vocab_size, eos, tok_dir):
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, name), out)
    tc = text_config(vocab_size, eos)
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=16,
    )
    config = CLIPConfig(
        text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=16, logit_scale_init_value=2.6592
    )
    torch.manual_seed(0)
    model = randomize(CLIPModel(config).eval(), 4)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    model.save_pretrained(out, safe_serialization=True)
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc.save_pretrained(out)

    # Aesthetic predictor head in the LAION improved-aesthetic-predictor layout
    # (layers.0, .2, .4, .6, .7 Linear; dropouts between), on L2-normalised image embeddings.
    head = torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(32, 16),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 8),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(8, 4),
        torch.nn.Linear(4, 1),
    ).eval()
    randomize(head, 5, std=0.3)
    os.makedirs(os.path.join(out, "aesthetic"), exist_ok=True)
    save_file(
        {f"layers.{k}": v.contiguous() for k, v in head.state_dict().items()},
        os.path.join(out, "aesthetic", "model.safetensors"),
    )

    fast = CLIPTokenizerFast.from_pretrained(out)
    prompts = ["two red circles", "a photo of a cat"]
    ids = torch.tensor(fast(prompts, padding="max_length", max_length=77).input_ids)
    g = torch.Generator().manual_seed(20)
    images01 = torch.rand(2, 3, 32, 32, generator=g)
    # The processor's normalisation, on images already at the model's resolution.
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    pixel_values = (images01 - mean) / std
    ref_pixels = torch.tensor(
        np.stack(proc([img.permute(1, 2, 0).numpy() for img in images01], do_rescale=False, do_resize=False, do_center_crop=False, return_tensors="np")["pixel_values"])
    )
    assert torch.allclose(ref_pixels, pixel_values, atol=1e-5), (ref_pixels - pixel_values).abs().max()
    with torch.no_grad():
        vis = model.vision_model(pixel_values=pixel_values)
        txt = model.text_model(input_ids=ids)
        image_embeds = model.visual_projection(vis.pooler_output)
        text_embeds = model.text_projection(txt.pooler_output)
        out_full = model(input_ids=ids, pixel_values=pixel_values)
        ni = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        nt = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        cos = (ni * nt).sum(-1)
        pick = model.logit_scale.exp() * cos
        clip_score = 100.0 * cos.clamp(min=0)
        aesthetic = head(ni).squeeze(-1)
    assert torch.allclose(out_full.logits_per_image.diagonal(), pick, atol=1e-5)
    tensors = {
        "input_ids": ids.to(torch.int64),
        "images01": images01,
        "pixel_values": pixel_values,
        "vision.last_hidden_state": vis.last_hidden_state,
        "vision.pooler_output": vis.pooler_output,
        "text.last_hidden_state": txt.last_hidden_state,
        "text.pooler_output": txt.pooler_output,
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "logits_per_image": out_full.logits_per_image,
        "pickscore": pick,
        "clip_score": clip_score,
        "aesthetic": aesthetic,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "prompts": prompts,
                "clip_score": "100 * max(cos(image_embeds, text_embeds), 0)",
                "pickscore": "exp(logit_scale) * cos(image_embeds, text_embeds)",
                "aesthetic": "head(image_embeds / |image_embeds|)",
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            },
            f,
            indent=1,
        )


def main():
    merges = learn_bpe(CORPUS, 300)
    tmp = os.path.join(ROOT, ".tokenizer-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab_size, slow, fast = write_tokenizer(tmp, merges)
    tokenizer_reference(slow, fast)
    eos = vocab_size - 1
    build_sd(os.path.join(ROOT, "sd-tiny"), vocab_size, eos, tmp)
    build_clip(os.path.join(ROOT, "clip-tiny"), vocab_size, eos, tmp)
    build_sd2_unet(os.path.join(ROOT, "sd2-tiny-unet"))
    shutil.rmtree(tmp)
    total = 0
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    print(f"fixtures written to {os.path.normpath(ROOT)}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
