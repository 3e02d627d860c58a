#!/usr/bin/env python3
"""Builds the tiny Stable Diffusion 3 MMDiT fixtures in `fixtures/sd3-tiny/`. Run by hand; CI never
runs it.

    pip install torch diffusers transformers safetensors numpy
    python3 scripts/make-sd3-fixtures.py                  # writes fixtures/sd3-tiny

Made with torch 2.15, diffusers 0.42.1, transformers 5.24 (the torch/diffusers versions are recorded in reference.json). What it
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
    vae3.*           the tiny SD3-style VAE (vae/): vae3.latents [2,4,8,8] -> vae3.decoded [2,3,16,16]
                     (raw `vae.decode(latents).sample`, no scaling/shift); vae3.image [2,3,16,16] in
                     [-1,1] -> vae3.posterior_mean / vae3.posterior_std [2,4,8,8] (`latent_dist`)
    sd3pipe.*        a 4-step guided (CFG 7) flow-matching run of diffusers' own
                     StableDiffusion3Pipeline on transformer/ + vae/ + scheduler/, text encoders None,
                     from given embeddings: sd3pipe.{prompt_embeds [2,5,16], pooled_prompt_embeds [2,12],
                     negative_prompt_embeds, negative_pooled_prompt_embeds, init_latents [2,4,8,8]} ->
                     sd3pipe.latents (output_type="latent"); sd3pipe.sigmas [5] (with the final 0) and
                     sd3pipe.timesteps [4] after set_timesteps(4); sd3pipe.images [2,3,16,16] =
                     vae.decode(latents / scaling_factor + shift_factor).sample
  vae/               AutoencoderKL, SD3 style: no quant_conv / post_quant_conv, latent_channels = the
                     transformer's in_channels (4), scaling_factor 1.5305, shift_factor 0.0609
  scheduler/         FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), SD3's
    scheduler_config.json
  reference.json     versions, the configs, input/output shapes and norms, the sampling settings
  text_encoder_3/    transformers.T5EncoderModel, T5 v1.1 style as SD3's google/t5-v1_1-xxl
    config.json + model.safetensors  (save_pretrained, safetensors): gated-gelu FFN (gelu_new),
                     d_model 16, 2 heads of d_kv 4, d_ff 24, 2 layers, 8 relative-attention buckets,
                     max_distance 20, vocab 40, eps 1e-6; every parameter random (std 0.3, the
                     T5LayerNorm weights 1 + 0.1 N(0,1), the relative-attention bias table too).
                     transformers 5 always ties `encoder.embed_tokens` to `shared` (the config says
                     tie_word_embeddings true whatever is passed), so only `shared.weight` is saved.
                     References in reference.safetensors (t5.* keys; not in reference.json):
                     t5.input_ids int64 [2,12] (row 1 ends in 4 pad ids 0) -> t5.last_hidden_state
                     [2,12,16] = model(input_ids).last_hidden_state WITHOUT an attention mask, as
                     diffusers' StableDiffusion3Pipeline._get_t5_prompt_embeds calls
                     `text_encoder_3(text_input_ids)[0]`; t5.long.input_ids [1,45] (longer than
                     max_distance, so the log buckets and the clamp are used) -> t5.long.last_hidden_state
                     [1,45,16], and t5.long.position_bucket int64 [45,45] (the encoder's
                     _relative_position_bucket(memory - query)). Eager attention.

  text_encoder/      transformers.CLIPTextModelWithProjection, CLIP-L style (SD3's text_encoder):
                     hidden 16, intermediate 24, 2 layers, 2 heads, projection 16, quick_gelu
  text_encoder_2/    the same class, OpenCLIP bigG style (SD3's text_encoder_2): hidden 20, projection 20,
                     hidden_act "gelu"
    config.json + model.safetensors  (save_pretrained, safetensors); both: vocab 744 (the sd-tiny
                     tokenizer, fixtures/sd-tiny/tokenizer, reused for both towers), 77 positions,
                     bos 742, eos_token_id 743 (the tokenizer's real <|endoftext|> id, so the pooled
                     token is the first 743; the real SD3 configs carry the legacy eos_token_id 2, i.e.
                     argmax pooling, which picks the same position here because 743 is the largest id),
                     pad_token_id 743. Weights: randomize() (LayerNorm weights 1 + 0.1 N(0,1)), seeds 11/12.
                     References (clip3.* keys; not in reference.json): clip3.input_ids int64 [2,77] =
                     the sd-tiny tokenizer padded to 77 with <|endoftext|> (743), as SD3's `tokenizer`;
                     clip3.input_ids_2 int64 [2,77] = the same prompts padded with "!" (id 0), as SD3's
                     `tokenizer_2` (pad_token="!"); then clip3.l.{penultimate = hidden_states[-2],
                     last_hidden_state} [2,77,16], clip3.l.text_embeds [2,16] from text_encoder on
                     clip3.input_ids, and clip3.g.* [2,77,20] / [2,20] from text_encoder_2 on
                     clip3.input_ids_2 (no attention mask, as the pipeline calls
                     `text_encoder(text_input_ids, output_hidden_states=True)`). Eager attention.
Sizes (transformers): inner dim 16 (2 heads of 8), 3 blocks, patch 2, 4 latent channels, joint_attention_dim 16,
pooled_projection_dim 12, pos_embed_max_size 16. Every parameter is randomised, the adaLN
modulation and proj_out included (the reference SD3 code zero-initialises those, which would hide
them from a comparison); norm weights (the RMS q/k norms, the VAE's GroupNorms) get values around 1, as for the sd-tiny VAE in
make-real-model-fixtures.py. The VAE: block_out_channels (8, 16), one ResNet per block, 4 groups,
sample_size 16 (downsampling 2). The `pos_embed.pos_embed` buffer is saved as diffusers
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
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

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

# SD3's VAE differences from SD 1.x: no 1x1 quant convs, a shift as well as a scale of the latents
# (latent_channels follows the transformer, 16 in the real models, so that the pipeline fits).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=BASE_CONFIG["in_channels"],
    norm_num_groups=4,
    sample_size=16,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
VAE_SEED = 9  # weights
VAE_INPUT_SEED = 42
PIPE_SEED = 43
PIPE_STEPS = 4
PIPE_GUIDANCE = 7.0

# SD3's third text encoder, T5 v1.1 (google/t5-v1_1-xxl) in miniature.
T5_CONFIG = dict(
    vocab_size=40,
    d_model=16,
    d_kv=4,
    d_ff=24,
    num_layers=2,
    num_heads=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    feed_forward_proj="gated-gelu",  # sets dense_act_fn="gelu_new", is_gated_act=True
    dense_act_fn="gelu_new",
    is_gated_act=True,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    tie_word_embeddings=False,  # as t5-v1_1-xxl; transformers 5 stores True regardless
    is_encoder_decoder=False,
    use_cache=False,
)
T5_SEED = 10  # weights
T5_INPUT_SEED = 44
T5_STD = 0.3

# SD3's two CLIP text towers in miniature, on the sd-tiny CLIP tokenizer's vocabulary.
CLIP_TOKENIZER = os.path.join(os.path.dirname(ROOT), "sd-tiny", "tokenizer")
CLIP_COMMON = dict(
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
)
CLIP_TOWERS = [
    # (directory, tensor prefix, config, weight seed, tokenizer pad token)
    ("text_encoder", "clip3.l", dict(hidden_size=16, projection_dim=16, hidden_act="quick_gelu"), 11, None),
    ("text_encoder_2", "clip3.g", dict(hidden_size=20, projection_dim=20, hidden_act="gelu"), 12, "!"),
]
CLIP_PROMPTS = ["a photo of a cat", "a red car on the road at night"]

NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, diffusers.models.normalization.RMSNorm)


def randomize(module, seed, std=0.2):
    """Random weights everywhere. Weights of real normalisation layers (here only the RMS q/k
    norms and the VAE's GroupNorms) get values around 1; every other matrix gets 1/sqrt(fan_in) scaled normals and every
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


def to_list(config):
    """A config as JSON, without diffusers' `_use_default_values` (a list in set order, which would
    change from run to run with the string hash seed)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if k != "_use_default_values"
    }


def build_vae(tensors, meta):
    """vae/ and the vae3.* references."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    assert vae.quant_conv is None and vae.post_quant_conv is None
    randomize(vae, VAE_SEED)
    vae.save_pretrained(os.path.join(ROOT, "vae"), safe_serialization=True)
    g = torch.Generator().manual_seed(VAE_INPUT_SEED)
    c = VAE_CONFIG["latent_channels"]
    latents = torch.randn(2, c, 8, 8, generator=g)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        decoded = vae.decode(latents).sample
        posterior = vae.encode(image).latent_dist
        mean, std = posterior.mean, posterior.std
    for t in (decoded, mean, std):
        assert torch.isfinite(t).all()
    tensors.update(
        {
            "vae3.latents": latents,
            "vae3.decoded": decoded,
            "vae3.image": image,
            "vae3.posterior_mean": mean,
            "vae3.posterior_std": std,
        }
    )
    meta["vae3"] = {
        "directory": "vae",
        "config": to_list(vae.config),
        "calls": {
            "vae3.decoded": "vae.decode(vae3.latents).sample (raw, no scaling or shift)",
            "vae3.posterior_mean": "vae.encode(vae3.image).latent_dist.mean",
            "vae3.posterior_std": "vae.encode(vae3.image).latent_dist.std",
        },
        "outputs": {
            k: {"shape": list(v.shape), "l2_norm": round(float(v.norm()), 6)}
            for k, v in [("vae3.decoded", decoded), ("vae3.posterior_mean", mean), ("vae3.posterior_std", std)]
        },
    }
    return vae


def build_pipeline(tensors, meta, transformer, vae):
    """scheduler/ and a guided sampling run of diffusers' StableDiffusion3Pipeline from given
    embeddings (no text encoders or tokenizers), checked against the loop written out by hand."""
    sched_dir = os.path.join(ROOT, "scheduler")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(sched_dir)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sched_dir)
    assert not scheduler.config.use_dynamic_shifting  # so the pipeline passes no mu

    g = torch.Generator().manual_seed(PIPE_SEED)
    c, d, p = BASE_CONFIG["in_channels"], BASE_CONFIG["joint_attention_dim"], BASE_CONFIG["pooled_projection_dim"]
    prompt_embeds = torch.randn(2, 5, d, generator=g)
    pooled = torch.randn(2, p, generator=g)
    negative_prompt_embeds = torch.randn(2, 5, d, generator=g)
    negative_pooled = torch.randn(2, p, generator=g)
    init_latents = torch.randn(2, c, 8, 8, generator=g)

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(
        prompt_embeds=prompt_embeds.clone(),
        pooled_prompt_embeds=pooled.clone(),
        negative_prompt_embeds=negative_prompt_embeds.clone(),
        negative_pooled_prompt_embeds=negative_pooled.clone(),
        height=16,
        width=16,
        num_inference_steps=PIPE_STEPS,
        guidance_scale=PIPE_GUIDANCE,
        latents=init_latents.clone(),
        output_type="latent",
    ).images
    sigmas = scheduler.sigmas.clone()
    timesteps = scheduler.timesteps.clone()
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample

    # The same loop by hand (pipeline_stable_diffusion_3.py __call__ steps 3-7, no dynamic shifting,
    # no skip-layer guidance): [uncond, cond] batches, t broadcast, CFG, Euler step on the sigmas.
    check = FlowMatchEulerDiscreteScheduler.from_pretrained(sched_dir)
    check.set_timesteps(PIPE_STEPS)
    assert torch.equal(check.sigmas, sigmas) and torch.equal(check.timesteps, timesteps)
    assert float(sigmas[-1]) == 0.0 and torch.equal(timesteps, sigmas[:-1] * 1000)
    context = torch.cat([negative_prompt_embeds, prompt_embeds])
    pooled_both = torch.cat([negative_pooled, pooled])
    x = init_latents.clone()
    with torch.no_grad():
        for i, t in enumerate(check.timesteps):
            out = transformer(
                hidden_states=torch.cat([x] * 2),
                timestep=t.expand(2 * x.shape[0]),
                encoder_hidden_states=context,
                pooled_projections=pooled_both,
            ).sample
            uncond, cond = out.chunk(2)
            v = uncond + PIPE_GUIDANCE * (cond - uncond)
            x = x + (check.sigmas[i + 1] - check.sigmas[i]) * v
    hand_err = float((x - latents).abs().max())
    assert hand_err < 1e-5, hand_err
    assert torch.isfinite(images).all()

    tensors.update(
        {
            "sd3pipe.prompt_embeds": prompt_embeds,
            "sd3pipe.pooled_prompt_embeds": pooled,
            "sd3pipe.negative_prompt_embeds": negative_prompt_embeds,
            "sd3pipe.negative_pooled_prompt_embeds": negative_pooled,
            "sd3pipe.init_latents": init_latents,
            "sd3pipe.latents": latents,
            "sd3pipe.sigmas": sigmas,
            "sd3pipe.timesteps": timesteps,
            "sd3pipe.images": images,
        }
    )
    meta["sd3pipe"] = {
        "real_pipeline": True,
        "pipeline": "StableDiffusion3Pipeline(transformer=transformer/, vae=vae/, scheduler=scheduler/, "
        "text encoders and tokenizers None)(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, "
        "negative_pooled_prompt_embeds, height=16, width=16, num_inference_steps=4, guidance_scale=7.0, "
        "latents=init_latents, output_type='latent')",
        "transformer": "transformer",
        "steps": PIPE_STEPS,
        "guidance_scale": PIPE_GUIDANCE,
        "height": 16,
        "width": 16,
        "scheduler_config": to_list(scheduler.config),
        "sigmas": [float(s) for s in sigmas],
        "timesteps": [float(t) for t in timesteps],
        "images": "vae.decode(sd3pipe.latents / scaling_factor + shift_factor).sample",
        "hand_loop_max_abs_diff": hand_err,
        "outputs": {
            k: {"shape": list(v.shape), "l2_norm": round(float(v.norm()), 6)}
            for k, v in [("sd3pipe.latents", latents), ("sd3pipe.images", images)]
        },
    }


