"""Single operations at the shapes of the `align` workloads, in PyTorch.

The counterpart of `bench-table --ops` (benches/bench_table.rs, function `ops`): the same
operations, shapes and timing protocol (one warm-up run, then at least 3 runs until
--min-time has passed, at most --max-reps; the median), so that a slow burn operation can be
pointed at with a minimal reproducer.

    python3 bench/reference/ops.py --threads 2 [--json OUT.jsonl]
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, min_time, max_reps):
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    reps = 1 if warm > 20 else max(min(3, max_reps), min(max_reps, math.ceil(min_time / max(warm, 1e-6))))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--max-reps", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    rows = []

    def add(name, fn, flops):
        s, reps = timed(fn, a.min_time, a.max_reps)
        rows.append((name, s, reps, flops))

    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    conv_flops = 2.0 * 32 * 32 * 9 * 32 * 32 * 64
    x = torch.randn(64, 32, 32, 32)
    with torch.no_grad():
        add("op_conv3x3_32c_32px_b64_fwd", lambda: conv(x), conv_flops)
    for p in conv.parameters():
        p.requires_grad_(True)

    def fwd_bwd():
        xt = x.clone().requires_grad_(True)
        conv(xt).sum().backward()
        return xt.grad

    add("op_conv3x3_32c_32px_b64_fwd_bwd", fwd_bwd, 3 * conv_flops)
    c64 = torch.nn.Conv2d(64, 64, 3, padding=1)
    x8 = torch.randn(64, 64, 8, 8)
    gn = torch.nn.GroupNorm(8, 32)
    lin = torch.nn.Linear(96, 384)
    h = torch.randn(64, 256, 96)
    mha = torch.nn.MultiheadAttention(96, 4, batch_first=True)
    ln = torch.nn.LayerNorm(96)
    with torch.no_grad():
        add("op_conv3x3_64c_8px_b64_fwd", lambda: c64(x8), 2.0 * 64 * 64 * 9 * 64 * 64)
        add("op_group_norm_32c_32px_b64_fwd", lambda: gn(x), 0.0)
        g3 = x.reshape(64, 8, 4096)

        def var_two_pass():
            mean = g3.mean(dim=2, keepdim=True)
            return (g3 - mean).square().mean(dim=2, keepdim=True)

        def var_one_pass():
            mean = g3.mean(dim=2, keepdim=True)
            return g3.square().mean(dim=2, keepdim=True) - mean.square()

        add("op_variance_two_pass_64x8x4096", var_two_pass, 0.0)
        add("op_variance_one_pass_64x8x4096", var_one_pass, 0.0)
        add("op_linear_16384x96x384_fwd", lambda: lin(h), 2.0 * 64 * 256 * 96 * 384)
        h2 = h.reshape(64 * 256, 96)
        add("op_linear_2d_16384x96x384_fwd", lambda: lin(h2), 2.0 * 64 * 256 * 96 * 384)
        hv2 = torch.randn(32 * 64, 96)
        add("op_linear_2048x96x384_fwd", lambda: lin(hv2), 2.0 * 32 * 64 * 96 * 384)
        add(
            "op_mha_256tok_96d_4h_b64_fwd",
            lambda: mha(h, h, h, need_weights=False),
            64.0 * (4 * 2 * 256 * 96 * 96 + 4 * 256 * 256 * 96),
        )
        mlp = torch.randn(32, 64, 384)
        add("op_gelu_erf_32x64x384_fwd", lambda: torch.nn.functional.gelu(mlp), 0.0)
        add("op_silu_32x64x384_fwd", lambda: torch.nn.functional.silu(mlp), 0.0)
        add("op_layer_norm_16384x96_fwd", lambda: ln(h), 0.0)

    # Our replacements of the same operations (`op_group_norm_ours_…`, `op_mha_ours_fused_…`)
    # compute what PyTorch's modules above compute, so they are compared with the same times.
    same = {
        "op_group_norm_ours_32c_32px_b64_fwd": "op_group_norm_32c_32px_b64_fwd",
        "op_mha_ours_fused_256tok_96d_4h_b64_fwd": "op_mha_256tok_96d_4h_b64_fwd",
        "op_gemm_crate_16384x96x384": "op_linear_2d_16384x96x384_fwd",
        "op_gemm_crate_2048x96x384": "op_linear_2048x96x384_fwd",
        "op_gelu_ours_32x64x384_fwd": "op_gelu_erf_32x64x384_fwd",
        "op_silu_ours_32x64x384_fwd": "op_silu_32x64x384_fwd",
    }
    timed_rows = {r[0]: r for r in rows}
    rows += [(alias, *timed_rows[name][1:]) for alias, name in same.items()]

    print("| op | backend | median | runs | dense GFLOP/s |")
    print("|---|---|---|---|---|")
    for name, s, reps, f in rows:
        g = f"{f / s / 1e9:.1f}" if f > 0 else ""
        med = f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"
        print(f"| {name} | torch | {med} | {reps} | {g} |")
    if a.json:
        with open(a.json, "a") as out:
            for name, s, reps, f in rows:
                out.write(json.dumps({
                    "workload": name, "backend": "torch", "seconds": s, "reps": reps,
                    "images": 0, "flops": f, "peak_gflops": 0.0,
                    "torch_version": torch.__version__,
                    "threads": a.threads,
                }) + "\n")


if __name__ == "__main__":
    main()
