#!/usr/bin/env python3
"""Summarise the per-image verdicts that `align eval --details FILE` writes.

    python3 scripts/verdicts-summary.py FILE [FILE ...]

For each file: pass rate and first-failure counts per part (train / held-out), the pass
rate of one-group and two-group scenes in each part, and the
held-out part split into prompts that name a held-out (colour, shape) pair (red triangle,
green square, blue circle; never seen in pretraining) and prompts that only combine two
training pairs in a held-out way. For the held-out pairs it also counts which shape the
model drew in that colour instead (prompts where no other group has that colour).
"""
import collections
import json
import sys

HELDOUT_PAIRS = {("red", "triangle"), ("green", "square"), ("blue", "circle")}


def summarise(path):
    rows = [json.loads(line) for line in open(path)]
    print(f"== {path}: {len(rows)} images")
    for part in ("train", "heldout"):
        sub = [r for r in rows if r["part"] == part]
        if not sub:
            continue
        passed = sum(r["pass"] for r in sub)
        fails = collections.Counter(r["failure"] for r in sub)
        print(f"{part}: {passed}/{len(sub)} pass ({100 * passed / len(sub):.1f} %); "
              + ", ".join(f"{k} {v}" for k, v in sorted(fails.items())))
        for n in (1, 2):
            scenes = [r for r in sub if len(r["groups"]) == n]
            if scenes:
                ok = sum(r["pass"] for r in scenes)
                print(f"  {n}-group scenes: {ok}/{len(scenes)} pass "
                      f"({100 * ok / len(scenes):.1f} %)")
    held = [r for r in rows if r["part"] == "heldout"]
    novel = [r for r in held
             if any((g["colour"], g["shape"]) in HELDOUT_PAIRS for g in r["groups"])]
    combos = [r for r in held if r not in novel]
    for name, sub in (("held-out pair named", novel), ("held-out combination only", combos)):
        if sub:
            passed = sum(r["pass"] for r in sub)
            print(f"  {name}: {passed}/{len(sub)} pass ({100 * passed / len(sub):.1f} %)")
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


for p in sys.argv[1:]:
    summarise(p)