def build_t5(tensors):
    """text_encoder_3/ and the t5.* references (added last, so nothing else changes)."""
    from transformers import T5Config, T5EncoderModel
    from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

    torch.manual_seed(0)
    config = T5Config(**T5_CONFIG)
    assert config.dense_act_fn == "gelu_new" and config.is_gated_act
    config._attn_implementation = "eager"
    model = T5EncoderModel(config).eval()
    assert model.encoder.embed_tokens.weight is model.shared.weight
    g = torch.Generator().manual_seed(T5_SEED)
    owners = {}
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = m
    with torch.no_grad():
        # named_parameters() lists the tied embedding once (as shared.weight)
        for name, p in model.named_parameters():
            if isinstance(owners[name], T5LayerNorm):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(T5_STD * torch.randn(p.shape, generator=g))
    model.save_pretrained(os.path.join(ROOT, "text_encoder_3"), safe_serialization=True)

    g = torch.Generator().manual_seed(T5_INPUT_SEED)
    ids = torch.randint(0, T5_CONFIG["vocab_size"], (2, 12), generator=g, dtype=torch.long)
    ids[1, -4:] = 0  # padding, but no mask: SD3 calls text_encoder_3(text_input_ids)[0]
    long_ids = torch.randint(0, T5_CONFIG["vocab_size"], (1, 45), generator=g, dtype=torch.long)
    with torch.no_grad():
        out = model(ids).last_hidden_state
        long_out = model(long_ids).last_hidden_state
        # the default attention (sdpa) agrees with eager
        model.config._attn_implementation = "sdpa"
        assert torch.allclose(model(ids).last_hidden_state, out, atol=1e-5)
        model.config._attn_implementation = "eager"
    n = long_ids.shape[1]
    pos = torch.arange(n, dtype=torch.long)
    buckets = T5Attention._relative_position_bucket(
        pos[None, :] - pos[:, None],
        bidirectional=True,
        num_buckets=T5_CONFIG["relative_attention_num_buckets"],
        max_distance=T5_CONFIG["relative_attention_max_distance"],
    )
    assert torch.isfinite(out).all() and torch.isfinite(long_out).all()
    tensors["t5.input_ids"] = ids
    tensors["t5.last_hidden_state"] = out
    tensors["t5.long.input_ids"] = long_ids
    tensors["t5.long.last_hidden_state"] = long_out
    tensors["t5.long.position_bucket"] = buckets.to(torch.long)
    print(f"t5.last_hidden_state: shape {list(out.shape)} |out| = {float(out.norm()):.6f}")
    print(f"t5.long.last_hidden_state: shape {list(long_out.shape)} |out| = {float(long_out.norm()):.6f}")


