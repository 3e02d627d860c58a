#!/usr/bin/env bash
# A reward that goes bad in the middle of a real run (docs/reliability.md).
#
# The reward is a command (`reward = { command = [...] }`) scoring each PNG by its size. After
# two iterations it starts answering garbage (ANSWER=nan: `{"scores": [NaN, …]}`, which is not
# JSON; ANSWER=short: one score too few; ANSWER=text: an error page). The resumed run must stop
# in iteration 3 before any update — exit non-zero, an error naming the iteration and the
# reward, LATEST still at checkpoint 2, two lines in metrics.jsonl — and, the reward repaired,
# `--resume` must end identical to a run that never met the bad answers.
#
# Usage: scripts/bad-reward.sh   (after `cargo build --release -p align-cli`); ANSWER=nan|short|text
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/small-flow-grpo.sh
BIN=${BIN:-target/release/align}
ANSWER=${ANSWER:-nan}
WORK=${WORK:-runs/bad-reward-$ANSWER}
rm -rf "$WORK"; mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cat > "$WORK/score.sh" <<SH
#!/usr/bin/env bash
# Scores each image by its PNG size in kB; answers garbage while \$WORK/poison exists.
files=\$(grep -o '"[^"]*\.png"' | tr -d '"')
scores=""; n=0
for f in \$files; do scores="\$scores\${scores:+, }\$(( \$(stat -c %s "\$f") )).0e-3"; n=\$((n+1)); done
if [ -f "$WORK/poison" ]; then
  case "$ANSWER" in
    nan) echo "{\"scores\": [NaN\$(printf ', 0.5%.0s' \$(seq 2 \$n))]}" ;;
    short) echo "{\"scores\": [\${scores#*, }]}" ;;
    *) echo "<html>502 Bad Gateway</html>" ;;
  esac
else
  echo "{\"scores\": [\$scores]}"
fi
SH
chmod +x "$WORK/score.sh"
config() { small_flow_grpo "$1" "reward = { command = [\"$WORK/score.sh\"] }
eval_every = 100"; }
config 4 > "$WORK/config-4.toml"; config 2 > "$WORK/config-2.toml"
echo "reference (4 iterations, the reward never goes bad)"
"$BIN" train --config "$WORK/config-4.toml" --out "$WORK/reference" > "$WORK/reference.log" 2>&1
run="$WORK/run"
"$BIN" train --config "$WORK/config-2.toml" --out "$run" > "$WORK/run.log" 2>&1
touch "$WORK/poison"
set +e
"$BIN" train --config "$WORK/config-4.toml" --out "$run" --resume >> "$WORK/run.log" 2>&1
code=$?
set -e
msg=$(grep -a "error:" "$WORK/run.log" | tail -1 || true)
echo "  reward answering $ANSWER from iteration 3: exit $code"
echo "  message: $msg"
status=0
check() { if "$@"; then echo "  ok: ${*: -1}"; else echo "  FAILED: $*"; status=1; fi; }
check test "$code" -ne 0
check grep -q "iteration 3: reward \`external_command\`" <<< "$msg"
check grep -q "stopped before any update" <<< "$msg"
check test "$(cat "$run/LATEST")" = checkpoint-000002
check test "$(wc -l < "$run/metrics.jsonl")" -eq 2
check test ! -e "$run/checkpoint-000003"
rm "$WORK/poison"
"$BIN" train --config "$WORK/config-4.toml" --out "$run" --resume >> "$WORK/run.log" 2>&1
for f in checkpoint-000004/model.bpk checkpoint-000004/digest.txt checkpoint-000004/state.json metrics.jsonl; do
  if cmp -s "$WORK/reference/$f" "$run/$f"; then echo "  identical: $f"; else echo "  DIFFERENT: $f"; status=1; fi
done
echo "summary: bad-reward answer=$ANSWER exit=$code $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
