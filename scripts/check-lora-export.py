#!/usr/bin/env python3
"""Checks LoRA files exported by our Rust code against diffusers and PEFT themselves. Run by hand;
CI never runs it.

    pip install torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 peft safetensors numpy
    python3 scripts/check-lora-export.py --export DIR     # check an export
    python3 scripts/check-lora-export.py --self-test      # check this script on fixtures/sd-tiny-lora
    python3 scripts/check-lora-export.py --sd3 --export DIR   # an SD3 run's export (below)

DIR holds what our code wrote for a LoRA on the UNet of fixtures/sd-tiny:

  DIR/peft/adapter_model.safetensors + adapter_config.json        PEFT's layout
  DIR/diffusers/pytorch_lora_weights.safetensors                   diffusers' layout
  DIR/merged/unet/config.json + diffusion_pytorch_model.safetensors
                                                                   full UNet, LoRA merged in
  DIR/ours.safetensors   `unet.out`: our UNet output (LoRA active) on the inputs unet.sample,
                         unet.timestep, unet.encoder_hidden_states of fixtures/sd-tiny/reference.safetensors

For each of (a) StableDiffusionPipeline.load_lora_weights(DIR/diffusers) on the fixture
pipeline, (b) PeftModel.from_pretrained(fixture UNet, DIR/peft), (c)
UNet2DConditionModel.from_pretrained(DIR/merged/unet) it runs the UNet on those inputs and prints
max|theirs - ours| / max|ours|; it also prints the LoRA's own effect, max|ours - base| / max|base|.
Exit status 1 when any error exceeds --tol (1e-5) or a part does not load.

diffusers reads `unet.<module>.lora.down/up.weight` and `unet.<module>.lora_A/lora_B.weight`
alike, without hints; it takes r and lora_alpha only from the safetensors header entry
`__metadata__["lora_adapter_metadata"]` (JSON: {"unet.r": .., "unet.lora_alpha": ..,
"unet.target_modules": [..], ...}); without it, it loads alpha = r (scale 1). The script prints
which spelling and metadata it found so a failure points at the cause.

With --sd3, DIR holds the export of a LoRA on the transformer of fixtures/sd3-tiny-pipeline
(`ALIGN_LORA_EXPORT_DIR=DIR cargo test -p align-train a_trained_sd3_run_exports`): peft/,
diffusers/ (`transformer.` names and metadata keys), merged/ (a whole pipeline directory) and
ours.safetensors with our transformer output `transformer.out` and its inputs; the parts are
loaded with StableDiffusion3Pipeline.load_lora_weights, PeftModel.from_pretrained on the
fixture's SD3Transformer2DModel, and SD3Transformer2DModel.from_pretrained(merged/transformer).

--self-test builds such a DIR from fixtures/sd-tiny-lora (the files diffusers and PEFT wrote, a
merged UNet saved by diffusers, PyTorch's output as ours.safetensors), expects it to pass, then
expects three broken copies to fail: metadata dropped, ours.safetensors = base output, PEFT
lora_B halved.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before the import: quiet about torchvision

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel
from peft import PeftModel

diffusers.utils.logging.disable_progress_bar()
diffusers.utils.logging.set_verbosity_error()  # problems are reported by the checks themselves
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*torchvision.*")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
torch.set_num_threads(1)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


class Checker:
    """The SD 1.x UNet of fixtures/sd-tiny on the fixture's reference inputs."""

    component, out_key, denoiser_class = "unet", "unet.out", UNet2DConditionModel

    def __init__(self, fixture):
        self.fixture = fixture
        ref = load_file(os.path.join(fixture, "reference.safetensors"))
        self.inputs = (ref["unet.sample"], ref["unet.timestep"], ref["unet.encoder_hidden_states"])
        self.base_out = self.run(self.fresh_unet())
        err = rel(self.base_out, ref["unet.out"])
        if err > 1e-5:
            sys.exit(f"the fixture UNet does not reproduce its own reference output (rel err {err:.2e})")

    def fresh_denoiser(self):
        return UNet2DConditionModel.from_pretrained(os.path.join(self.fixture, "unet")).eval()

    fresh_unet = fresh_denoiser

    def fresh_pipe(self):
        return StableDiffusionPipeline.from_pretrained(self.fixture, safety_checker=None, requires_safety_checker=False)

    def run(self, unet):
        sample, timestep, context = self.inputs
        with torch.no_grad():
            return unet(sample, timestep, encoder_hidden_states=context).sample


