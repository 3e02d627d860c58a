#!/usr/bin/env bash
# Measured peak memory of DDPO-IS training on the tiny Stable Diffusion fixture, per memory
# setting (docs/real-models.md checks scripts/sd-memory-estimate.py against it).
#
#   scripts/sd-memory-measure.sh [SIZE] [SETTING...]
#
# SIZE: image side in pixels (default 96; the fixture's VAE halves it, so latents are SIZE/2).
# SETTING: any of (default: all, in this order)
#   sample  `align sample --sd fixtures/sd-tiny --n 1 --steps 2`: weights, no gradients (the fixed part)
#   a       8 samples per iteration (4 prompts x group 2), one minibatch of 8, one backward of all 8
#   b       a + train_micro_batch = 1
#   c       b + rollout_batch = 1
#   d       c + gradient_checkpointing = true
#   e       a + train_micro_batch = 2
#   f       a + train_micro_batch = 4
# Every training run: DDPO-IS on fixtures/sd-tiny toward the tiny aesthetic reward
# (fixtures/clip-tiny), 3 train steps, noise_level 1, guidance 5 (CFG: every UNet call runs on
# twice the images), one iteration, eval on 1 seed x 2 prompts.
#
# Each run is `/usr/bin/time -v target/release/align ...` (build it first: cargo build --release);
# the script prints a markdown table: setting | max RSS (MiB) | wall s. Configs, run directories
# and time logs go to a fresh temp dir (kept with KEEP=1, printed at the end). Run it alone on the
# machine: the thread and allocator settings below (overridable from the environment) keep the
# peaks comparable, RAYON_NUM_THREADS=1 and glibc returning no memory to the OS mid-run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
size=${1:-96}
shift || true
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(sample a b c d e f)
align=${ALIGN:-$repo/target/release/align}
[ -x "$align" ] || { echo "no $align: cargo build --release first" >&2; exit 1; }

export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4294967296}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
export MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-268435456}

tmp=$(mktemp -d /tmp/sd-memory-measure.XXXXXX)
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$tmp"' EXIT; fi
printf 'two red circles\na photo of a cat\n' > "$tmp/prompts.txt"

extra() {
    case $1 in
        a) ;;
        b) echo 'train_micro_batch = 1' ;;
        c) printf 'train_micro_batch = 1\nrollout_batch = 1\n' ;;
        d) printf 'train_micro_batch = 1\nrollout_batch = 1\ngradient_checkpointing = true\n' ;;
        e) echo 'train_micro_batch = 2' ;;
        f) echo 'train_micro_batch = 4' ;;
        *) echo "unknown setting $1" >&2; exit 2 ;;
    esac
}

label() {
    case $1 in
        sample) echo "sample, no gradients (n 1, 2 steps, CFG)" ;;
        a) echo "(a) whole batch: one backward of 8" ;;
        b) echo "(b) train_micro_batch = 1" ;;
        c) echo "(c) (b) + rollout_batch = 1" ;;
        d) echo "(d) (c) + gradient_checkpointing" ;;
        e) echo "(e) train_micro_batch = 2" ;;
        f) echo "(f) train_micro_batch = 4" ;;
    esac
}

write_config() { # NAME -> config path
    local c=$tmp/$1.toml
    {
        echo 'algorithm = "ddpo-is"'
        echo "model = \"$repo/fixtures/sd-tiny\""
        echo 'reward = "aesthetic"'
        echo "reward_model = \"$repo/fixtures/clip-tiny\""
        echo "aesthetic_head = \"$repo/fixtures/clip-tiny/aesthetic/model.safetensors\""
        echo "prompts = \"$tmp/prompts.txt\""
        echo "out = \"$tmp/run-$1\""
        echo "image_size = $size"
        echo 'prompts_per_iteration = 4'
        echo 'group_size = 2'
        echo 'train_steps = 3'
        echo 'noise_level = 1.0'
        echo 'guidance = 5.0'
        echo 'eval_steps = 2'
        echo 'eval_seeds = 1'
        extra "$1"
        echo '[runner]'
        echo 'iterations = 1'
        echo '[ddpo]'
        echo 'minibatches = 1'
    } > "$c"
    echo "$c"
}

rows=()
for s in "${settings[@]}"; do
    log=$tmp/$s.time
    if [ "$s" = sample ]; then
        cmd=("$align" sample --sd "$repo/fixtures/sd-tiny" --prompt x --n 1 --steps 2 --size "$size" --out "$tmp/sample.png")
    else
        cmd=("$align" train --config "$(write_config "$s")")
    fi
    echo "== $s: ${cmd[*]}" >&2
    if ! /usr/bin/time -v -o "$log" "${cmd[@]}" > "$tmp/$s.out" 2>&1; then
        echo "setting $s failed; its output:" >&2
        tail -20 "$tmp/$s.out" >&2
        exit 1
    fi
    rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$log")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); t = 0; for (i = 1; i <= n; i++) t = t * 60 + p[i]; printf "%.1f", t}' "$log")
    echo "   max RSS $rss MiB, wall $wall s" >&2
    rows+=("| $(label "$s") | $rss | $wall |")
done

echo
echo "image_size = $size (latent $((size / 2))x$((size / 2))), $(basename "$align"), RAYON_NUM_THREADS=$RAYON_NUM_THREADS"
echo
echo "| setting | max RSS (MiB) | wall s |"
echo "|---|---:|---:|"
printf '%s\n' "${rows[@]}"
[ "${KEEP:-0}" = 1 ] && echo && echo "configs, logs and runs kept in $tmp"
exit 0
