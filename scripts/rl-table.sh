#!/usr/bin/env bash
# The online-RL results table of docs/results.md: every algorithm's shipped config, each in its
# own run directory under $WORK, with wall time and peak memory (GNU time).
#
# Usage: scripts/rl-table.sh                 (after `cargo build --release -p align-cli`)
#        QUEUES=2 scripts/rl-table.sh        two queues side by side, one thread each
#        CONFIGS="dense-grpo sdpo" scripts/rl-table.sh
# Prints one Markdown row per run (base → final ShapeEval train / held-out, diversity ratio,
# KL, wall time) from each run's report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/align}
WORK=${WORK:-runs/table}
QUEUES=${QUEUES:-1}
CONFIGS=${CONFIGS:-"flow-grpo dense-grpo sdpo ddpo-sf ddpo-is dpok"}
mkdir -p "$WORK"
run_one() {
  local name=$1
  if [ -f "$WORK/$name/report.json" ]; then return; fi
  rm -rf "$WORK/$name"
  /usr/bin/time -v "$BIN" train --config "configs/$name.toml" --out "$WORK/$name" \
    > "$WORK/$name.log" 2>&1 || { echo "$name failed: see $WORK/$name.log" >&2; return 1; }
}
if [ "$QUEUES" -gt 1 ]; then
  export RAYON_NUM_THREADS=1
  read -r -a all <<< "$CONFIGS"
  for q in $(seq 0 $((QUEUES - 1))); do
    (
      for i in "${!all[@]}"; do
        if [ $((i % QUEUES)) -eq "$q" ]; then run_one "${all[$i]}"; fi
      done
    ) &
  done
  wait
else
  for name in $CONFIGS; do run_one "$name"; done
fi
echo "| algorithm | model | train base → final | held-out base → final | diversity ratio | KL | wall |"
echo "|---|---|---|---|---|---|---|"
for name in $CONFIGS; do
  r="$WORK/$name/report.json"
  [ -f "$r" ] || { echo "| $name | (no report) |||||| "; continue; }
  python3 - "$r" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b, f = r["base"], r["final"]
pct = lambda x: f"{100 * x:.1f} %"
model = r["model"].rstrip("/").split("/")[-1]
print(f"| {sys.argv[2]} | {model} | {pct(b['train_accuracy'])} → {pct(f['train_accuracy'])} "
      f"| {pct(b['heldout_accuracy'])} → {pct(f['heldout_accuracy'])} | {f['diversity_ratio']:.2f} "
      f"| {f['kl']:.1e} | {r['wall_seconds']:.0f} s |")
PY
done