class Sd3Checker:
    """The SD3 transformer of fixtures/sd3-tiny-pipeline on the inputs our test stored beside its
    output in ours.safetensors (transformer.hidden_states, .timestep, .encoder_hidden_states,
    .pooled_projections)."""

    component, out_key, denoiser_class = "transformer", "transformer.out", SD3Transformer2DModel

    def __init__(self, fixture, export):
        self.fixture = fixture
        ours = load_file(os.path.join(export, "ours.safetensors"))
        self.inputs = tuple(
            ours[f"transformer.{k}"] for k in ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections")
        )
        self.base_out = self.run(self.fresh_denoiser())

    def fresh_denoiser(self):
        return SD3Transformer2DModel.from_pretrained(os.path.join(self.fixture, "transformer")).eval()

    def fresh_pipe(self):
        return StableDiffusion3Pipeline.from_pretrained(self.fixture)

    def run(self, model):
        x, t, context, pooled = self.inputs
        with torch.no_grad():
            return model(
                hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=pooled
            ).sample


def describe_diffusers(path, component="unet"):
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        header = f.metadata() or {}
    spelling = sorted(
        {
            "lora.down/lora.up" if (".lora.down." in k or ".lora.up." in k)
            else "lora_A/lora_B" if (".lora_A." in k or ".lora_B." in k)
            else "other"
            for k in keys
        }
    )
    prefixes = sorted({k.split(".", 1)[0] for k in keys})
    meta = json.loads(header["lora_adapter_metadata"]) if "lora_adapter_metadata" in header else None
    info = f"{len(keys)} tensors, spelling {spelling}, key prefixes {prefixes}"
    if meta is None:
        info += "; no lora_adapter_metadata in the header (diffusers will use alpha = r)"
    else:
        info += "; metadata r={} lora_alpha={} target_modules={}".format(
            meta.get(f"{component}.r"), meta.get(f"{component}.lora_alpha"), meta.get(f"{component}.target_modules")
        )
    problems = []
    if prefixes != [component]:
        problems.append(f"keys must all start with `{component}.`: load_lora_weights ignores others")
    if "other" in spelling:
        problems.append("some keys are neither lora.down/lora.up nor lora_A/lora_B")
    if meta is not None and not all(f"{component}.{k}" in meta for k in ("r", "lora_alpha", "target_modules")):
        problems.append(
            f"metadata needs {component}.r, {component}.lora_alpha and {component}.target_modules (LoraConfig(**metadata))"
        )
    return info, problems


