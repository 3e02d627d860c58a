#!/usr/bin/env bash
# The cost of data parallelism on this machine, and a scaling estimate for N devices:
# seconds per Flow-GRPO iteration on one device against the same iteration spread over two
# (`--devices`), from the release CLI built with ndarray:
#
#   cargo build --release -p align-cli --bin align --features ndarray
#   scripts/data-parallel-bench.sh [OUT_DIR]
#
# The run: Flow-GRPO on the shipped flow UNet with configs/flow-grpo.toml's sampler and update
# (10 SDE steps, CFG 3, 2 minibatches, every step trained) and 4-step evaluations; B samples per
# iteration (2 prompts x 4, or 4 x 8 as in the shipped config). Each setting runs twice from
# scratch, for 1 and for 3 iterations; half the difference is the cost of one iteration (the
# base and final evaluations, identical in both runs, cancel). Prints two markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
ALIGN=${ALIGN:-target/release/align}
OUT=${1:-$(mktemp -d /tmp/align-dp-bench.XXXXXX)}
mkdir -p "$OUT"

config() { # config OUT ITERATIONS PROMPTS GROUP
  cat <<TOML
algorithm = "flow-grpo"
model = "models/shapes-flow-unet"
out = "$1"
prompts_per_iteration = $3
group_size = $4
train_steps = 10
noise_level = 0.7
guidance = 3.0
eval_steps = 4
[runner]
iterations = $2
learning_rate = 3e-4
TOML
}

seconds() { # seconds DEVICES ITERATIONS PROMPTS GROUP
  local name="$OUT/run-${1//,/+}-$2-$3x$4"
  rm -rf "$name"
  config "$name" "$2" "$3" "$4" > "$name.toml"
  local start end
  start=$(date +%s.%N)
  if [ -n "$1" ]; then
    "$ALIGN" train --config "$name.toml" --devices "$1" > "$name.log" 2>&1
  else
    "$ALIGN" train --config "$name.toml" > "$name.log" 2>&1
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

per_iteration() { # per_iteration DEVICES PROMPTS GROUP
  local one three
  one=$(seconds "$1" 1 "$2" "$3")
  three=$(seconds "$1" 3 "$2" "$3")
  echo "($three - $one) / 2" | bc -l
}

echo "| devices | B | seconds per iteration | vs one flex device |"
echo "|---|---|---|---|"
base=""
for devices in "" "flex,flex" "flex,ndarray" "ndarray"; do
  per=$(per_iteration "$devices" 2 4)
  [ -z "$base" ] && base=$per
  printf '| %s | 8 | %.2f | %.2f× |\n' "${devices:-flex}" "$per" "$(echo "$per / $base" | bc -l)"
done
echo
# One device at two batch sizes: T(B) = a + b·B (a: per-iteration work that does not grow with
# the batch; b: per-sample work — rollout, update, reward). With N devices sharing the samples
# and the serial part unchanged, T_N(B) ≈ a + b·B/N (an estimate: it assumes the devices work
# at the same time and the transfers — the LoRA gradients, a few MB — cost nothing).
small=$base
large=$(per_iteration "" 4 8)
b=$(echo "($large - $small) / 24" | bc -l)
a=$(echo "$small - 8 * $b" | bc -l)
printf 'one flex device: T(8) = %.2f s, T(32) = %.2f s → a = %.2f s, b = %.3f s per sample\n\n' "$small" "$large" "$a" "$b"
echo "| N devices | estimated T_N(32) (s) | estimated speed-up |"
echo "|---|---|---|"
for n in 1 2 4 8 16 32; do
  t=$(echo "$a + $b * 32 / $n" | bc -l)
  printf '| %d | %.2f | %.1f× |\n' "$n" "$t" "$(echo "$large / $t" | bc -l)"
done
