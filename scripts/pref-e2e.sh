#!/usr/bin/env bash
# Preference optimisation end to end on the shipped UNet: an AI-feedback dataset labelled by
# the gold verifier (`align pref-data`), then Diffusion-DPO, KTO, MaPO and DSPO on it
# (`align pref-train`), two runs side by side. Prints each run's report line.
#
# Usage: scripts/pref-e2e.sh            (after `cargo build --release -p align-cli`)
#        PROMPTS=48 CANDIDATES=4 ITERATIONS=60 scripts/pref-e2e.sh
#        WORK=runs/pref-e3 PROMPTS=128 CANDIDATES=8 DATA_SEED=11 ITERATIONS=300 LR=3e-4 \
#          EVAL_SEEDS=4 scripts/pref-e2e.sh      (docs/results.md, second end-to-end run)
# LR and EVAL_SEEDS default to the configs' values.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/align}
WORK=${WORK:-runs/pref-e2e}
PROMPTS=${PROMPTS:-48}
CANDIDATES=${CANDIDATES:-4}
ITERATIONS=${ITERATIONS:-60}
DATA_SEED=${DATA_SEED:-1}
LR=${LR:-}
EVAL_SEEDS=${EVAL_SEEDS:-}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
mkdir -p "$WORK"
if [ ! -f "$WORK/data/pairs.jsonl" ]; then
  /usr/bin/time -v "$BIN" pref-data --model models/shapes-unet --out "$WORK/data" \
    --prompts "$PROMPTS" --candidates "$CANDIDATES" --seed "$DATA_SEED" > "$WORK/data.log" 2>&1
fi
cat "$WORK/data.log" | grep -v "^\s" | head -3
run() {
  local name=$1
  sed -e "s#^data = .*#data = \"$WORK/data\"#" -e "s#^out = .*#out = \"$WORK/$name\"#" \
      -e "s#^iterations = .*#iterations = $ITERATIONS#" \
      ${LR:+-e "s#^learning_rate = .*#learning_rate = $LR#"} \
      ${EVAL_SEEDS:+-e "s#^eval_seeds = .*#eval_seeds = $EVAL_SEEDS#"} \
      "configs/$name.toml" > "$WORK/$name.toml"
  rm -rf "$WORK/$name"
  /usr/bin/time -v "$BIN" pref-train --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 || echo "$name failed"
  grep -v "^\s" "$WORK/$name.log" | tail -1
}
( run diffusion-dpo; run kto ) &
( run mapo; run dspo ) &
wait