def check(export, fixture, tol, checker=None):
    """Returns True when every part matches ours.safetensors within tol."""
    c = checker or Checker(fixture)
    ours_path = os.path.join(export, "ours.safetensors")
    ours = load_file(ours_path)[c.out_key]
    if ours.shape != c.base_out.shape:
        print(f"FAIL ours.safetensors {c.out_key} has shape {list(ours.shape)}, expected {list(c.base_out.shape)}")
        return False
    effect = rel(ours, c.base_out)
    print(f"LoRA effect (ours vs base {c.component})   {effect:.4e}")
    if effect < 1e-3:
        print("  WARNING: the LoRA barely changes the output, so the comparisons below prove little")
    ok = True

    def report(label, fn):
        nonlocal ok
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out, note = fn()
            err = rel(out, ours)
        except Exception as e:  # noqa: BLE001 - any failure to load is a failed check
            print(f"FAIL {label:<36} {type(e).__name__}: {str(e)[:300]}")
            ok = False
            return
        passed = err <= tol
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'} {label:<36} {err:.3e}{'' if passed else f'  (> {tol:g})'}  {note}")
        for w in caught:
            if "torchvision" not in str(w.message):
                print(f"     warning: {str(w.message)[:300]}")

    # (a) diffusers
    dfile = os.path.join(export, "diffusers", "pytorch_lora_weights.safetensors")

    def via_diffusers():
        info, problems = describe_diffusers(dfile, c.component)
        print(f"     diffusers file: {info}")
        for p in problems:
            print(f"     problem: {p}")
        pipe = c.fresh_pipe()
        pipe.load_lora_weights(os.path.dirname(dfile), weight_name=os.path.basename(dfile))
        denoiser = getattr(pipe, c.component)
        cfgs = getattr(denoiser, "peft_config", None)
        if not cfgs:
            raise RuntimeError(f"load_lora_weights put no LoRA into the {c.component} (see the problems above)")
        cfg = next(iter(cfgs.values()))
        return c.run(denoiser), f"(loaded r={cfg.r} lora_alpha={cfg.lora_alpha})"

    report("(a) pipe.load_lora_weights(diffusers/)", via_diffusers)

    # (b) PEFT
    pdir = os.path.join(export, "peft")

    def via_peft():
        with open(os.path.join(pdir, "adapter_config.json")) as f:
            cfg = json.load(f)
        with safe_open(os.path.join(pdir, "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
        prefixed = sum(k.startswith("base_model.model.") for k in keys)
        print(
            f"     peft: {len(keys)} tensors ({prefixed} with base_model.model.), config peft_type={cfg.get('peft_type')} "
            f"r={cfg.get('r')} lora_alpha={cfg.get('lora_alpha')} target_modules={cfg.get('target_modules')}"
            f" use_rslora={cfg.get('use_rslora', False)}"
        )
        model = PeftModel.from_pretrained(c.fresh_denoiser(), pdir).eval()
        lc = model.peft_config["default"]
        return c.run(model.base_model.model), f"(loaded r={lc.r} lora_alpha={lc.lora_alpha})"

    report("(b) PeftModel.from_pretrained(peft/)", via_peft)

    # (c) merged denoiser
    mdir = os.path.join(export, "merged", c.component)

    def via_merged():
        unet = c.denoiser_class.from_pretrained(mdir).eval()
        base_cfg = c.fresh_denoiser().config
        skip = {"_name_or_path", "_diffusers_version", "_class_name", "_use_default_values"}
        differ = sorted(k for k in set(base_cfg) | set(unet.config) if k not in skip and base_cfg.get(k) != unet.config.get(k))
        return c.run(unet), (f"(config differs from the fixture in {differ})" if differ else "")

    report(f"(c) {c.denoiser_class.__name__}(merged/{c.component})", via_merged)
    print("PASS" if ok else "FAIL")
    return ok


def self_test(fixture, tol):
    lora = os.path.join(FIXTURES, "sd-tiny-lora")
    c = Checker(fixture)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good")
        os.makedirs(good)
        shutil.copytree(os.path.join(lora, "diffusers"), os.path.join(good, "diffusers"))
        shutil.copytree(os.path.join(lora, "peft"), os.path.join(good, "peft"))
        merged = PeftModel.from_pretrained(c.fresh_unet(), os.path.join(lora, "peft")).merge_and_unload()
        merged.save_pretrained(os.path.join(good, "merged", "unet"), safe_serialization=True)
        lora_out = load_file(os.path.join(lora, "reference.safetensors"))["unet_lora.out"]
        save_file({"unet.out": lora_out}, os.path.join(good, "ours.safetensors"))
        print("== fixture export (should pass)")
        results.append(("fixture export passes", check(good, fixture, tol, c) is True))

        bad = os.path.join(tmp, "no-metadata")
        shutil.copytree(good, bad)
        f = os.path.join(bad, "diffusers", "pytorch_lora_weights.safetensors")
        save_file(load_file(f), f, metadata={"format": "pt"})
        print("== diffusers file without lora_adapter_metadata (should fail in (a))")
        results.append(("metadata dropped fails", check(bad, fixture, tol, c) is False))

        bad = os.path.join(tmp, "base-output")
        shutil.copytree(good, bad)
        save_file({"unet.out": c.base_out}, os.path.join(bad, "ours.safetensors"))
        print("== ours.safetensors = base UNet output (should fail everywhere)")
        results.append(("base output fails", check(bad, fixture, tol, c) is False))

        bad = os.path.join(tmp, "peft-halved")
        shutil.copytree(good, bad)
        f = os.path.join(bad, "peft", "adapter_model.safetensors")
        sd = load_file(f)
        save_file({k: v * 0.5 if ".lora_B." in k else v for k, v in sd.items()}, f, metadata={"format": "pt"})
        print("== PEFT lora_B halved (should fail in (b))")
        results.append(("halved PEFT fails", check(bad, fixture, tol, c) is False))
    print("== self-test")
    for label, passed in results:
        print(f"{'ok  ' if passed else 'FAIL'} {label}")
    return all(p for _, p in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", help="directory with peft/, diffusers/, merged/unet/, ours.safetensors")
    ap.add_argument("--fixture", help="the base directory (fixtures/sd-tiny, with --sd3 fixtures/sd3-tiny-pipeline)")
    ap.add_argument("--sd3", action="store_true", help="an SD3 run's export (transformer LoRA)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--self-test", action="store_true", help="check this script on fixtures/sd-tiny-lora")
    args = ap.parse_args()
    fixture = args.fixture or os.path.join(FIXTURES, "sd3-tiny-pipeline" if args.sd3 else "sd-tiny")
    if args.sd3:
        if not args.export:
            ap.error("--sd3 needs --export DIR")
        sys.exit(0 if check(args.export, fixture, args.tol, Sd3Checker(fixture, args.export)) else 1)
    args.fixture = fixture
    if args.self_test:
        sys.exit(0 if self_test(args.fixture, args.tol) else 1)
    if not args.export:
        ap.error("--export DIR or --self-test")
    sys.exit(0 if check(args.export, args.fixture, args.tol) else 1)


if __name__ == "__main__":
    main()
