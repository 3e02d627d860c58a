"""PyTorch re-implementation of the Shapes-world models of `align` (burn 0.22.1).

Mirrors, module by module and in the same operation order, the Rust sources in
`crates/align-models/src/{text_encoder,timestep,resblock,attention,unet,dit,shapes}.rs` and
the burn 0.22.1 layers they use. The burn semantics that matter numerically:

* ``Linear`` stores its weight as ``[d_in, d_out]`` and computes ``x @ W + b``. Here the weight
  is kept in PyTorch's ``[d_out, d_in]`` layout (transposed once at load time) and applied
  with ``F.linear``; the values are identical.
* LoRA (burn's ``LoraAdapter``): effective weight ``W + (A @ B) * (alpha / r)`` with
  ``A [d_in, r]``, ``B [r, d_out]`` in burn's layout, recomposed on every forward pass.
* ``LayerNorm`` and ``GroupNorm``: biased variance, ``eps = 1e-5``, parameters named
  ``gamma`` / ``beta``.
* GELU is the exact (erf) form; SiLU is ``x * sigmoid(x)``.
* ``MultiHeadAttention``: scores ``(q @ k^T) / sqrt(d_k)``; padded keys are *replaced*
  (``mask_fill``) by ``-1e4`` -- not ``-inf`` -- before a plain softmax over the keys.
* ``TransformerEncoder`` with ``norm_first = true``: the attention sub-layer is pre-normed
  by ``norm_2`` and the feed-forward sub-layer by ``norm_1`` (burn's naming).
* ``Interpolate2d`` nearest x2 reads source index ``floor(o / 2)`` (= PyTorch ``nearest``).

Everything is float32. Parameter names equal the keys burn's ``SafetensorsStore`` writes
(``denoiser.down.0.blocks.0.res.conv_1.weight``, ``text.tokens.weight``, ...), LoRA factors
being ``<weight key>.lora.a`` / ``<weight key>.lora.b``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD_ID = 0
"""Token id of padding (masked in attention and in the DiT text pooling)."""

MASK_FILL = -1.0e4
"""burn's ``MultiHeadAttentionConfig::min_float`` default: the score given to masked keys."""


# ---------------------------------------------------------------------------------------------
# Layers with burn's parameter names and semantics
# ---------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """burn ``Linear`` (optionally LoRA-adapted).

    ``weight`` is ``[d_out, d_in]`` (PyTorch layout; burn stores the transpose). When
    ``lora_a`` / ``lora_b`` are set they are in burn's layout, ``A [d_in, r]`` and
    ``B [r, d_out]``, and the effective burn weight is ``W + (A @ B) * scale``.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight = nn.Parameter(torch.zeros(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.lora_a: Optional[nn.Parameter] = None
        self.lora_b: Optional[nn.Parameter] = None
        self.lora_scale = 0.0

    def set_lora(self, a: Tensor, b: Tensor, scale: float) -> None:
        """Attaches LoRA factors ``a [d_in, r]``, ``b [r, d_out]`` (burn layout)."""
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.d_in or b.shape[1] != self.d_out \
                or a.shape[1] != b.shape[0]:
            raise ValueError(
                f"LoRA factors {tuple(a.shape)} x {tuple(b.shape)} do not fit a "
                f"[{self.d_in}, {self.d_out}] weight")
        self.lora_a = nn.Parameter(a.clone())
        self.lora_b = nn.Parameter(b.clone())
        self.lora_scale = float(scale)

    def effective_weight(self) -> Tensor:
        """The weight actually applied, ``[d_out, d_in]``."""
        if self.lora_a is None:
            return self.weight
        # burn: base [d_in, d_out] + (a @ b) * scale; transposing does not change the values.
        delta = (self.lora_a @ self.lora_b) * self.lora_scale
        return (self.weight.t() + delta).t()

    def merge_lora(self) -> None:
        """Folds the adapter into the base weight (for inference benchmarks)."""
        if self.lora_a is not None:
            with torch.no_grad():
                self.weight.copy_(self.effective_weight())
            self.lora_a = self.lora_b = None
            self.lora_scale = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class LayerNorm(nn.Module):
    """burn ``LayerNorm`` (``gamma``, ``beta``; eps 1e-5, biased variance)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.gamma, self.beta, self.eps)


class GroupNorm(nn.Module):
    """burn ``GroupNorm`` (affine, ``gamma``, ``beta``; eps 1e-5, biased variance)."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} channels")
        self.groups = groups
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.groups, self.gamma, self.beta, self.eps)


