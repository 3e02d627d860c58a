#!/usr/bin/env python3
"""Summarise the per-image verdicts that `align eval --details FILE` writes.

    python3 scripts/verdicts-summary.py [--split combinations|unseen-pairs] FILE [FILE ...]

For each file: pass rate (with a 95 % bootstrap interval over images) and first-failure
counts per part (train / held-out), the mean partial credit, the pass
rate of one-group and two-group scenes and by number of objects in each part, and the
held-out part split by why a prompt is held out:

- `combinations` (the standard split, the default): prompts with a held-out
  (count, colour, shape) group (three objects of a pair whose colour and shape indices have
  an odd sum) and prompts whose two groups form a held-out combination;
- `unseen-pairs` (the stress test): prompts naming a held-out (colour, shape) pair (red
  triangle, green square, blue circle; never seen in pretraining) and prompts that only
  combine two training pairs in a held-out way. For the held-out pairs it also counts which
  shape the model drew in that colour instead (prompts where no other group has that colour).
"""
import collections
import json
import random
import sys

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
HELDOUT_PAIRS = {("red", "triangle"), ("green", "square"), ("blue", "circle")}


def heldout_group(g):
    """A held-out triple of the standard split: three of a pair with an odd index sum."""
    odd = (COLOURS.index(g["colour"]) + SHAPES.index(g["shape"])) % 2 == 1
    return g["expected"] == 3 and odd


def interval(passes, draws=2000, seed=0):
    """95 % bootstrap interval (percentile) of the pass rate, resampling images."""
    rng = random.Random(seed)
    n = len(passes)
    means = sorted(sum(rng.choice(passes) for _ in range(n)) / n for _ in range(draws))
    return 100 * means[int(0.025 * draws)], 100 * means[int(0.975 * draws) - 1]


def rate(sub):
    ok = sum(r["pass"] for r in sub)
    lo, hi = interval([int(r["pass"]) for r in sub])
    return f"{ok}/{len(sub)} pass ({100 * ok / len(sub):.1f} %, 95 % CI {lo:.1f}–{hi:.1f} %)"


def summarise(path, split):
    rows = [json.loads(line) for line in open(path)]
    print(f"== {path}: {len(rows)} images")
    for part in ("train", "heldout"):
        sub = [r for r in rows if r["part"] == part]
        if not sub:
            continue
        fails = collections.Counter(r["failure"] for r in sub)
        credit = sum(r["partial_credit"] for r in sub) / len(sub)
        print(f"{part}: {rate(sub)}; mean partial credit {credit:.3f}; verdicts (first failure): "
              + ", ".join(f"{k} {v}" for k, v in sorted(fails.items())))
        for n in (1, 2):
            scenes = [r for r in sub if len(r["groups"]) == n]
            if scenes:
                print(f"  {n}-group scenes: {rate(scenes)}")
        for n in (1, 2, 3, 4, 5, 6, 7, 8):
            scenes = [r for r in sub if sum(g["expected"] for g in r["groups"]) == n]
            if scenes:
                print(f"  {n} object(s): {rate(scenes)}")
    held = [r for r in rows if r["part"] == "heldout"]
    if split == "unseen-pairs":
        novel = [r for r in held
                 if any((g["colour"], g["shape"]) in HELDOUT_PAIRS for g in r["groups"])]
        kinds = (("held-out pair named", novel),
                 ("held-out combination only", [r for r in held if r not in novel]))
    else:
        novel = [r for r in held if any(heldout_group(g) for g in r["groups"])]
        kinds = (("held-out (count, colour, shape) group", novel),
                 ("held-out combination of two pairs", [r for r in held if r not in novel]))
    for name, sub in kinds:
        if sub:
            print(f"  {name}: {rate(sub)}")
    if split != "unseen-pairs":
        return
    drawn = collections.Counter()
    for r in novel:
        for g in r["groups"]:
            alone = sum(h["colour"] == g["colour"] for h in r["groups"]) == 1
            if (g["colour"], g["shape"]) in HELDOUT_PAIRS and alone:
                for o in r["objects"]:
                    if o["colour"] == g["colour"]:
                        drawn[(g["colour"] + " " + g["shape"], o["shape"] or "no shape")] += 1
    if drawn:
        print("  objects drawn in a held-out pair's colour: "
              + ", ".join(f"{a} -> {b}: {n}" for (a, b), n in sorted(drawn.items())))


args = sys.argv[1:]
split = "combinations"
if args[:1] == ["--split"]:
    split, args = args[1], args[2:]
    if split not in ("combinations", "unseen-pairs"):
        sys.exit(f"verdicts-summary: unknown split {split!r}")
for p in args:
    summarise(p, split)
