#!/usr/bin/env bash
# Crash-safety check of the training runner on real runs: online RL (Flow-GRPO on the shipped
# flow model), reward backprop (DRaFT-1 on the shipped UNet with the proxy reward model),
# preference training (Diffusion-DPO on the shipped UNet) or pretraining (a DiT).
#
# 1. Runs the reference, uninterrupted: for KIND=rl, `align train` with the quickstart's
#    algorithm and hyper-parameters (a smaller batch and fewer iterations, so the check takes
#    minutes); for KIND=pref, `align pref-train` on a small AI-feedback dataset (`align
#    pref-data`, made once); for KIND=pretrain, `align pretrain` of a small DiT.
# 2. Runs the same config again, killing it with SIGKILL KILLS times and resuming it
#    (`--resume`) after each kill, until it finishes. Each resumed start is let run 0, 1 or 2
#    iterations (drawn from SEED) and killed at a uniform moment within the next iteration's
#    time, so the kills land in start-up, rollouts, updates, evaluations and checkpoint writes
#    all along the run.
# 3. Compares the final checkpoints (model, optimizer state, job state) and metrics.jsonl
#    byte for byte. Exit status 0 = identical.
#
# Usage: scripts/kill-resume.sh            (after `cargo build --release -p align-cli`)
#        KILLS=5 ITERATIONS=6 SEED=1 scripts/kill-resume.sh
#        QUICKSTART=1 ITERATIONS=3 scripts/kill-resume.sh   # `align quickstart` itself (default
#                                             config, full evaluations; kills anywhere in the run)
#        KIND=pref scripts/kill-resume.sh       KIND=pretrain ITERATIONS=12 scripts/kill-resume.sh
#        KIND=backprop KILLS=20 scripts/kill-resume.sh
#        KIND=pretrain EVAL_EVERY=30 ...   (pretraining evaluates every 6 steps unless told)
# The last line is a summary (kind, iterations, kills, starts, lock take-overs, verdict) for
# docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-flow-grpo.sh
BIN=${BIN:-target/release/align}
KILLS=${KILLS:-5}
ITERATIONS=${ITERATIONS:-10}
SEED=${SEED:-$RANDOM}
KIND=${KIND:-rl}
WORK=${WORK:-runs/kill-resume-$KIND}
rm -rf "$WORK"
mkdir -p "$WORK"
if [ "$KIND" = pref ]; then
  echo "preference data (8 prompts x 2 candidates)"
  "$BIN" pref-data --model models/shapes-unet --out "$WORK/data" --prompts 8 --candidates 2 --steps 10 > "$WORK/data.log" 2>&1
  for run in reference killed; do
    cat > "$WORK/$run.toml" <<TOML
algorithm = "diffusion-dpo"
model = "models/shapes-unet"
data = "$WORK/data"
out = "$WORK/$run"
batch_size = 4
eval_seeds = 1
eval_steps = 4
dpo_beta = 5000.0
[runner]
iterations = $ITERATIONS
learning_rate = 1e-4
checkpoint_every = 1
TOML
  done
fi
if [ "$KIND" = backprop ]; then
  cat > "$WORK/config.toml" <<TOML
# configs/draft-k.toml (DRaFT-1, proxy reward) with a smaller batch and fast evaluations.
algorithm = "draft"
model = "models/shapes-unet"
reward = "proxy"
reward_model = "models/proxy-rm"
prompts_per_iteration = 2
group_size = 2
train_steps = 10
noise_level = 0.0
guidance = 3.0
eval_steps = 4
[backprop]
truncation = { last_k = 1 }
[lora]
rank = 8
alpha = 8.0
[runner]
iterations = $ITERATIONS
learning_rate = 3e-4
TOML
else
  small_flow_grpo "$ITERATIONS" "" "[flow_grpo]
