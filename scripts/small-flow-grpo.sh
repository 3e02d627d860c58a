# Sourced by the fault scripts (kill-resume.sh, enospc.sh, two-writers.sh, bad-reward.sh).
#
# small_flow_grpo ITERATIONS [TOP-LEVEL LINES] [TRAILING SECTIONS]
# prints the run they share: the quickstart (configs/flow-grpo.toml) on the shipped flow UNet
# with 2 prompts x 4 samples, 10 SDE steps and 4-step evaluations, so that a run takes seconds
# per iteration on a CPU.
small_flow_grpo() {
  cat <<TOML
algorithm = "flow-grpo"
model = "models/shapes-flow-unet"
prompts_per_iteration = 2
group_size = 4
train_steps = 10
noise_level = 0.7
guidance = 3.0
eval_steps = 4
${2:-}
[runner]
iterations = $1
learning_rate = 3e-4
${3:-}
TOML
}
