#!/usr/bin/env bash
# Two writers on one run directory (docs/reliability.md).
#
# 1. `align train` starts a run; once it holds `run.lock`, a second `align train` (fresh and
#    `--resume`) and an `align pretrain` into the same directory must be refused, exit
#    non-zero, name the holder's pid, and leave the directory as it was.
# 2. The first run is killed (SIGKILL) after its first checkpoint; `align train --resume`
#    must take the stale lock over (saying so) and finish the run.
#
# Usage: scripts/two-writers.sh   (after `cargo build --release -p align-cli`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-flow-grpo.sh
BIN=${BIN:-target/release/align}
WORK=${WORK:-runs/two-writers}
rm -rf "$WORK"; mkdir -p "$WORK"
small_flow_grpo 20 > "$WORK/config.toml"
run="$WORK/run"
"$BIN" train --config "$WORK/config.toml" --out "$run" > "$WORK/first.log" 2>&1 &
first=$!
for _ in $(seq 600); do grep -q "^pid" "$run/run.lock" 2>/dev/null && break; sleep 0.1; done
if ! grep -q "^pid $first" "$run/run.lock" 2>/dev/null; then
  echo "  the first writer never took the lock (see $WORK/first.log)"; exit 1
fi
echo "first writer: pid $first; run.lock says: $(head -1 "$run/run.lock")"
status=0
check_refused() {
  local what=$1; shift
  set +e
  "$@" > "$WORK/second.log" 2>&1
  local code=$?
  set -e
  local msg
  msg=$(grep -a "error:" "$WORK/second.log" | tail -1 || true)
  if [ "$code" -ne 0 ] && grep -q "is in use by pid $first" <<< "$msg"; then
    echo "  refused ($what): exit $code: $msg"
  else
    echo "  NOT REFUSED ($what): exit $code: $msg"
    status=1
  fi
}
check_refused "align train" "$BIN" train --config "$WORK/config.toml" --out "$run"
check_refused "align train --resume" "$BIN" train --config "$WORK/config.toml" --out "$run" --resume
check_refused "align pretrain" "$BIN" pretrain --model dit --steps 2 --batch 2 --out "$run"
for _ in $(seq 1200); do [ -f "$run/LATEST" ] && break; sleep 0.1; done
kill -9 "$first"; wait "$first" 2>/dev/null || true
echo "first writer killed after $(cat "$run/LATEST"); run.lock still says: $(head -1 "$run/run.lock")"
"$BIN" train --config "$WORK/config.toml" --out "$run" --resume > "$WORK/third.log" 2>&1
note=$(grep -a "took over run.lock" "$WORK/third.log" | head -1 || true)
if grep -q "from pid $first" <<< "$note" && [ "$(cat "$run/LATEST")" = checkpoint-000020 ]; then
  echo "  resumed: $note; finished at $(cat "$run/LATEST"); run.lock after a clean exit: $(wc -c < "$run/run.lock") bytes"
else
  echo "  TAKE-OVER FAILED: $note"; status=1
fi
echo "summary: two-writers $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