def build_clip(tensors):
    """text_encoder/, text_encoder_2/ and the clip3.* references (added after t5.*, so nothing
    else changes)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    with open(os.path.join(CLIP_TOKENIZER, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    assert eos == max(vocab.values())  # so legacy argmax pooling (eos_token_id 2) agrees
    ids = {}
    for directory, prefix, extra, seed, pad in CLIP_TOWERS:
        kwargs = {"pad_token": pad} if pad else {}
        tok = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, **kwargs)
        assert len(tok) == len(vocab) and tok.eos_token_id == eos and tok.bos_token_id == bos
        assert tok.pad_token_id == (vocab[pad] if pad else eos)
        # as StableDiffusion3Pipeline._get_clip_prompt_embeds tokenises
        input_ids = tok(
            CLIP_PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        assert input_ids.shape == (2, 77)
        # every word is in the tiny vocabulary (its unk token is <|endoftext|>): the text round-trips
        assert tok.batch_decode(input_ids, skip_special_tokens=True) == CLIP_PROMPTS
        assert (input_ids[:, 0] == bos).all() and ((input_ids == eos).sum(1) >= 1).all()

        torch.manual_seed(0)
        config = CLIPTextConfig(
            vocab_size=len(vocab), bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, **CLIP_COMMON, **extra
        )
        config._attn_implementation = "eager"
        model = CLIPTextModelWithProjection(config).eval()
        randomize(model, seed)
        model.save_pretrained(os.path.join(ROOT, directory), safe_serialization=True)
        with torch.no_grad():
            out = model(input_ids, output_hidden_states=True)
            # the default attention (sdpa) agrees with eager
            model.config._attn_implementation = "sdpa"
            assert torch.allclose(model(input_ids).text_embeds, out.text_embeds, atol=1e-5)
            model.config._attn_implementation = "eager"
            # legacy pooling (the real SD3 configs' eos_token_id 2): argmax of the ids
            rows = torch.arange(input_ids.shape[0])
            legacy = model.text_projection(out.last_hidden_state[rows, input_ids.argmax(-1)])
            assert torch.allclose(legacy, out.text_embeds, atol=1e-6)
        assert len(out.hidden_states) == CLIP_COMMON["num_hidden_layers"] + 1
        for t in (out.hidden_states[-2], out.last_hidden_state, out.text_embeds):
            assert torch.isfinite(t).all()
        ids[prefix] = input_ids
        tensors[prefix + ".penultimate"] = out.hidden_states[-2]
        tensors[prefix + ".last_hidden_state"] = out.last_hidden_state
        tensors[prefix + ".text_embeds"] = out.text_embeds
        print(f"{prefix}.text_embeds: shape {list(out.text_embeds.shape)} |out| = {float(out.text_embeds.norm()):.6f}")
    tensors["clip3.input_ids"] = ids["clip3.l"]
    tensors["clip3.input_ids_2"] = ids["clip3.g"]
    assert not torch.equal(ids["clip3.l"], ids["clip3.g"])


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
        if directory == "transformer":
            sd35 = model
    vae = build_vae(tensors, meta)
    build_pipeline(tensors, meta, sd35, vae)
    build_t5(tensors)
    build_clip(tensors)
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
    for k, v in {**meta["vae3"]["outputs"], **meta["sd3pipe"]["outputs"]}.items():
        print(f"{k}: shape {v['shape']} |out| = {v['l2_norm']:.6f}")
    print("sd3pipe sigmas:", meta["sd3pipe"]["sigmas"])
    print(f"fixtures written to {os.path.normpath(ROOT)}: {total / 1e3:.1f} kB")


CONFIGS = os.path.join(os.path.dirname(ROOT), "sd3-configs")


def write_param_counts():
    """fixtures/sd3-configs/param_counts.json: what diffusers / transformers build from the
    published component configs written by hand in fixtures/sd3-configs/*/{transformer, vae,
    text_encoder, text_encoder_2, text_encoder_3}/config.json (the SD3-Medium, SD3.5-Medium and
    SD3.5-Large repositories' config.json values), on the meta device (no memory)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    out = {
        "_note": "built by diffusers "
        + diffusers.__version__
        + " / transformers "
        + __import__("transformers").__version__
        + " on the meta device (scripts/make-sd3-fixtures.py): parameters of SD3Transformer2DModel, "
        "AutoencoderKL, CLIPTextModelWithProjection (text_encoder, text_encoder_2) and T5EncoderModel "
        "(text_encoder_3), and the transformer's pos_embed buffer the checkpoint also stores"
    }

    def read(name, sub):
        with open(os.path.join(CONFIGS, name, sub, "config.json")) as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}

    for name in ["sd3-medium", "sd3.5-medium", "sd3.5-large"]:
        with torch.device("meta"):
            model = SD3Transformer2DModel(**read(name, "transformer"))
            vae = AutoencoderKL.from_config(read(name, "vae"))
            towers = {
                sub: CLIPTextModelWithProjection(CLIPTextConfig(**read(name, sub)))
                for sub in ["text_encoder", "text_encoder_2"]
            }
            t5 = T5EncoderModel(T5Config(**read(name, "text_encoder_3")))
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        out[name] = {
            "parameters": count(model),
            "pos_embed": sum(b.numel() for _, b in model.named_buffers()),
            "vae": count(vae),
            **{sub: count(m) for sub, m in towers.items()},
            "text_encoder_3": count(t5),
        }
    with open(os.path.join(CONFIGS, "param_counts.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# fixtures/sd3-tiny-pipeline: a whole StableDiffusion3Pipeline directory (model_index.json and all
# nine components), loaded by diffusers' own from_pretrained for the references. Its transformer is
# sized for the text towers (joint_attention_dim = the T5 width 40 >= the CLIP widths 16 + 20,
# pooled_projection_dim = the CLIP projections 16 + 20), so prompts run through the whole pipeline.
# Written after sd3-tiny, from its own seeds: sd3-tiny does not change.

PIPE_ROOT = os.path.join(os.path.dirname(ROOT), "sd3-tiny-pipeline")
PIPE_MAX_SEQUENCE_LENGTH = 16  # diffusers' default is 256; the tiny fixture keeps it short
PIPE_PROMPTS = ["a photo of a cat", "a red car on the road at night"]
T5_CORPUS = [
    "a photo of a cat", "a red car on the road at night", "two blue circles and a green square",
    "An astronaut riding a horse on the Moon", "a painting of a small house by the sea",
    "Three yellow triangles", "a dog sitting in the snow", "Portrait of a woman, oil on canvas.",
    "The city skyline at sunset, 4k", "a bowl of fruit on a wooden table (1990)",
]
# What the tokenizer-id references cover: lower and upper case, digits and punctuation, characters
# outside the tiny vocabulary (<unk>) and ones NFKC folds (the precompiled normaliser: full-width
# letters, the "fi" ligature), runs of spaces, the empty prompt, an added special token, and a
# prompt longer than the maximum length (truncated, ending in </s>).
T5_TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "A Photo of a CAT, 4k!",
    "\u00fcn\u00efcode caf\u00e9 \uff21\uff22 \ufb01sh",
    "   extra    spaces   here  ",
    "",
    "a red <extra_id_0> car",
    "a painting of a small house by the sea, two blue circles and a green square at night",
]
T5_PIPE_CONFIG = dict(T5_CONFIG, d_model=40, d_kv=8, d_ff=32)
T5_PIPE_SEED = 20
CLIP_PIPE_SEEDS = {"text_encoder": 21, "text_encoder_2": 22}
TRANSFORMER_PIPE_SEED = 23
VAE_PIPE_SEED = 24
PIPE_INPUT_SEED = 45


def build_t5_tokenizer(directory):
    """tokenizer_3/: a T5-style SentencePiece unigram model (pad 0, </s> 1, <unk> 2, no bos, the
    nmt_nfkc normaliser as T5's) trained on T5_CORPUS, converted by transformers to the fast
    tokenizer.json that real SD3 directories carry, with 4 extra ids (<extra_id_0..3>, T5 has
    100). sentencepiece's trainer is deterministic for one thread and a fixed corpus."""
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_CORPUS * 3),
        model_writer=model,
        vocab_size=120,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    src = os.path.join(PIPE_ROOT, "_spiece")
    os.makedirs(src)
    with open(os.path.join(src, "spiece.model"), "wb") as f:
        f.write(model.getvalue())
    tok = T5Tokenizer.from_pretrained(src, extra_ids=4, model_max_length=512)
    shutil.rmtree(src)
    tok.save_pretrained(directory)
    return T5Tokenizer.from_pretrained(directory)


def write_clip_tokenizer(directory, pad):
    """tokenizer/ or tokenizer_2/: the sd-tiny CLIP vocabulary as a real SD3 directory has it
    (vocab.json, merges.txt, tokenizer_config.json); tokenizer_2 pads with "!" like SD3's."""
    from transformers import CLIPTokenizer

    os.makedirs(directory)
    for name in ["vocab.json", "merges.txt"]:
        shutil.copy(os.path.join(CLIP_TOKENIZER, name), os.path.join(directory, name))
    with open(os.path.join(CLIP_TOKENIZER, "tokenizer_config.json")) as f:
        config = json.load(f)
    config.pop("backend", None)
    if pad:
        config["pad_token"] = pad
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    tok = CLIPTokenizer.from_pretrained(directory)
    assert tok.pad_token == (pad or "<|endoftext|>"), tok.pad_token
    return tok


def build_whole_pipeline():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    shutil.rmtree(PIPE_ROOT, ignore_errors=True)
    os.makedirs(PIPE_ROOT)
    tensors = {}
    tok = write_clip_tokenizer(os.path.join(PIPE_ROOT, "tokenizer"), None)
    write_clip_tokenizer(os.path.join(PIPE_ROOT, "tokenizer_2"), "!")
    tok3 = build_t5_tokenizer(os.path.join(PIPE_ROOT, "tokenizer_3"))

    # CLIP towers: the sd3-tiny sizes, new seeds.
    vocab = tok.get_vocab()
    eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    widths = []
    for directory, _, extra, _, _ in CLIP_TOWERS:
        torch.manual_seed(0)
        config = CLIPTextConfig(
            vocab_size=len(vocab), bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, **CLIP_COMMON, **extra
        )
        model = CLIPTextModelWithProjection(config).eval()
        randomize(model, CLIP_PIPE_SEEDS[directory])
        model.save_pretrained(os.path.join(PIPE_ROOT, directory), safe_serialization=True)
        widths.append((extra["hidden_size"], extra["projection_dim"]))

    # T5 on the tiny tokenizer's vocabulary.
    torch.manual_seed(0)
    t5_config = T5Config(**dict(T5_PIPE_CONFIG, vocab_size=len(tok3)))
    t5 = T5EncoderModel(t5_config).eval()
    g = torch.Generator().manual_seed(T5_PIPE_SEED)
    with torch.no_grad():
        for name, p in t5.named_parameters():
            owner = t5.get_submodule(name.rsplit(".", 1)[0]) if "." in name else t5
            if isinstance(owner, T5LayerNorm):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(T5_STD * torch.randn(p.shape, generator=g))
    t5.save_pretrained(os.path.join(PIPE_ROOT, "text_encoder_3"), safe_serialization=True)

    joint = T5_PIPE_CONFIG["d_model"]
    assert joint >= sum(w for w, _ in widths)
    transformer_config = dict(
        BASE_CONFIG,
        joint_attention_dim=joint,
        pooled_projection_dim=sum(p for _, p in widths),
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**transformer_config).eval()
    randomize(transformer, TRANSFORMER_PIPE_SEED)
    transformer.save_pretrained(os.path.join(PIPE_ROOT, "transformer"), safe_serialization=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    randomize(vae, VAE_PIPE_SEED)
    vae.save_pretrained(os.path.join(PIPE_ROOT, "vae"), safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(
        os.path.join(PIPE_ROOT, "scheduler")
    )
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    with open(os.path.join(PIPE_ROOT, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")

    # The references, from the directory as diffusers loads it.
    pipe = StableDiffusion3Pipeline.from_pretrained(PIPE_ROOT)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        m.config._attn_implementation = "eager"
    ids3 = pipe.tokenizer_3(
        T5_TOKENIZER_PROMPTS,
        padding="max_length",
        max_length=PIPE_MAX_SEQUENCE_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    assert (ids3[:, -1] != 0).sum() >= 1  # the long prompt is truncated, ending in </s>
    assert int(ids3[-1, -1]) == tok3.eos_token_id
    assert int((ids3 == tok3.unk_token_id).sum()) > 0
    tensors["tokenizer_3.input_ids"] = ids3
    for i, name in enumerate(["tokenizer", "tokenizer_2"]):
        t = getattr(pipe, name)
        tensors[f"{name}.input_ids"] = t(
            PIPE_PROMPTS + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(
            PIPE_PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=PIPE_MAX_SEQUENCE_LENGTH
        )
    tensors.update(
        {
            "encode.prompt_embeds": pe,
            "encode.negative_prompt_embeds": ne,
            "encode.pooled_prompt_embeds": pp,
            "encode.negative_pooled_prompt_embeds": npool,
        }
    )
    g = torch.Generator().manual_seed(PIPE_INPUT_SEED)
    init = torch.randn(2, BASE_CONFIG["in_channels"], 8, 8, generator=g)
    latents = pipe(
        prompt=PIPE_PROMPTS,
        height=16,
        width=16,
        num_inference_steps=PIPE_STEPS,
        guidance_scale=PIPE_GUIDANCE,
        latents=init.clone(),
        max_sequence_length=PIPE_MAX_SEQUENCE_LENGTH,
        output_type="latent",
    ).images
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    tensors.update({"run.init_latents": init, "run.latents": latents, "run.images": images})

    # Without T5 (the practical choice on small GPUs): its part of the prompt is zeros.
    pipe_no_t5 = StableDiffusion3Pipeline.from_pretrained(PIPE_ROOT, text_encoder_3=None, tokenizer_3=None)
    pipe_no_t5.set_progress_bar_config(disable=True)
    for m in (pipe_no_t5.text_encoder, pipe_no_t5.text_encoder_2):
        m.config._attn_implementation = "eager"
    with torch.no_grad():
        pe0, ne0, pp0, np0 = pipe_no_t5.encode_prompt(
            PIPE_PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=PIPE_MAX_SEQUENCE_LENGTH
        )
    assert torch.equal(pe0[:, 77:], torch.zeros_like(pe0[:, 77:])) and torch.equal(pp0, pp)
    assert torch.equal(pe0[:, :77], pe[:, :77])
    latents0 = pipe_no_t5(
        prompt=PIPE_PROMPTS,
        height=16,
        width=16,
        num_inference_steps=PIPE_STEPS,
        guidance_scale=PIPE_GUIDANCE,
        latents=init.clone(),
        max_sequence_length=PIPE_MAX_SEQUENCE_LENGTH,
        output_type="latent",
    ).images
    tensors.update({"no_t5.prompt_embeds": pe0, "no_t5.negative_prompt_embeds": ne0, "no_t5.latents": latents0})
    assert not torch.allclose(latents0, latents, atol=1e-3)
    for k, v in tensors.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(PIPE_ROOT, "reference.safetensors"))
    meta = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "prompts": PIPE_PROMPTS,
        "max_sequence_length": PIPE_MAX_SEQUENCE_LENGTH,
        "steps": PIPE_STEPS,
        "guidance_scale": PIPE_GUIDANCE,
        "height": 16,
        "width": 16,
        "tokenizer_3_prompts": T5_TOKENIZER_PROMPTS,
        "calls": {
            "tokenizer_3.input_ids": "pipe.tokenizer_3(tokenizer_3_prompts, padding='max_length', "
            "max_length=max_sequence_length, truncation=True, add_special_tokens=True).input_ids",
            "tokenizer(_2).input_ids": "pipe.tokenizer(_2)(prompts + [''], padding='max_length', max_length=77, "
            "truncation=True).input_ids",
            "encode.*": "pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=True, "
            "max_sequence_length=max_sequence_length) (negative prompt '')",
            "run.latents": "pipe(prompt=prompts, height, width, num_inference_steps=steps, guidance_scale, "
            "latents=run.init_latents, max_sequence_length, output_type='latent').images",
            "run.images": "vae.decode(run.latents / scaling_factor + shift_factor).sample",
            "no_t5.*": "the same from StableDiffusion3Pipeline.from_pretrained(dir, text_encoder_3=None, tokenizer_3=None)",
        },
        "outputs": {
            k: {"shape": list(v.shape), "l2_norm": round(float(v.float().norm()), 6)} for k, v in tensors.items()
        },
    }
    with open(os.path.join(PIPE_ROOT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(
        os.path.getsize(os.path.join(d, n)) for d, _, files in os.walk(PIPE_ROOT) for n in files
    )
    print(f"run.latents |out| = {float(latents.norm()):.6f}, no_t5.latents |out| = {float(latents0.norm()):.6f}")
    print(f"whole pipeline written to {os.path.normpath(PIPE_ROOT)}: {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
    write_param_counts()
    build_whole_pipeline()
