#!/usr/bin/env python3
"""Builds `fixtures/sd-tiny-lora/`: a LoRA on the tiny SD 1.x UNet of `fixtures/sd-tiny/`, saved
in the two file formats that diffusers and PEFT write, with PyTorch reference outputs. Run by hand;
CI never runs it. Needs `fixtures/sd-tiny/` (scripts/make-real-model-fixtures.py).

    pip install torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 peft safetensors numpy
    python3 scripts/make-lora-fixtures.py

What it writes (all from fixed seeds; a second run reproduces every byte):

fixtures/sd-tiny-lora/
  diffusers/pytorch_lora_weights.safetensors
        what diffusers' SD LoRA training scripts write:
        StableDiffusionPipeline.save_lora_weights(dir,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
        keys `unet.<module>.lora.down.weight` [r, in] / `unet.<module>.lora.up.weight` [out, r];
        r and lora_alpha live in the safetensors header, `__metadata__["lora_adapter_metadata"]`
  peft/adapter_model.safetensors + adapter_config.json (PEFT's README.md model card is dropped)
        what `PeftModel.save_pretrained` writes: keys `base_model.model.<module>.lora_A.weight` /
        `lora_B.weight`; r, lora_alpha, target_modules in adapter_config.json
  reference.safetensors
        unet_lora.out     UNet output with the LoRA active, on the inputs unet.sample,
                          unet.timestep, unet.encoder_hidden_states of fixtures/sd-tiny/reference.safetensors
        unet_merged.out   the same after PEFT's merge_and_unload()
  reference.json          versions, r, alpha, targets, the LoRA's effect size, check results

LoRA: r = 4, lora_alpha = 8 (scale alpha / r = 2, so a reader that ignores alpha is caught) on
to_q, to_k, to_v, to_out.0 of every attn1 and attn2 (the usual SD LoRA targets); lora_A and
lora_B are both random (PEFT would start lora_B at zero) so the LoRA changes the output visibly.

Before writing, the script loads both files back the way users do (pipe.load_lora_weights into a
fresh pipeline read from fixtures/sd-tiny; PeftModel.from_pretrained on a fresh UNet) and checks
that they give the same output. It re-executes itself with PYTHONHASHSEED=0, because PEFT and
diffusers write `target_modules` from a Python set, whose order depends on the hash seed, and it
sorts the `__metadata__` map of diffusers' safetensors header, which safetensors writes in an
order that changes from run to run (the JSON and the tensors are otherwise untouched).
"""

import json
import os
import shutil
import sys
import tempfile

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before the import: quiet about torchvision

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusers
import peft
import transformers
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
SD = os.path.join(FIXTURES, "sd-tiny")
OUT = os.path.join(FIXTURES, "sd-tiny-lora")

RANK = 4
ALPHA = 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
SEED = 40
STD_A = 0.1
STD_B = 0.1
TOL = 1e-6

torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)  # one thread: the same sums in the same order on every run


def lora_config():
    return LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0)


def load_unet():
    return UNet2DConditionModel.from_pretrained(os.path.join(SD, "unet")).eval()


def load_pipe():
    pipe = StableDiffusionPipeline.from_pretrained(SD, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs():
    ref = load_file(os.path.join(SD, "reference.safetensors"))
    return ref["unet.sample"], ref["unet.timestep"], ref["unet.encoder_hidden_states"], ref["unet.out"]


def unet_out(unet):
    sample, timestep, context, _ = inputs()
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=context).sample


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check(label, value, tol):
    ok = value <= tol
    print(f"  {label:<58} {value:.3e}  {'ok' if ok else 'FAIL (> %.0e)' % tol}")
    if not ok:
        sys.exit(f"check failed: {label}")


def lora_targets(model):
    """Names of the modules that carry a LoRA (without PEFT's base_model.model. prefix)."""
    from peft.tuners.lora import LoraLayer

    return sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer))


