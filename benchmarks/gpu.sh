#!/usr/bin/env bash
# The GPU-sized benchmark suite (under 8 minutes on one H100), then a profile of a training step.
#
#   bash benchmarks/gpu.sh                       # -> benchmarks/results/gpu-<device>-<date>/
#   RESULTS_DIR=/somewhere bash benchmarks/gpu.sh
#
# Writes one JSON per benchmark (each written as it goes, so a benchmark stopped at its
# time limit keeps what it finished), the README table rendered from them, and the
# output of nvidia-smi. Commit the folder with the device's name in it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
device=$($python -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '-'))")
out=${RESULTS_DIR:-"benchmarks/results/gpu-${device}-$(date +%Y%m%d)"}
mkdir -p "$out"
echo "device: $device -> $out"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" || true
fi
timeout 390 $python benchmarks/run_all.py --size gpu --out-dir "$out" || true
# Where a generation's training step spends its time, packed against padded layouts.
timeout 90 $python benchmarks/step_profile.py --population 32 --epochs 3 --out "$out/step_profile.json"
