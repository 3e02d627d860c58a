#!/usr/bin/env bash
# Preference optimisation end to end on the shipped UNet: an AI-feedback dataset labelled by
# the gold verifier (`align pref-data`), then Diffusion-DPO, MaPO and KTO on it
# (`align pref-train`), two runs side by side. Prints each run's report line.
#
# Usage: scripts/pref-e2e.sh            (after `cargo build --release -p align-cli`)
#        PROMPTS=48 CANDIDATES=4 ITERATIONS=60 scripts/pref-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/align}
WORK=${WORK:-runs/pref-e2e}
PROMPTS=${PROMPTS:-48}
CANDIDATES=${CANDIDATES:-4}
ITERATIONS=${ITERATIONS:-60}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
mkdir -p "$WORK"
if [ ! -f "$WORK/data/pairs.jsonl" ]; then
  /usr/bin/time -v "$BIN" pref-data --model models/shapes-unet --out "$WORK/data" \
    --prompts "$PROMPTS" --candidates "$CANDIDATES" > "$WORK/data.log" 2>&1
fi
cat "$WORK/data.log" | grep -v "^\s" | head -3
run() {
  local name=$1
  sed -e "s#^data = .*#data = \"$WORK/data\"#" -e "s#^out = .*#out = \"$WORK/$name\"#" \
      -e "s#^iterations = .*#iterations = $ITERATIONS#" "configs/$name.toml" > "$WORK/$name.toml"
  rm -rf "$WORK/$name"
  /usr/bin/time -v "$BIN" pref-train --config "$WORK/$name.toml" > "$WORK/$name.log" 2>&1 || echo "$name failed"
  grep -v "^\s" "$WORK/$name.log" | tail -1
}
( run diffusion-dpo; run kto ) &
( run mapo ) &
wait
