#!/usr/bin/env python3
"""Checks the PyTorch port against outputs exported by the Rust models.

    python3 bench/reference/check_forward.py EXPORT_DIR [--tol 1e-4]

For each of ``EXPORT_DIR/unet`` and ``EXPORT_DIR/dit`` that exists: loads the model from that
directory (``model.json``, ``model.safetensors``, optional ``lora.json``) and the tensors of
``io.safetensors`` -- ``tokens`` (int64 ``[B, L]``), ``x`` (f32 ``[B, C, H, W]``), ``t`` (f32
``[B]``), ``out`` (f32, the Rust ``predict(x, t, encode(tokens))``) and, if present,
``context`` (f32 ``[B, L, D]``) / ``padding_mask`` (``[B, L]``, nonzero = padding) of the Rust
``encode`` -- recomputes ``out`` and prints the max abs error and the relative error
``||ours - ref|| / ||ref||``. Exits 1 if any relative error exceeds the tolerance.
"""

import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from align_ref import load_shapes_model  # noqa: E402


def errors(ours: torch.Tensor, ref: torch.Tensor):
    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        raise ValueError(f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    diff = ours - ref
    max_abs = diff.abs().max().item()
    denom = ref.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else diff.norm().item()
    return max_abs, rel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative error (default 1e-4)")
    args = ap.parse_args()

    torch.manual_seed(0)
    checked, failed = 0, False
    for name in ("unet", "dit"):
        d = os.path.join(args.export_dir, name)
        if not os.path.isdir(d):
            continue
        model = load_shapes_model(d, device="cpu")
        io = load_file(os.path.join(d, "io.safetensors"))
        tokens = io["tokens"].to(torch.int64)
        x, t, ref = io["x"].float(), io["t"].float(), io["out"].float()
        with torch.no_grad():
            cond = model.encode(tokens)
            out = model.predict(x, t, cond)
        lora = "" if model.lora is None else f" lora(rank={model.lora[0]}, alpha={model.lora[1]:g})"
        line = f"{name}{lora}: B={x.shape[0]} t={[round(v, 4) for v in t.tolist()]}"
        if "context" in io:
            _, rel_c = errors(cond.context, io["context"].float())
            line += f"  context rel {rel_c:.3e}"
        if "padding_mask" in io:
            mask_ok = torch.equal(cond.padding_mask, io["padding_mask"] != 0)
            line += f"  mask {'ok' if mask_ok else 'MISMATCH'}"
            failed |= not mask_ok
        max_abs, rel = errors(out, ref)
        ok = rel <= args.tol
        failed |= not ok
        print(f"{line}\n  out: max abs err {max_abs:.3e}  rel err {rel:.3e}  "
              f"{'ok' if ok else 'FAIL'} (tol {args.tol:g})")
        checked += 1
    if checked == 0:
        print(f"no unet/ or dit/ subdirectory in {args.export_dir}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