minibatches = 2" > "$WORK/config.toml"
fi
QUICKSTART=${QUICKSTART:-0}
command_for() {
  if [ "$KIND" = pref ]; then
    echo pref-train --config "$WORK/$(basename "$1").toml"
  elif [ "$KIND" = pretrain ]; then
    echo pretrain --model dit --steps "$ITERATIONS" --batch 16 --eval-every "${EVAL_EVERY:-6}" --checkpoint-every 1 --seed 3 --out "$1"
  elif [ "$QUICKSTART" = 1 ]; then
    echo quickstart --iterations "$ITERATIONS" --out "$1"
  else
    echo train --config "$WORK/config.toml" --out "$1"
  fi
}
echo "$KIND reference run ($ITERATIONS iterations$( [ "$QUICKSTART" = 1 ] && echo ', align quickstart'))"
t0=$(date +%s)
# shellcheck disable=SC2046
"$BIN" $(command_for "$WORK/reference") > "$WORK/reference.log" 2>&1
t1=$(date +%s)
span=$(( t1 - t0 ))
echo "  $span s"
RANDOM=$SEED
# Iterations the killed run has written to metrics.jsonl.
written() { if [ -f "$WORK/killed/metrics.jsonl" ]; then wc -l < "$WORK/killed/metrics.jsonl"; else echo 0; fi; }
# Time of one iteration, tenths of a second.
tau_tenths=$(( span * 10 / ITERATIONS ))
kills=0
attempt=0
while true; do
  # shellcheck disable=SC2207
  args=($(command_for "$WORK/killed"))
  # Resume once anything of a checkpoint exists (a kill can land between a checkpoint's
  # rename and the LATEST that publishes it).
  if [ -f "$WORK/killed/LATEST" ] || compgen -G "$WORK/killed/checkpoint-*" > /dev/null; then
    args+=(--resume)
  fi
  "$BIN" "${args[@]}" >> "$WORK/killed.log" 2>&1 &
  pid=$!
  attempt=$(( attempt + 1 ))
  if [ "$kills" -lt "$KILLS" ]; then
    if [ "$QUICKSTART" = 1 ]; then
      # Anywhere in the run's span.
      tenths=$(( 10 + (RANDOM * 32768 + RANDOM) % (span * 10 + 1) ))
    else
      # Let the resumed run complete 0, 1 or 2 more iterations (0: the kill lands in start-up
      # or the first iteration), then kill it at a uniform moment within the next iteration's
      # time (rollout, update, evaluation or checkpoint write). Every start but the 0 case
      # makes progress, so KILLS kills fit in 2 * KILLS iterations.
      lines=$(written)
      target=$(( lines + RANDOM % 3 ))
      while kill -0 "$pid" 2>/dev/null && [ "$(written)" -lt "$target" ]; do
        sleep 0.1
      done
      tenths=$(( (RANDOM * 32768 + RANDOM) % (tau_tenths > 1 ? tau_tenths : 1) ))
    fi
    delay="$(( tenths / 10 )).$(( tenths % 10 ))"
    for _ in $(seq "$tenths"); do
      sleep 0.1
      kill -0 "$pid" 2>/dev/null || break
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid"
      wait "$pid" 2>/dev/null || true
      kills=$(( kills + 1 ))
      done_lines=$(written)
      echo "  kill $kills (${delay} s into an iteration after $done_lines written); checkpoint: $(cat "$WORK/killed/LATEST" 2>/dev/null || echo none)"
      continue
    fi
  fi
  if ! wait "$pid"; then
    echo "  the last start failed (see $WORK/killed.log)"
    exit 1
  fi
  break
done
echo "finished after $kills kills and $attempt starts"
last="checkpoint-$(printf %06d "$ITERATIONS")"
status=0
# optimizer.bpk is compared through digest.txt: burn writes optimizer state in hash-map
# order, so equal states can differ in byte order; digest.txt hashes the content by name.
files=("$last/model.bpk" "$last/digest.txt" "$last/state.json" metrics.jsonl)
# (A pretraining run's model.safetensors holds the average of ema.bpk; its header is written
# from a hash map, so it is compared through ema.bpk.)
if [ "$KIND" = pretrain ]; then files+=("$last/ema.bpk"); fi
for f in "${files[@]}"; do
  if cmp -s "$WORK/reference/$f" "$WORK/killed/$f"; then
    echo "  identical: $f"
  else
    echo "  DIFFERENT: $f"
    status=1
  fi
done
takeovers=$(grep -c "took over run.lock" "$WORK/killed.log" || true)
echo "summary: kind=$KIND iterations=$ITERATIONS kills=$kills starts=$attempt lock_takeovers=$takeovers reference_s=$span seed=$SEED $([ $status = 0 ] && echo identical || echo DIFFERENT)"
exit $status
