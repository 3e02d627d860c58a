#!/usr/bin/env python3
"""The PyTorch side of `cargo xtask bench --vs-torch`.

    python3 bench/reference/torch_bench.py EXPORT_DIR --threads N [--min-time S] [--max-reps R]
                                           [--json OUT.jsonl] [--only w1,w2] [--no-flops]

EXPORT_DIR is written by `bench-table --export DIR` (benches/bench_table.rs): `unet/`, `dit/`
(base models + `io.safetensors`), `ddpo/`, `grpo/` (LoRA policy + `update.safetensors` /
`update.json` of one DDPO-IS / Flow-GRPO update) and `workloads.json`. In one run the script

1. checks agreement with the Rust outputs (before any timing; exit status 1 on a failure):
   forward of both models (relative error), per-step re-scored log-probs of both updates,
   Flow-GRPO's reference step means, KL and the update losses;
2. prints torch's FLOP count (`torch.utils.flop_counter`) of one forward of each model at
   batch 32 next to a re-statement of the analytic count of `benches/flops.rs`;
3. times the workloads of `bench-table` under the same names and protocol (one warm-up run,
   then >= 3 and <= --max-reps runs until --min-time has passed -- one run if the warm-up took
   over 20 s --, median) with `torch.set_num_threads(N)`, interop threads 1, and prints a
   Markdown table (dense GFLOP/s from the same analytic counts); with --json it appends one
   JSON line per workload.

Timing note: with other processes on the cores (a compile, the Rust bench), OpenMP's default
spin-waiting makes torch's CPU timings several times slower (measured 10x for forward_unet on 2
busy cores); `OMP_WAIT_POLICY=PASSIVE` in the environment avoids that. The header line prints
the policy in effect.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time as _time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from align_ref import load_shapes_model  # noqa: E402
from align_ref import updates as U  # noqa: E402

WORKLOADS = ["forward_unet", "forward_dit", "sampler_step_unet", "rollout_dit",
             "ddpo_is_update", "flow_grpo_update"]

FORWARD_TOL = 1e-4
"""Max relative error ‖ours − ref‖/‖ref‖ of a forward pass."""

LOG_PROB_TOL = 1e-5
"""Max abs error of a re-scored (mean-reduced) log-prob. The PPO clip range is 1e-4 on the
ratio ρ = exp(Δ log p), so log-probs must agree to well below it for the clip decisions and the
ratios to be the same; 1e-5 is a tenth of it (observed: ~1e-7)."""

KL_REL_TOL = 1e-3
"""Max relative error of the mean closed-form KL (a squared difference of two nearly equal
step means, so it loses ~3 digits to cancellation)."""

MEAN_REL_TOL = 1e-4
"""Max relative error of the exported reference step means."""

F32_EPS = 2.0 ** -24


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs: a re-statement of benches/flops.rs
# ---------------------------------------------------------------------------------------------


def _conv(ci, co, k, ho, wo):
    return 2.0 * ci * co * k * k * ho * wo


def _linear(di, do, tokens):
    return 2.0 * di * do * tokens


def _mha(n, m, d):
    return _linear(d, d, n) * 2 + _linear(d, d, m) * 2 + 2.0 * 2.0 * n * m * d


def _tmlp(f, d):
    return _linear(f, d, 1) + _linear(d, d, 1)


def _resblock(ci, co, temb, h, w):
    skip = _conv(ci, co, 1, h, w) if ci != co else 0.0
    return _conv(ci, co, 3, h, w) + _conv(co, co, 3, h, w) + _linear(temb, co, 1) + skip


def _spatial(c, cd, L, h, w):
    n = h * w
    return (_linear(c, c, n) + _mha(n, n, c) + _linear(cd, c, L) + _mha(n, L, c)
            + _linear(c, 4 * c, n) + _linear(4 * c, c, n) + _linear(c, c, n))


def unet_flops(u: dict, batch: int, image_size: int, ctx: int) -> float:
    c = u["base_channels"]
    temb = 4 * c
    mults, attn = u["channel_mults"], u["attention"]
    levels, s = len(mults), image_size
    total = _tmlp(c, temb) + _conv(u["in_channels"], c, 3, s, s)
    skips, ch = [c], c
    for i, m in enumerate(mults):
        out = m * c
        for _ in range(u["num_res_blocks"]):
            total += _resblock(ch, out, temb, s, s)
            if attn[i]:
                total += _spatial(out, u["context_dim"], ctx, s, s)
            ch = out
            skips.append(ch)
        if i + 1 < levels:
            total += _conv(ch, ch, 3, s // 2, s // 2)
            s //= 2
            skips.append(ch)
    total += 2 * _resblock(ch, ch, temb, s, s) + _spatial(ch, u["context_dim"], ctx, s, s)
    for i in reversed(range(levels)):
        out = mults[i] * c
        for _ in range(u["num_res_blocks"] + 1):
            skip = skips.pop() if skips else c
            total += _resblock(ch + skip, out, temb, s, s)
            if attn[i]:
                total += _spatial(out, u["context_dim"], ctx, s, s)
            ch = out
        if i > 0:
            s *= 2
            total += _conv(ch, ch, 3, s, s)
    total += _conv(ch, u["out_channels"], 3, s, s)
    return total * batch


def dit_flops(d: dict, batch: int, ctx: int) -> float:
    dim, p = d["dim"], d["patch_size"]
    g = d["image_size"] // p
    n = g * g
    block = (_mha(n, n, dim) + _linear(d["context_dim"], dim, ctx) + _mha(n, ctx, dim)
             + _linear(dim, 4 * dim, n) + _linear(4 * dim, dim, n) + _linear(dim, 6 * dim, 1))
    per_image = (_conv(d["channels"], dim, p, g, g) + _tmlp(dim, dim)
                 + _linear(d["context_dim"], dim, 1) + block * d["depth"]
                 + _linear(dim, 2 * dim, 1) + _linear(dim, p * p * d["channels"], n))
    return per_image * batch


def text_flops(t: dict, batch: int) -> float:
    d, L = t["dim"], t["max_len"]
    return (_mha(L, L, d) + _linear(d, 4 * d, L) + _linear(4 * d, d, L)) * t["layers"] * batch


def denoiser_flops(config: dict, batch: int) -> float:
    ctx = config["text"]["max_len"]
    if config["kind"] == "Unet":
        return unet_flops(config["unet"], batch, config["image_size"], ctx)
    return dit_flops(config["dit"], batch, ctx)


def forward_flops(config: dict, batch: int, prompts: int) -> float:
    """``workloads::forward_flops``: denoiser for ``batch`` images + text encoder."""
    return denoiser_flops(config, batch) + text_flops(config["text"], prompts)


# ---------------------------------------------------------------------------------------------
# Timing (bench_table.rs `time`)
# ---------------------------------------------------------------------------------------------


def time_it(f: Callable[[], None], min_time: float, max_reps: int) -> Tuple[float, int]:
    t0 = _time.perf_counter()
    f()
    warm = _time.perf_counter() - t0
    if warm > 20.0:
        reps = 1
    else:
        mx = max(max_reps, 1)
        reps = min(max(math.ceil(min_time / max(warm, 1e-6)), min(3, mx)), mx)
    times = []
    for _ in range(reps):
        t = _time.perf_counter()
        f()
        times.append(_time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], reps


def human(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.2f} s"


# ---------------------------------------------------------------------------------------------
# Agreement checks
# ---------------------------------------------------------------------------------------------


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        raise ValueError(f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    d = ours - ref
    n = ref.norm().item()
    return d.abs().max().item(), (d.norm().item() / n if n > 0 else d.norm().item())


class Checks:
    def __init__(self):
        self.failed: List[str] = []

    def record(self, name: str, ok: bool, line: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {line}")
        if not ok:
            self.failed.append(name)


def check_forward(export: str, name: str, checks: Checks) -> None:
    from safetensors.torch import load_file

    d = os.path.join(export, name)
    model = load_shapes_model(d)
    io = load_file(os.path.join(d, "io.safetensors"))
    with torch.no_grad():
        out = model.predict(io["x"].float(), io["t"].float(), model.encode(io["tokens"].long()))
    mx, rel = rel_err(out, io["out"].float())
    checks.record(f"forward_{name}", rel <= FORWARD_TOL,
                  f"max abs err {mx:.3e}, rel err {rel:.3e} (tol {FORWARD_TOL:g})")


def pg_loss_f64(lp: Dict[int, torch.Tensor], old: Dict[int, torch.Tensor], adv: torch.Tensor,
                eps: float) -> float:
    """The PPO-clip loss, mean over steps, in f64 from given log-probs."""
    a = adv.double()
    total = 0.0
    for k in lp:
        r = (lp[k].double() - old[k].double()).exp()
        total += torch.maximum(-a * r, -a * r.clamp(1 - eps, 1 + eps)).mean().item()
    return total / len(lp)


def check_update(export: str, name: str, checks: Checks) -> None:
    d = os.path.join(export, name)
    policy = load_shapes_model(d)
    data = U.load_update(d)
    meta, ts = data.meta, data.tensors
    beta, eps = float(meta.get("kl_beta", 0.0)), float(meta["clip_range"])
    stats = U.policy_gradients(policy, data, keep=True)
    grads = [p.grad for p in U.lora_parameters(policy)]
    finite = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    gnorm = math.sqrt(sum(float(g.double().square().sum()) for g in grads if g is not None))
    checks.record(f"{name} gradient", finite and gnorm > 0,
                  f"{sum(g is not None for g in grads)}/{len(grads)} LoRA factors have a "
                  f"finite gradient, ‖g‖ = {gnorm:.3e}")

    # Per-step log-probs.
    rust_lp = {int(k): torch.tensor(v, dtype=torch.float32) for k, v in meta["log_probs"].items()}
    old = {k: ts[f"old_log_prob.{k}"] for k in rust_lp}
    worst = 0.0
    for k in sorted(rust_lp):
        err = (stats.log_probs[k] - rust_lp[k]).abs().max().item()
        worst = max(worst, err)
        print(f"       step {k}: log-prob max abs err {err:.3e} "
              f"(values ~{rust_lp[k].abs().mean().item():.3f}, "
              f"|log p - log p_old| up to {(rust_lp[k] - old[k]).abs().max().item():.2e})")
    checks.record(f"{name} log-probs", worst <= LOG_PROB_TOL,
                  f"max abs err {worst:.3e} (tol {LOG_PROB_TOL:g})")

    # Reference step means (Flow-GRPO): the exporter writes `rescore(reference, …)` with the
    # prompts encoded by the reference's own (adapters-off) text encoder, as
    # `policy_gradients` does and as the update here does.
    if beta > 0.0:
        worst_rel = 0.0
        for step in data.steps:
            k = int(step["k"])
            _, rel = rel_err(stats.ref_means[k], ts[f"ref_mean.{k}"])
            worst_rel = max(worst_rel, rel)
        checks.record(f"{name} reference means", worst_rel <= MEAN_REL_TOL,
                      f"rel err {worst_rel:.3e} vs the exported ref_mean (tol {MEAN_REL_TOL:g})")
        kl_rel = abs(stats.kl - meta["kl"]) / max(abs(meta["kl"]), 1e-30)
        checks.record(f"{name} KL", kl_rel <= KL_REL_TOL,
                      f"ours {stats.kl:.6e} vs Rust {meta['kl']:.6e}, rel err {kl_rel:.2e} "
                      f"(tol {KL_REL_TOL:g})")

    # Clip fraction: a count, must agree exactly unless a ratio sits on the clip boundary.
    cf_ok = abs(stats.clip_fraction - meta["clip_fraction"]) < 1e-6
    checks.record(f"{name} clip fraction", cf_ok,
                  f"ours {stats.clip_fraction:.5f} vs Rust {meta['clip_fraction']:.5f}")

    # The loss. mean_k [ mean_i max(-A ρ, -A clip(ρ)) ] + β KL is Lipschitz in the ratios:
    # |ΔL| <= mean_k mean_i |A_i| |Δρ_ik| + β |ΔKL|. With ρ ≈ 1 and zero-mean advantages the
    # loss itself is ~1e-6 while its terms are O(1), so (i) the f32 rounding of those terms
    # (~ a few ulps of max|A ρ| ≈ 1e-7) and (ii) the log-prob differences Δ log p ≈ Δρ (~1e-7,
    # checked above) are of the order of the loss: it is compared with an absolute tolerance
    # = the bound from the *observed* log-prob differences + 4 ulp(max|A ρ|) of rounding (+ β|ΔKL|).
    adv = ts["advantages"].double()
    bound = 0.0
    for k in rust_lp:
        r_ours = (stats.log_probs[k].double() - old[k].double()).exp()
        r_rust = (rust_lp[k].double() - old[k].double()).exp()
        bound += (adv.abs() * (r_ours - r_rust).abs()).mean().item() / len(rust_lp)
    max_term = max((adv.abs() * (rust_lp[k].double() - old[k].double()).exp()).max().item()
                   for k in rust_lp)
    rounding = 4 * F32_EPS * max_term
    kl_slack = beta * abs(stats.kl - meta["kl"])
    tol = bound + rounding + kl_slack
    d_loss = abs(stats.loss - meta["loss"])
    # The formula alone: the PPO loss recomputed in f64 from the Rust log-probs.
    formula = pg_loss_f64(rust_lp, old, adv, eps)
    d_formula = abs(formula - meta["policy_loss"])
    checks.record(f"{name} loss", d_loss <= tol and d_formula <= rounding,
                  f"ours {stats.loss:.6e} vs Rust {meta['loss']:.6e}: |Δ| {d_loss:.2e} "
                  f"{'<=' if d_loss <= tol else '>'} tol "
                  f"{tol:.2e} (= mean|A||Δρ| {bound:.2e} + rounding {rounding:.2e} + β|ΔKL| "
                  f"{kl_slack:.2e}); policy loss {stats.policy_loss:.6e} vs "
                  f"{meta['policy_loss']:.6e}; PPO formula in f64 on the Rust log-probs "
                  f"{formula:.6e} (|Δ| {d_formula:.2e} vs rounding tol, "
                  f"mean|A| {adv.abs().mean().item():.3f})")


# ---------------------------------------------------------------------------------------------
# FLOP counts
# ---------------------------------------------------------------------------------------------


def count_flops(export: str, images: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    print("\nFLOPs of one forward at batch", images, "(prompts encoded outside the count):")
    print("| model | torch FlopCounterMode | analytic (benches/flops.rs, re-stated) | ratio |"
          " torch by op |")
    print("|---|---|---|---|---|")
    for name in ("unet", "dit"):
        from safetensors.torch import load_file

        d = os.path.join(export, name)
        model = load_shapes_model(d)
        io = load_file(os.path.join(d, "io.safetensors"))
        x, t = io["x"][:images].float(), io["t"][:images].float()
        with torch.no_grad():
            cond = model.encode(io["tokens"][:images].long())
            fc = FlopCounterMode(display=False)
            with fc:
                model.predict(x, t, cond)
        total = fc.get_total_flops()
        by_op = {str(k).split(".")[-1] if not hasattr(k, "__name__") else k.__name__: v
                 for k, v in fc.get_flop_counts().get("Global", {}).items()}
        analytic = denoiser_flops(model.config, images)
        ops = ", ".join(f"{k} {v / 1e9:.4f}" for k, v in sorted(by_op.items()))
        print(f"| {name} | {total:,} ({total / 1e9:.4f} GFLOP) | {analytic:,.0f} "
              f"({analytic / 1e9:.4f} GFLOP) | {total / analytic:.6f} | {ops} |")
        with torch.no_grad():
            fc = FlopCounterMode(display=False)
            with fc:
                model.encode(io["tokens"][:images].long())
        tt = fc.get_total_flops()
        ta = text_flops(model.config["text"], images)
        print(f"| {name} text encoder | {tt:,} | {ta:,.0f} | {tt / ta:.6f} | |")


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


def run(args) -> int:
    from safetensors.torch import load_file

    export = args.export_dir
    with open(os.path.join(export, "workloads.json")) as f:
        wl = json.load(f)
    images, train_steps = int(wl["images"]), int(wl["train_steps"])
    wanted = set(args.only.split(",")) if args.only else set(WORKLOADS)
    unknown = wanted - set(WORKLOADS)
    if unknown:
        print(f"--only: unknown workload(s) {sorted(unknown)} (known: {WORKLOADS})",
              file=sys.stderr)
        return 2

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(interop {torch.get_num_interop_threads()}), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    torch.manual_seed(0)

    # 1. Agreement.
    print("\nAgreement with the Rust outputs:")
    checks = Checks()
    for name in ("unet", "dit"):
        check_forward(export, name, checks)
    for name in ("ddpo", "grpo"):
        check_update(export, name, checks)
    if checks.failed:
        print(f"\nagreement checks failed: {checks.failed}", file=sys.stderr)
        return 1

    # 2. FLOPs.
    if not args.no_flops:
        count_flops(export, images)

    # 3. Timing.
    print(f"\nTiming (min time {args.min_time:g} s, max reps {args.max_reps}):", file=sys.stderr)
    rows: List[Tuple[str, float, int, int, float]] = []

    def push(w, r, imgs, flops):
        print(f"torch_bench: {w}: {r[0]:.4f} s (median of {r[1]})", file=sys.stderr)
        rows.append((w, r[0], r[1], imgs, flops))

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    ps, _ = time_it(lambda: torch.mm(a, b), args.min_time, args.max_reps)
    peak = 2.0 * n ** 3 / ps / 1e9
    print(f"torch_bench: peak {peak:.1f} GFLOP/s ({n}×{n} f32 matmul)", file=sys.stderr)
    del a, b

    unet = load_shapes_model(os.path.join(export, "unet"))
    dit = load_shapes_model(os.path.join(export, "dit"))
    uio = load_file(os.path.join(export, "unet", "io.safetensors"))
    dio = load_file(os.path.join(export, "dit", "io.safetensors"))
    upd_u = U.load_update(os.path.join(export, "ddpo"))
    tokens = uio["tokens"].long()
    nulls = upd_u.tensors["null_tokens"][:1].expand(images, -1).contiguous()
    ctx = unet.config["text"]["max_len"]
    size = unet.config["image_size"]  # the world's image side (16 in world v2)
    if dit.config["image_size"] != size:
        raise SystemExit(f"torch_bench: UNet images are {size} px but DiT images are "
                         f"{dit.config['image_size']} px")
    g = float(upd_u.meta["guidance"])

    if "forward_unet" in wanted:
        with torch.no_grad():
            c = unet.encode(tokens)
            x, t = uio["x"].float(), uio["t"].float()
            r = time_it(lambda: unet.predict(x, t, c), args.min_time, args.max_reps)
        push("forward_unet", r, images, unet_flops(unet.config["unet"], images, size, ctx))
    if "forward_dit" in wanted:
        with torch.no_grad():
            c = dit.encode(dio["tokens"].long())
            x, t = dio["x"].float(), dio["t"].float()
            r = time_it(lambda: dit.predict(x, t, c), args.min_time, args.max_reps)
        push("forward_dit", r, images, dit_flops(dit.config["dit"], images, ctx))
    if "sampler_step_unet" in wanted:
        step = next(s for s in upd_u.steps if int(s["k"]) == 3)  # workloads::sampler_step: k = 3
        with torch.no_grad():
            c, u = unet.encode(tokens), unet.encode(nulls)
            x, nxt = torch.randn(images, 3, size, size), torch.randn(images, 3, size, size)

            def sampler_step():
                out = U.guided_predict(unet, x, step["model_time"], c, u, g)
                mean = upd_u.step_mean(step, x, out)
                return U.gaussian_log_prob(nxt, mean, step["std"])

            r = time_it(sampler_step, args.min_time, args.max_reps)
        push("sampler_step_unet", r, images, unet_flops(unet.config["unet"], 2 * images, size, ctx))
    if "rollout_dit" in wanted:
        # workloads::flow_sampler: FlowGrid::new(10, 1.0) (uniform 1 → 0), σ_t = a √(t/(1−t)),
        # a = 0.7, with 1 − t_1 under the root at t = 1.
        times = [1.0] + [1.0 - i / train_steps for i in range(1, train_steps)] + [0.0]
        a_noise = 0.7

        def sigma(k):
            tk = times[k]
            denom = times[1] if tk >= 1.0 else tk
            return a_noise * math.sqrt(tk / (1.0 - denom))

        grid = [(times[k], times[k + 1], sigma(k), sigma(k) * math.sqrt(times[k] - times[k + 1]))
                for k in range(train_steps)]
        gen = torch.Generator().manual_seed(0)

        def rollout():
            with torch.no_grad():
                c, u = dit.encode(tokens), dit.encode(nulls)
                x = torch.randn(images, 3, size, size, generator=gen)
                latents, log_probs, means = [x], [], []
                for k, (tk, tn, s, std) in enumerate(grid):
                    noise = torch.randn(images, 3, size, size, generator=gen)
                    out = U.guided_predict(dit, x, tk, c, u, g)
                    mean = U.flow_sde_mean(x, out, tk, tn, s)
                    x = mean + noise * std
                    log_probs.append(U.gaussian_log_prob(x, mean, std))
                    means.append(mean)
                    peak_abs = x.abs().max().item()  # the Rust finiteness read-back
                    if not math.isfinite(peak_abs):
                        raise FloatingPointError(f"non-finite latent after step {k}")
                    latents.append(x)
            return latents

        r = time_it(rollout, args.min_time, args.max_reps)
        push("rollout_dit", r, images,
             train_steps * forward_flops(dit.config, 2 * images, 0)
             + text_flops(dit.config["text"], 2 * images))
    for w, d, per_step in (("ddpo_is_update", "ddpo", 3.0), ("flow_grpo_update", "grpo", 4.0)):
        if w not in wanted:
            continue
        policy = load_shapes_model(os.path.join(export, d))
        data = U.load_update(os.path.join(export, d))
        optim = U.adamw(policy, data.meta)
        r = time_it(lambda: U.rl_update(policy, data, optim), args.min_time, args.max_reps)
        samples = data.tensors["advantages"].shape[0]
        f = len(data.steps) * per_step * forward_flops(policy.config, 2 * samples, 2 * samples)
        push(w, r, samples, f)

    threads = torch.get_num_threads()
    print(f"\n| workload | backend | median | runs | images/s | dense GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    print(f"| peak: {n}×{n} f32 matmul | torch | | | | {peak:.1f} | 100 |")
    lines = []
    for w, s, reps, imgs, flops in rows:
        gf = flops / s / 1e9
        print(f"| {w} | torch | {human(s)} | {reps} | {imgs / s:.1f} | {gf:.1f} | "
              f"{100 * gf / peak:.0f} |")
        lines.append({"workload": w, "backend": "torch", "seconds": s, "reps": reps,
                      "torch_version": torch.__version__, "threads": threads,
                      "images": imgs, "flops": flops, "peak_gflops": peak})
    if args.json:
        with open(args.json, "a") as f:
            for j in lines:
                f.write(json.dumps(j) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--json", help="append one JSON line per workload to this file")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP-count table")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    # Before any parallel work: interop threads can only be set once, first.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
