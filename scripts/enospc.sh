#!/usr/bin/env bash
# A full disk during a real run (docs/reliability.md): `align train` writes into a small tmpfs
# that is filled up after checkpoint 2, so checkpoint 3 cannot be written.
#
# 1. Reference: 4 iterations of a small Flow-GRPO run on ordinary disk.
# 2. The same run in the tmpfs for 2 iterations; then a filler file leaves 64 KiB free and the
#    run is resumed to 4 iterations: it must stop with an error naming checkpoint 3 and
#    "No space left on device", exit non-zero, leave LATEST at checkpoint 2 and checkpoint 2
#    passing `sha256sum -c files.sha256`.
# 3. The filler is removed and the run resumed: it must end identical to the reference
#    (model.bpk, digest.txt, state.json, metrics.jsonl).
#
# Needs root (mount). Usage: scripts/enospc.sh   (after `cargo build --release -p align-cli`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-flow-grpo.sh
BIN=${BIN:-target/release/align}
WORK=${WORK:-runs/enospc}
MNT=${MNT:-/tmp/align-enospc}
SIZE=${SIZE:-64m}
if [ "$(id -u)" != 0 ]; then echo "enospc.sh: needs root to mount a tmpfs" >&2; exit 2; fi
rm -rf "$WORK"; mkdir -p "$WORK" "$MNT"
mountpoint -q "$MNT" && umount "$MNT"
mount -t tmpfs -o size="$SIZE" tmpfs "$MNT"
trap 'umount "$MNT" 2>/dev/null || true' EXIT
config() { small_flow_grpo "$1" "eval_every = 100" "[flow_grpo]
minibatches = 2"; }
config 4 > "$WORK/config-4.toml"; config 2 > "$WORK/config-2.toml"
echo "reference (4 iterations, ordinary disk)"
"$BIN" train --config "$WORK/config-4.toml" --out "$WORK/reference" > "$WORK/reference.log" 2>&1
run="$MNT/run"
echo "tmpfs run: 2 iterations"
"$BIN" train --config "$WORK/config-2.toml" --out "$run" > "$WORK/full-disk.log" 2>&1
free_kb=$(df -k --output=avail "$MNT" | tail -1)
filler_kb=$(( free_kb - 64 ))
dd if=/dev/zero of="$MNT/filler" bs=1K count="$filler_kb" status=none 2>/dev/null || true
echo "  filled: $(df -k --output=avail "$MNT" | tail -1) KiB left"
status=0
set +e
"$BIN" train --config "$WORK/config-4.toml" --out "$run" --resume >> "$WORK/full-disk.log" 2>&1
code=$?
set -e
last=$(grep -a "error:" "$WORK/full-disk.log" | tail -1 || true)
echo "  resumed on the full disk: exit $code"
echo "  message: $last"
check() { if "$@"; then echo "  ok: ${*: -1}"; else echo "  FAILED: $*"; status=1; fi; }
check test "$code" -ne 0
check grep -q "checkpoint-000003: could not be written" <<< "$last"
check grep -q "No space left on device" <<< "$last"
check grep -q "checkpoint-000002 is intact" <<< "$last"
check test "$(cat "$run/LATEST")" = checkpoint-000002
( cd "$run/checkpoint-000002" && sha256sum -c --quiet files.sha256 ) && echo "  ok: checkpoint-000002 passes sha256sum -c files.sha256" || { echo "  FAILED: sha256sum -c"; status=1; }
leftovers=$(find "$run" -name '*.tmp-*' | wc -l)
check test "$leftovers" -eq 0
rm -f "$MNT/filler"
echo "space freed; resuming"
"$BIN" train --config "$WORK/config-4.toml" --out "$run" --resume >> "$WORK/full-disk.log" 2>&1
for f in checkpoint-000004/model.bpk checkpoint-000004/digest.txt checkpoint-000004/state.json metrics.jsonl; do
  if cmp -s "$WORK/reference/$f" "$run/$f"; then echo "  identical: $f"; else echo "  DIFFERENT: $f"; status=1; fi
done
echo "summary: enospc exit=$code latest_after_failure=checkpoint-000002 $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