class Embedding(nn.Module):
    """burn ``Embedding`` (``weight [vocab, d]``)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, d))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


def conv2d(i: int, o: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """burn ``Conv2d`` (weight ``[o, i, k, k]``, bias) -- the same layout as PyTorch."""
    return nn.Conv2d(i, o, k, stride=stride, padding=padding, bias=True)


class MultiHeadAttention(nn.Module):
    """burn ``MultiHeadAttention`` (dropout 0, ``min_float = -1e4``, plain softmax)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"{n_heads} heads do not divide width {d_model}")
        self.n_heads, self.d_k = n_heads, d_model // n_heads
        self.query = LoRALinear(d_model, d_model)
        self.key = LoRALinear(d_model, d_model)
        self.value = LoRALinear(d_model, d_model)
        self.output = LoRALinear(d_model, d_model)

    def _heads(self, x: Tensor, linear: LoRALinear) -> Tensor:
        b, n, _ = x.shape
        return linear(x).reshape(b, n, self.n_heads, self.d_k).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                mask_pad: Optional[Tensor] = None) -> Tensor:
        """``mask_pad``: ``[B, L_k]`` bool, ``True`` = padding (ignored key)."""
        b, n, d = query.shape
        q = self._heads(query, self.query)
        k = self._heads(key, self.key)
        v = self._heads(value, self.value)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_k)
        if mask_pad is not None:
            scores = scores.masked_fill(mask_pad[:, None, None, :], MASK_FILL)
        weights = torch.softmax(scores, dim=-1)
        ctx = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return self.output(ctx)


# ---------------------------------------------------------------------------------------------
# Condition and text encoder
# ---------------------------------------------------------------------------------------------


@dataclass
class Condition:
    """``align_core::Condition``: ``context [B, L, D]`` f32 and ``padding_mask [B, L]`` bool
    (``True`` = padding) or ``None``."""

    context: Tensor
    padding_mask: Optional[Tensor] = None


class PositionWiseFeedForward(nn.Module):
    """burn ``PositionWiseFeedForward`` (GELU, dropout 0)."""

    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.linear_inner = LoRALinear(d, d_ff)
        self.linear_outer = LoRALinear(d_ff, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_outer(F.gelu(self.linear_inner(x)))


class TransformerEncoderLayer(nn.Module):
    """burn ``TransformerEncoderLayer`` with ``norm_first = true`` (note: ``norm_2`` pre-norms
    the attention and ``norm_1`` the feed-forward)."""

    def __init__(self, d: int, d_ff: int, heads: int):
        super().__init__()
        self.mha = MultiHeadAttention(d, heads)
        self.pwff = PositionWiseFeedForward(d, d_ff)
        self.norm_1 = LayerNorm(d)
        self.norm_2 = LayerNorm(d)

    def forward(self, x: Tensor, mask_pad: Optional[Tensor]) -> Tensor:
        r = self.norm_2(x)
        x = x + self.mha(r, r, r, mask_pad)
        x = x + self.pwff(self.norm_1(x))
        return x


class TransformerEncoder(nn.Module):
    def __init__(self, d: int, d_ff: int, heads: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(d, d_ff, heads) for _ in range(n_layers)])

    def forward(self, x: Tensor, mask_pad: Optional[Tensor]) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask_pad)
        return x


