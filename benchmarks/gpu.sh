#!/usr/bin/env bash
# The GPU-sized benchmark suite, under 8 minutes on one H100.
# Writes its JSON and a README table under benchmarks/results/gpu-<device>-<date>/.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
device=$($python -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '-'))")
out="benchmarks/results/gpu-${device}-$(date +%Y%m%d)"
echo "device: $device -> $out"
timeout 470 $python benchmarks/run_all.py --size gpu --out-dir "$out"
