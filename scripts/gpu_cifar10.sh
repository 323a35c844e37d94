#!/usr/bin/env bash
# ReSA and OSESSL on CIFAR-10, same seed and budget, run side by side on one GPU (two processes), resumable:
# each process trains for at most $TIME_LIMIT seconds, checkpoints, and a rerun continues. Evaluation (5-NN and
# the 500-epoch linear probe) runs when the schedule is complete. Usage: scripts/gpu_cifar10.sh DATA_ROOT EPOCHS
set -uo pipefail
DATA=${1:-.devdata}; EPOCHS=${2:-50}; TIME_LIMIT=${TIME_LIMIT:-420}
mkdir -p runs
export OSESSL_CACHE=${OSESSL_CACHE:-/tmp/osessl-cache} PYTHONUNBUFFERED=1
for m in resa osessl; do
  python3 -m osessl_core train --method $m --dataset cifar10 --data-root "$DATA" --epochs "$EPOCHS" \
    --run-dir runs/gpu-cifar10-$m --eval-linear --time-limit "$TIME_LIMIT" --no-progress --log-every 195 \
    --no-compile > runs/gpu-cifar10-$m.log 2>&1 &
done
wait
tail -n 3 runs/gpu-cifar10-*.log
