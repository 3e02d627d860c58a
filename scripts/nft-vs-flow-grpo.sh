#!/usr/bin/env bash
# DiffusionNFT against Flow-GRPO at the same sample budget (1 280 rollouts): held-out ShapeEval
# against samples generated, from the efficacy rows' committed outputs (docs/efficacy/<row>/).
# Writes docs/efficacy/nft-vs-flow-grpo.png. Usage: scripts/nft-vs-flow-grpo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p align-cli --bin align >/dev/null 2>&1
target/release/align plot --compare docs/efficacy/nft-vs-flow-grpo.png \
  --run docs/efficacy/flow-grpo-s0 --run docs/efficacy/flow-grpo-s1 \
  --run docs/efficacy/diffusion-nft-s0 --run docs/efficacy/diffusion-nft-s1 \
  --run docs/efficacy/diffusion-nft-lr3e-4-s0
