#!/usr/bin/env bash
# Methods on CIFAR-10 with the same seed and budget, side by side on one GPU (one process each), resumable: each
# process trains for at most $TIME_LIMIT seconds, checkpoints, and a rerun continues. Evaluation (5-NN and the
# 500-epoch linear probe) runs when the schedule is complete.
# Usage: scripts/gpu_cifar10.sh DATA_ROOT EPOCHS METHOD [METHOD ...]   (default methods: resa osessl)
set -uo pipefail
DATA=${1:-.devdata}; EPOCHS=${2:-50}; shift 2 || true
METHODS=${*:-resa osessl}; TIME_LIMIT=${TIME_LIMIT:-420}
mkdir -p runs
export OSESSL_CACHE=${OSESSL_CACHE:-/tmp/osessl-cache} PYTHONUNBUFFERED=1
for m in $METHODS; do
  python3 -m osessl_core train --method "$m" --dataset cifar10 --data-root "$DATA" --epochs "$EPOCHS" \
    --run-dir "runs/gpu-cifar10-$m" --eval-linear --time-limit "$TIME_LIMIT" --no-progress --log-every 195 \
    > "runs/gpu-cifar10-$m.log" 2>&1 &
done
wait
for m in $METHODS; do echo "== $m"; grep -v "^W1" "runs/gpu-cifar10-$m.log" | tail -n 2; done