def sort_safetensors_metadata(path):
    """safetensors writes its `__metadata__` map in hash order, which changes from run to run
    once the map has two entries (diffusers' file has `format` and `lora_adapter_metadata`).
    Rewrite the header with that map sorted: same JSON, same length, the tensor bytes untouched."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + n].decode("utf-8")
    header = json.loads(raw)

    def dump(h):
        return json.dumps(h, separators=(",", ":"), ensure_ascii=False)

    if dump(header) != raw.rstrip(" "):
        sys.exit(f"{path}: cannot reproduce the safetensors header byte for byte; not rewriting it")
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = dump(header)
    new = new + " " * (n - len(new.encode("utf-8")))
    assert len(new.encode("utf-8")) == n
    with open(path, "wb") as f:
        f.write(data[:8] + new.encode("utf-8") + data[8 + n :])


def build(tmp):
    base = load_unet()
    _, _, _, ref_out = inputs()
    base_out = unet_out(base)
    check("base UNet vs fixtures/sd-tiny reference unet.out", rel(base_out, ref_out), 1e-5)

    # The training scripts' way: diffusers' PeftAdapterMixin.add_adapter on the UNet itself.
    unet = load_unet()
    unet.add_adapter(lora_config())
    targets = lora_targets(unet)
    bad = [t for t in targets if not (".attn1." in t or ".attn2." in t)]
    if bad:
        sys.exit(f"LoRA landed outside attn1/attn2: {bad}")
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_A." in name:
                p.copy_(STD_A * torch.randn(p.shape, generator=g))
            elif ".lora_B." in name:
                p.copy_(STD_B * torch.randn(p.shape, generator=g))
    lora_out = unet_out(unet)
    effect = rel(lora_out, base_out)
    print(f"  LoRA effect: max|lora - base| / max|base| = {effect:.4f}")
    if effect < 0.03:
        sys.exit("the LoRA changes the output by less than 3 %; raise STD_A / STD_B")

    # 1. diffusers' file, as the SD LoRA training scripts save it, plus the adapter metadata.
    ddir = os.path.join(tmp, "diffusers")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    metadata = unet.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        ddir, unet_lora_layers=layers, safe_serialization=True, unet_lora_adapter_metadata=metadata
    )
    sort_safetensors_metadata(os.path.join(ddir, "pytorch_lora_weights.safetensors"))

    # 2. PEFT's directory: the same weights in a PeftModel around a fresh UNet.
    pm = get_peft_model(load_unet(), lora_config())
    src = dict(unet.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_" in name:
                p.copy_(src[name.removeprefix("base_model.model.")])
                copied += 1
    if copied != sum(".lora_" in n for n in src):
        sys.exit("PEFT model and diffusers adapter differ in their LoRA parameters")
    pm.eval()
    check("PeftModel vs add_adapter UNet", rel(unet_out(pm.base_model.model), lora_out), TOL)
    pdir = os.path.join(tmp, "peft")
    pm.save_pretrained(pdir)

    merged = pm.merge_and_unload()
    merged_out = unet_out(merged)
    check("merge_and_unload vs LoRA output", rel(merged_out, lora_out), 1e-5)

    # Load both back the way a user would.
    print("loading the files back:")
    pipe = load_pipe()
    pipe.load_lora_weights(ddir)
    check("pipe.load_lora_weights(diffusers/) vs LoRA output", rel(unet_out(pipe.unet), lora_out), TOL)
    loaded = PeftModel.from_pretrained(load_unet(), pdir).eval()
    check("PeftModel.from_pretrained(peft/) vs LoRA output", rel(unet_out(loaded.base_model.model), lora_out), TOL)

    # For the notes: what diffusers does with the same tensors in other spellings.
    print("other spellings, for the notes (not fixtures):")
    tensors = load_file(os.path.join(ddir, "pytorch_lora_weights.safetensors"))
    with safe_open(os.path.join(ddir, "pytorch_lora_weights.safetensors"), "pt") as f:
        header = f.metadata()
    no_meta = os.path.join(tmp, "no-metadata")
    os.makedirs(no_meta)
    save_file(tensors, os.path.join(no_meta, "pytorch_lora_weights.safetensors"), metadata={"format": "pt"})
    pipe = load_pipe()
    pipe.load_lora_weights(no_meta)
    no_meta_err = rel(unet_out(pipe.unet), lora_out)
    cfg = next(iter(pipe.unet.peft_config.values()))
    no_meta_cfg = {"r": cfg.r, "lora_alpha": cfg.lora_alpha}
    print(f"  diffusers file without metadata: loaded as {no_meta_cfg}, error {no_meta_err:.3e}")
    peft_keys = {
        k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in tensors.items()
    }
    variants = {"peft-keys": peft_keys}
    variants["peft-keys-no-prefix"] = {k.removeprefix("unet."): v for k, v in peft_keys.items()}
    variants["adapter_model"] = load_file(os.path.join(pdir, "adapter_model.safetensors"))
    other = {}
    for label, sd in variants.items():
        d = os.path.join(tmp, label)
        os.makedirs(d)
        save_file(sd, os.path.join(d, "pytorch_lora_weights.safetensors"), metadata=header)
        pipe = load_pipe()
        try:
            pipe.load_lora_weights(d)
            other[label] = rel(unet_out(pipe.unet), lora_out)
            print(f"  {label} (with the same metadata): error {other[label]:.3e}")
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            other[label] = f"{type(e).__name__}: {e}"[:200]
            print(f"  {label}: refused: {other[label]}")
    return {
        "targets": targets,
        "effect": effect,
        "lora_out": lora_out,
        "merged_out": merged_out,
        "merged_vs_lora": rel(merged_out, lora_out),
        "no_metadata_error": no_meta_err,
        "no_metadata_config": no_meta_cfg,
        "other_spellings": other,
    }


def main():
    with tempfile.TemporaryDirectory() as tmp:
        print("building the LoRA:")
        res = build(tmp)
        if os.path.exists(OUT):
            shutil.rmtree(OUT)
        os.makedirs(OUT)
        shutil.copytree(os.path.join(tmp, "diffusers"), os.path.join(OUT, "diffusers"))
        # PEFT's save_pretrained also writes a README.md model card naming the base model by its
        # absolute path; loaders never read it, so it stays out of the fixture.
        shutil.copytree(os.path.join(tmp, "peft"), os.path.join(OUT, "peft"), ignore=shutil.ignore_patterns("README.md"))
    save_file(
        {"unet_lora.out": res["lora_out"].contiguous(), "unet_merged.out": res["merged_out"].contiguous()},
        os.path.join(OUT, "reference.safetensors"),
    )
    with open(os.path.join(OUT, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "base": "fixtures/sd-tiny (UNet inputs: unet.sample, unet.timestep, unet.encoder_hidden_states)",
                "r": RANK,
                "lora_alpha": ALPHA,
                "scale": ALPHA / RANK,
                "target_modules": TARGETS,
                "lora_modules": len(res["targets"]),
                "init": {"seed": SEED, "std_lora_A": STD_A, "std_lora_B": STD_B},
                "effect_rel": round(res["effect"], 6),
                "merged_vs_lora_rel": float("%.3e" % res["merged_vs_lora"]),
                "diffusers_without_metadata": {
                    "loaded_as": res["no_metadata_config"],
                    "rel_error": round(res["no_metadata_error"], 6),
                },
                "load_lora_weights_other_spellings_rel_error": {
                    k: (round(v, 6) if isinstance(v, float) else v) for k, v in res["other_spellings"].items()
                },
                "versions": {
                    "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__,
                    "peft": peft.__version__,
                },
            },
            f,
            indent=1,
        )
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {os.path.relpath(OUT)} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