class TextEncoder(nn.Module):
    """``align_models::TextEncoder``: token ids ``[B, max_len]`` -> :class:`Condition`."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, layers: int = 2,
                 heads: int = 4):
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tokens = Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(max_len, dim))
        self.encoder = TransformerEncoder(dim, 4 * dim, heads, layers)
        self.norm = LayerNorm(dim)

    def forward(self, ids: Tensor) -> Condition:
        if ids.dim() != 2 or ids.shape[1] != self.max_len:
            raise ValueError(f"token ids must be [B, {self.max_len}], got {tuple(ids.shape)}")
        ids = ids.to(device=self.positions.device, dtype=torch.long)
        if bool(((ids < 0) | (ids >= self.vocab_size)).any()):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size}")
        mask = ids == PAD_ID
        h = self.tokens(ids) + self.positions.unsqueeze(0)
        h = self.encoder(h, mask)
        return Condition(self.norm(h), mask)

    encode = forward


# ---------------------------------------------------------------------------------------------
# Timestep embedding
# ---------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[cos(t w_0..w_{h-1}), sin(t w_0..w_{h-1})]``, ``w_i = max_period^(-i/h)``; the
    frequencies are computed in f64 and rounded to f32 (as the Rust code does)."""
    if dim < 2 or dim % 2:
        raise ValueError(f"timestep embedding width must be even, got {dim}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    freqs = torch.exp(-math.log(max_period) * i / half).to(torch.float32).to(t.device)
    args = t.reshape(-1, 1).to(torch.float32) * freqs.reshape(1, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimestepMlp(nn.Module):
    """``Linear -> SiLU -> Linear`` on the sinusoidal embedding."""

    def __init__(self, frequency_dim: int, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.linear_1 = LoRALinear(frequency_dim, dim)
        self.linear_2 = LoRALinear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.frequency_dim, self.max_period)
        return self.linear_2(F.silu(self.linear_1(emb)))


# ---------------------------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm_1 = GroupNorm(groups, c_in)
        self.conv_1 = conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = LoRALinear(temb_dim, c_out)
        self.norm_2 = GroupNorm(groups, c_out)
        self.conv_2 = conv2d(c_out, c_out, 3, padding=1)
        self.skip = conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv_1(F.silu(self.norm_1(x)))
        b, c = h.shape[:2]
        h = h + self.temb_proj(F.silu(temb)).reshape(b, c, 1, 1)
        h = self.conv_2(F.silu(self.norm_2(h)))
        skip = self.skip(x) if self.skip is not None else x
        return skip + h


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.context_proj = LoRALinear(context_dim, dim)
        self.attn = MultiHeadAttention(dim, heads)

    def forward(self, x: Tensor, cond: Condition) -> Tensor:
        ctx = self.context_proj(cond.context)
        return self.attn(x, ctx, ctx, cond.padding_mask)


class SpatialTransformer(nn.Module):
    def __init__(self, c: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, c)
        self.proj_in = LoRALinear(c, c)
        self.norm_self = LayerNorm(c)
        self.self_attn = MultiHeadAttention(c, heads)
        self.norm_cross = LayerNorm(c)
        self.cross_attn = CrossAttention(c, context_dim, heads)
        self.norm_ff = LayerNorm(c)
        self.ff_in = LoRALinear(c, 4 * c)
        self.ff_out = LoRALinear(4 * c, c)
        self.proj_out = LoRALinear(c, c)

    def forward(self, x: Tensor, cond: Condition) -> Tensor:
        b, c, h, w = x.shape
        tok = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        tok = self.proj_in(tok)
        n = self.norm_self(tok)
        tok = tok + self.self_attn(n, n, n)
        tok = tok + self.cross_attn(self.norm_cross(tok), cond)
        tok = tok + self.ff_out(F.gelu(self.ff_in(self.norm_ff(tok))))
        return x + self.proj_out(tok).transpose(1, 2).reshape(b, c, h, w)


class UNetBlock(nn.Module):
    def __init__(self, res: ResBlock, attn: Optional[SpatialTransformer]):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, temb: Tensor, cond: Condition) -> Tensor:
        h = self.res(x, temb)
        return self.attn(h, cond) if self.attn is not None else h


class UNetLevel(nn.Module):
    def __init__(self, blocks: List[UNetBlock], resample: Optional[nn.Conv2d]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """``align_models::UNet``. ``predict(x, t, cond)``: ``t`` = DDPM timesteps (``0..T``) as
    f32 ``[B]``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 32,
                 channel_mults=(1, 2, 2), num_res_blocks: int = 1,
                 attention=(False, False, True), context_dim: int = 64, num_heads: int = 4,
                 norm_groups: int = 8, parameterization: str = "Epsilon"):
        super().__init__()
        if len(attention) != len(channel_mults):
            raise ValueError("attention and channel_mults differ in length")
        self.parameterization = parameterization
        c = base_channels
        temb_dim = 4 * c

        def res(i, o):
            return ResBlock(i, o, temb_dim, norm_groups)

        def attn(ch):
            return SpatialTransformer(ch, context_dim, num_heads, norm_groups)

        levels = len(channel_mults)
        down, skips, ch = [], [c], c
        for i, m in enumerate(channel_mults):
            out = m * c
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(UNetBlock(res(ch, out), attn(out) if attention[i] else None))
                ch = out
                skips.append(ch)
            resample = conv2d(ch, ch, 3, stride=2, padding=1) if i + 1 < levels else None
            if resample is not None:
                skips.append(ch)
            down.append(UNetLevel(blocks, resample))
        self.mid_1 = res(ch, ch)
        self.mid_attn = attn(ch)
        self.mid_2 = res(ch, ch)
        up = []
        for i in reversed(range(levels)):
            out = channel_mults[i] * c
            blocks = []
            for _ in range(num_res_blocks + 1):
                skip = skips.pop() if skips else c
                blocks.append(UNetBlock(res(ch + skip, out), attn(out) if attention[i] else None))
                ch = out
            resample = conv2d(ch, ch, 3, padding=1) if i > 0 else None
            up.append(UNetLevel(blocks, resample))
        self.time = TimestepMlp(c, temb_dim)
        self.conv_in = conv2d(in_channels, c, 3, padding=1)
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(norm_groups, ch)
        self.conv_out = conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        temb = self.time(t)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, temb, cond)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_1(h, temb)
        h = self.mid_attn(h, cond)
        h = self.mid_2(h, temb)
        for level in self.up:
            for block in level.blocks:
                skip = skips.pop() if skips else h
                h = block(torch.cat([h, skip], dim=1), temb, cond)
            if level.resample is not None:
                h = level.resample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    predict = forward


# ---------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------


def sincos_positions(g: int, d: int) -> Tensor:
    """Fixed 2-D sin-cos positions ``[g*g, d]`` (computed in f64, rounded to f32)."""
    k = d // 4
    w = torch.tensor([10000.0 ** (-(i / k)) for i in range(k)], dtype=torch.float64)
    pos = torch.arange(g, dtype=torch.float64)[:, None] * w[None]
    axis = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)  # [g, d/2]
    rows = axis[:, None, :].expand(g, g, d // 2)
    cols = axis[None, :, :].expand(g, g, d // 2)
    return torch.cat([rows, cols], dim=2).reshape(g * g, d).to(torch.float32)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, d: int, heads: int, context_dim: int):
        super().__init__()
        self.norm_1 = LayerNorm(d)
        self.attn = MultiHeadAttention(d, heads)
        self.norm_cross = LayerNorm(d)
        self.cross = CrossAttention(d, context_dim, heads)
        self.norm_2 = LayerNorm(d)
        self.mlp_in = LoRALinear(d, 4 * d)
        self.mlp_out = LoRALinear(4 * d, d)
        self.modulation = LoRALinear(d, 6 * d)

    def forward(self, h: Tensor, c: Tensor, cond: Condition) -> Tensor:
        m = self.modulation(F.silu(c)).chunk(6, dim=1)
        x = modulate(self.norm_1(h), m[0], m[1])
        h = h + self.attn(x, x, x) * m[2].unsqueeze(1)
        h = h + self.cross(self.norm_cross(h), cond)
        x = modulate(self.norm_2(h), m[3], m[4])
        return h + self.mlp_out(F.gelu(self.mlp_in(x))) * m[5].unsqueeze(1)


class DiT(nn.Module):
    """``align_models::DiT``. ``predict(x, t, cond)``: ``t`` = flow times in ``[0, 1]``, f32
    ``[B]`` (multiplied by 1000 inside)."""

    parameterization = "FlowVelocity"

    def __init__(self, channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 96, depth: int = 4, heads: int = 4, context_dim: int = 64):
        super().__init__()
        if patch_size == 0 or image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
        if dim % 4:
            raise ValueError(f"dim {dim} must be a multiple of 4")
        p, d = patch_size, dim
        self.patch_size, self.channels, self.image_size = p, channels, image_size
        g = image_size // p
        self.patch_embed = conv2d(channels, d, p, stride=p)
        # A parameter in burn too (saved, not trained); loaded from the checkpoint.
        self.positions = nn.Parameter(sincos_positions(g, d), requires_grad=False)
        self.time = TimestepMlp(d, d)
        self.text_pool = LoRALinear(context_dim, d)
        self.blocks = nn.ModuleList([DiTBlock(d, heads, context_dim) for _ in range(depth)])
        self.norm_out = LayerNorm(d)
        self.modulation_out = LoRALinear(d, 2 * d)
        self.proj_out = LoRALinear(d, p * p * channels)

    @staticmethod
    def pooled_text(cond: Condition) -> Tensor:
        ctx = cond.context
        if cond.padding_mask is None:
            return ctx.mean(dim=1)
        keep = (~cond.padding_mask).to(ctx.dtype).unsqueeze(2)
        count = keep.sum(dim=1).clamp_min(1.0)
        return (ctx * keep).sum(dim=1) / count

    def forward(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        b = x.shape[0]
        p, c, s = self.patch_size, self.channels, self.image_size
        g = s // p
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.positions.unsqueeze(0)
        cvec = self.time(t * 1000.0) + self.text_pool(self.pooled_text(cond))
        for block in self.blocks:
            h = block(h, cvec, cond)
        m = self.modulation_out(F.silu(cvec)).chunk(2, dim=1)
        h = modulate(self.norm_out(h), m[0], m[1])
        out = self.proj_out(h)  # [B, N, p*p*C], features ordered (row, col, channel)
        return out.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, s, s)

    predict = forward


# ---------------------------------------------------------------------------------------------
# Shapes model: config, loading
# ---------------------------------------------------------------------------------------------


class TextToImage(nn.Module):
    """``align_models::TextToImage``: ``text`` + ``denoiser`` (the checkpoint's key prefixes)."""

    def __init__(self, text: TextEncoder, denoiser: nn.Module):
        super().__init__()
        self.text = text
        self.denoiser = denoiser


class ShapesModelRef:
    """A loaded Shapes model: ``encode(tokens) -> Condition``, ``predict(x, t, cond)``."""

    def __init__(self, config: dict, model: TextToImage, lora: Optional[Tuple[int, float]]):
        self.config = config
        self.kind = config["kind"]
        self.model = model
        self.lora = lora  # (rank, alpha) if adapters were loaded

    @property
    def text(self) -> TextEncoder:
        return self.model.text

    @property
    def denoiser(self) -> nn.Module:
        return self.model.denoiser

    @property
    def parameterization(self) -> str:
        return self.denoiser.parameterization

    @property
    def device(self) -> torch.device:
        return self.text.positions.device

    def encode(self, tokens: Tensor) -> Condition:
        """``tokens``: int ``[B, max_len]``, padded with ``0``."""
        return self.text(tokens)

    def predict(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """``x [B, C, S, S]`` f32, ``t [B]`` f32 (UNet: DDPM timestep ``0..T``; DiT: flow time
        in ``[0, 1]``); output ``[B, C, S, S]`` (UNet: ε or v; DiT: velocity)."""
        return self.denoiser(x, t.to(device=x.device, dtype=torch.float32), cond)

    def merge_lora(self) -> None:
        for m in self.model.modules():
            if isinstance(m, LoRALinear):
                m.merge_lora()

    def eval(self) -> "ShapesModelRef":
        self.model.eval()
        return self


def build_model(config: dict) -> TextToImage:
    """Builds an uninitialised :class:`TextToImage` for a ``model.json`` dict."""
    tc = config["text"]
    text = TextEncoder(tc["vocab_size"], tc["max_len"], tc.get("dim", 64), tc.get("layers", 2),
                       tc.get("heads", 4))
    kind = config["kind"]
    if kind == "Unet":
        uc = config["unet"]
        den = UNet(uc.get("in_channels", 3), uc.get("out_channels", 3),
                   uc.get("base_channels", 32), tuple(uc.get("channel_mults", (1, 2, 2))),
                   uc.get("num_res_blocks", 1), tuple(uc.get("attention", (False, False, True))),
                   uc.get("context_dim", 64), uc.get("num_heads", 4), uc.get("norm_groups", 8),
                   uc.get("parameterization", "Epsilon"))
    elif kind == "Dit":
        dc = config["dit"]
        image_size = config.get("image_size", 16)
        if dc.get("image_size", 16) != image_size:
            raise ValueError(f"dit.image_size {dc.get('image_size')} != image_size {image_size}")
        den = DiT(dc.get("channels", 3), dc.get("image_size", 16), dc.get("patch_size", 4),
                  dc.get("dim", 96), dc.get("depth", 4), dc.get("heads", 4),
                  dc.get("context_dim", 64))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return TextToImage(text, den)


def _load_state(model: nn.Module, tensors: Dict[str, Tensor], lora_rank: int,
                lora_alpha: float) -> int:
    """Copies burn-named tensors into ``model``; raises on any missing, unused or mis-shaped key.
    Returns the number of LoRA-adapted weights."""
    used = set()
    missing: List[str] = []
    problems: List[str] = []
    adapted = 0

    def take(key: str, shape) -> Optional[Tensor]:
        if key not in tensors:
            missing.append(key)
            return None
        t = tensors[key]
        used.add(key)
        if tuple(t.shape) != tuple(shape):
            problems.append(f"{key}: checkpoint {tuple(t.shape)} vs model {tuple(shape)}")
            return None
        if not t.is_floating_point():
            problems.append(f"{key}: dtype {t.dtype} is not a float")
            return None
        return t.to(torch.float32)

    def lora_of(key: str, d_in: int, d_out: int) -> Optional[Tuple[Tensor, Tensor]]:
        ka, kb = key + ".lora.a", key + ".lora.b"
        if ka not in tensors and kb not in tensors:
            return None
        if ka not in tensors or kb not in tensors:
            missing.append(kb if ka in tensors else ka)
            return None
        a = take(ka, (d_in, lora_rank))
        b = take(kb, (lora_rank, d_out))
        return None if a is None or b is None else (a, b)

    for prefix, module in model.named_modules():
        pre = prefix + "." if prefix else ""
        if isinstance(module, LoRALinear):
            key = pre + "weight"
            w = take(key, (module.d_in, module.d_out))  # burn layout [d_in, d_out]
            if w is not None:
                with torch.no_grad():
                    module.weight.copy_(w.t())
            ab = lora_of(key, module.d_in, module.d_out)
            if ab is not None:
                module.set_lora(ab[0], ab[1], lora_alpha / lora_rank)
                adapted += 1
            if module.bias is not None:
                b = take(pre + "bias", module.bias.shape)
                if b is not None:
                    with torch.no_grad():
                        module.bias.copy_(b)
            continue
        for name, param in module.named_parameters(recurse=False):
            key = pre + name
            t = take(key, param.shape)
            if t is None:
                continue
            if param.dim() == 2:
                # A LoRA on a non-Linear rank-2 parameter (none with the default targets):
                # burn composes W + (A @ B) * scale; fold it in once.
                ab = lora_of(key, param.shape[0], param.shape[1])
                if ab is not None:
                    t = t + (ab[0] @ ab[1]) * (lora_alpha / lora_rank)
                    adapted += 1
            with torch.no_grad():
                param.copy_(t)

    unused = sorted(set(tensors) - used)
    errors = []
    if missing:
        errors.append(f"missing tensors {sorted(set(missing))}")
    if unused:
        errors.append(f"unexpected tensors {unused}")
    if problems:
        errors.append(f"mismatches {problems}")
    if errors:
        raise KeyError("checkpoint does not match the model: " + "; ".join(errors))
    return adapted


def load_shapes_model(dir: str, device="cpu") -> ShapesModelRef:
    """Loads ``dir/model.json`` + ``dir/model.safetensors`` (burn's layout), with LoRA factors
    when the checkpoint holds ``*.lora.a`` / ``*.lora.b`` (rank/alpha from ``dir/lora.json``,
    default ``{"rank": 8, "alpha": 8}``). Raises on any missing, unused or mis-shaped key."""
    from safetensors.torch import load_file

    with open(os.path.join(dir, "model.json")) as f:
        config = json.load(f)
    model = build_model(config)
    tensors = load_file(os.path.join(dir, "model.safetensors"))
    has_lora = any(".lora." in k for k in tensors)
    rank, alpha = 8, 8.0
    lora_path = os.path.join(dir, "lora.json")
    if os.path.isfile(lora_path):
        with open(lora_path) as f:
            lc = json.load(f)
        rank, alpha = int(lc.get("rank", 8)), float(lc.get("alpha", 8.0))
        if rank < 1 or not math.isfinite(alpha):
            raise ValueError(f"{lora_path}: rank must be >= 1 and alpha finite")
    adapted = _load_state(model, tensors, rank, alpha)
    if has_lora and adapted == 0:
        raise KeyError("checkpoint holds LoRA tensors but none was attached")
    model.to(device=device, dtype=torch.float32).eval()
    if adapted:
        # As burn's `apply_lora`: every base parameter frozen, only the factors trainable.
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith("lora_a") or name.endswith("lora_b"))
    elif isinstance(model.denoiser, DiT):
        model.denoiser.positions.requires_grad_(False)
    return ShapesModelRef(config, model, (rank, alpha) if adapted else None)
