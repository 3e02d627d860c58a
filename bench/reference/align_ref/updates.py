"""PyTorch port of the sampler steps and policy-gradient updates that `bench-table` times.

Each function mirrors, in the same operation order and in f32, one piece of the Rust code:

* :func:`guided_predict` -- ``align_samplers::guided_predict`` (``cfg.rs``): one model call on
  the batch ``[uncond; cond]`` (``2B``), then ``u + s (c - u)``.
* :func:`ddim_mean` -- ``DdimSampler::step`` with ``ddpm_predictions`` (``ddim.rs``,
  ``ddpm.rs``) for an ε-model: ``x̂₀ = (x - √(1-ᾱ) ε)/√ᾱ``, clamp to ``[-c, c]``, ``ε``
  re-derived from the clamped ``x̂₀``, ``μ = √ᾱ' x̂₀ + √(1-ᾱ'-σ²) ε``.
* :func:`flow_sde_mean` -- ``FlowSdeSampler::step`` (``flow.rs``):
  ``μ = x (1 + σ_t² Δt/(2t)) + v (1 + σ_t² (1-t)/(2t)) Δt``.
* :func:`gaussian_log_prob`, :func:`gaussian_kl` -- ``align_core::gaussian`` with the ``Mean``
  reduction over ``C·H·W``.
* :func:`ppo_clip_loss` -- ``align_core::ppo_clip_loss`` (pessimistic max of the negated terms).
* :func:`policy_gradients` / :func:`rl_update` -- ``align_rl::policy_gradients`` (``update.rs``)
  and ``RlUpdate::step`` (``benches/workloads.rs``): for every trained step, re-encode the
  prompts with the policy's text encoder, CFG forward, log-prob, per-step loss
  ``L_k = L_pg + β mean_i KL_i``, backward of ``L_k / |S|`` (gradients accumulate); the
  reference (adapters off: LoRA deltas × 0, as ``with_lora_scale(policy, 0)``) re-encodes the
  prompts with *its* text encoder and runs its CFG forward under ``no_grad``; then one AdamW
  step over the LoRA factors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor

from .models import Condition, LoRALinear, ShapesModelRef

HALF_LN_TAU = 0.9189385332046727
"""½ ln(2π), as ``align_core::gaussian``."""


# ---------------------------------------------------------------------------------------------
# Guidance, sampler steps, densities
# ---------------------------------------------------------------------------------------------


def cat_conditions(a: Condition, b: Condition) -> Condition:
    """``Condition::cat([a, b])``: concatenation along the batch."""
    if (a.padding_mask is None) != (b.padding_mask is None):
        raise ValueError("condition padding masks: all or none")
    mask = None if a.padding_mask is None else torch.cat([a.padding_mask, b.padding_mask], 0)
    return Condition(torch.cat([a.context, b.context], 0), mask)


def guided_predict(model: ShapesModelRef, x: Tensor, t: float, cond: Condition,
                   uncond: Optional[Condition], scale: float) -> Tensor:
    """CFG output at ``x [B, C, H, W]`` for the scalar model time ``t`` (one batched call)."""
    b = x.shape[0]
    tt = torch.full((b,), float(t), dtype=torch.float32)  # Rust: vec![t as f32; b]
    if scale == 1.0 or uncond is None:
        if scale != 1.0:
            raise ValueError(f"guidance {scale} needs an unconditional condition")
        return model.predict(x, tt, cond)
    both = cat_conditions(uncond, cond)
    out = model.predict(torch.cat([x, x], 0), torch.cat([tt, tt], 0), both)
    u, c = out.chunk(2, 0)
    return u + (c - u) * scale


def ddim_mean(x: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_prev: float, std: float,
              clip: Optional[float]) -> Tensor:
    """The DDIM(η) Gaussian mean of an ε-prediction (``ddpm_predictions`` + ``DdimSampler``)."""
    sa, sb = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    x0 = (x - eps * sb) / sa
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = (x - x0 * sa) / sb
    direction = math.sqrt(max(1.0 - alpha_bar_prev - std * std, 0.0))
    return x0 * math.sqrt(alpha_bar_prev) + eps * direction


def flow_sde_mean(x: Tensor, v: Tensor, t: float, t_next: float, sigma: float) -> Tensor:
    """The Flow-GRPO SDE (Euler–Maruyama) Gaussian mean of a velocity prediction."""
    dt = t_next - t
    s2 = sigma * sigma
    return x * (1.0 + s2 * dt / (2.0 * t)) + v * ((1.0 + s2 * (1.0 - t) / (2.0 * t)) * dt)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """``gaussian_log_prob(x, mean, std, Mean)``: ``[B]``, mean over the non-batch elements."""
    per_element = (x - mean).square() * (-1.0 / (2.0 * std * std)) + (-(math.log(std) + HALF_LN_TAU))
    return per_element.reshape(x.shape[0], -1).mean(1)


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: float) -> Tensor:
    """Closed-form ``KL(N(μ_p, σ²) ‖ N(μ_q, σ²))``, mean over the non-batch elements: ``[B]``.
    (The Rust constant term ``ln(σ_q/σ_p) + σ_p²/(2σ_q²) - ½`` is exactly 0 for equal σ.)"""
    per_element = (mean_p - mean_q).square() * (1.0 / (2.0 * std * std))
    return per_element.reshape(mean_p.shape[0], -1).mean(1)


@dataclass
class PpoClip:
    loss: Tensor           # scalar
    ratio: Tensor          # [B], detached
    clip_fraction: Tensor  # scalar


def ppo_clip_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                  clip_range: float) -> PpoClip:
    """``mean_i max(-Â ρ, -Â clip(ρ, 1-ε, 1+ε))``, ``ρ = exp(log p - log p_old)``."""
    ratio = (log_prob - old_log_prob.detach()).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    r = ratio.detach()
    return PpoClip(loss, r, ((r - 1.0).abs() > clip_range).float().mean())


@contextlib.contextmanager
def adapters_off(model: ShapesModelRef):
    """The reference policy: every LoRA delta multiplied by 0 (``with_lora_scale(m, 0.0)``)."""
    saved = []
    for m in model.model.modules():
        if isinstance(m, LoRALinear) and m.lora_a is not None:
            saved.append((m, m.lora_scale))
            m.lora_scale = 0.0
    try:
        yield model
    finally:
        for m, s in saved:
            m.lora_scale = s


# ---------------------------------------------------------------------------------------------
# One exported update (EXPORT_DIR/ddpo, EXPORT_DIR/grpo)
# ---------------------------------------------------------------------------------------------


@dataclass
class UpdateData:
    """``update.json`` + ``update.safetensors`` of one exported update."""

    meta: dict
    tensors: Dict[str, Tensor]

    @property
    def steps(self) -> List[dict]:
        return self.meta["steps"]

    @property
    def kind(self) -> str:
        s = self.steps[0]
        if "alpha_bar" in s:
            return "ddim"
        if "sigma" in s:
            return "flow_sde"
        raise ValueError(f"update.json step {s} is neither DDIM nor flow-SDE")

    def step_mean(self, step: dict, x: Tensor, out: Tensor) -> Tensor:
        if self.kind == "ddim":
            clip = step.get("clip_sample")
            return ddim_mean(x, out, step["alpha_bar"], step["alpha_bar_prev"], step["std"],
                             None if clip is None else float(clip))
        return flow_sde_mean(x, out, step["t"], step["t_next"], step["sigma"])


def load_update(dir: str) -> UpdateData:
    from safetensors.torch import load_file

    with open(os.path.join(dir, "update.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(dir, "update.safetensors"))
    for k in ("tokens", "null_tokens"):
        tensors[k] = tensors[k].to(torch.int64)
    return UpdateData(meta, tensors)


@dataclass
class UpdateStats:
    """``align_rl::UpdateStats`` (means over the trained steps) plus per-step detail."""

    loss: float = 0.0
    policy_loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    log_probs: Dict[int, Tensor] = field(default_factory=dict)     # k -> [B]
    means: Dict[int, Tensor] = field(default_factory=dict)         # k -> policy μ (detached)
    ref_means: Dict[int, Tensor] = field(default_factory=dict)     # k -> reference μ


def policy_gradients(policy: ShapesModelRef, data: UpdateData, kl: Optional[bool] = None,
                     keep: bool = False) -> UpdateStats:
    """Accumulates into ``.grad`` the gradient of ``mean_k L_k`` (PPO-clip, with the closed-form
    KL when ``kl`` -- default: ``kl_beta > 0``) and returns the statistics. ``keep`` stores the
    per-step log-probs and means (for the agreement checks)."""
    meta, ts = data.meta, data.tensors
    beta = float(meta.get("kl_beta", 0.0))
    kl = beta > 0.0 if kl is None else kl
    g, clip_range = float(meta["guidance"]), float(meta["clip_range"])
    tokens, nulls, adv = ts["tokens"], ts["null_tokens"], ts["advantages"].float()
    n = float(len(data.steps))
    stats = UpdateStats()
    for step in data.steps:
        k = int(step["k"])
        x, nxt, old = ts[f"x.{k}"], ts[f"next.{k}"], ts[f"old_log_prob.{k}"]
        std = float(step["std"])
        # Per-step re-encoding (two calls, as the workload's `encode` closure).
        cond, uncond = policy.encode(tokens), policy.encode(nulls)
        out = guided_predict(policy, x, step["model_time"], cond, uncond, g)
        mean = data.step_mean(step, x, out)
        log_prob = gaussian_log_prob(nxt, mean, std)
        pg = ppo_clip_loss(log_prob, old, adv, clip_range)
        loss = pg.loss
        kl_i = None
        if kl:
            with torch.no_grad(), adapters_off(policy):
                rc, ru = policy.encode(tokens), policy.encode(nulls)
                ref_out = guided_predict(policy, x, step["model_time"], rc, ru, g)
                ref_mean = data.step_mean(step, x, ref_out)
            kl_i = gaussian_kl(mean, ref_mean, std)
            if beta > 0.0:
                loss = loss + kl_i.mean() * beta
            if keep:
                stats.ref_means[k] = ref_mean
        stats.loss += float(loss.detach()) / n
        stats.policy_loss += float(pg.loss.detach()) / n
        stats.kl += (float(kl_i.detach().mean()) if kl_i is not None else 0.0) / n
        stats.clip_fraction += float(pg.clip_fraction) / n
        if keep:
            stats.log_probs[k] = log_prob.detach()
            stats.means[k] = mean.detach()
        (loss / n).backward()
    return stats


def lora_parameters(policy: ShapesModelRef) -> List[torch.nn.Parameter]:
    params = [p for p in policy.model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable (LoRA) parameter")
    return params


def adamw(policy: ShapesModelRef, meta: dict) -> torch.optim.AdamW:
    """``workloads::adamw()``: burn ``AdamWConfig`` (β 0.9 / 0.999), weight decay and ε from
    ``update.json``, over the LoRA factors."""
    return torch.optim.AdamW(lora_parameters(policy), lr=float(meta["learning_rate"]),
                             betas=(0.9, 0.999), eps=float(meta["adam_eps"]),
                             weight_decay=float(meta["weight_decay"]))


def rl_update(policy: ShapesModelRef, data: UpdateData, optim: torch.optim.Optimizer) -> float:
    """``RlUpdate::step``: gradient of one update, then one AdamW step; returns the loss."""
    optim.zero_grad(set_to_none=True)
    stats = policy_gradients(policy, data)
    optim.step()
    return stats.loss
