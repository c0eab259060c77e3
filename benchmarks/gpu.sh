#!/usr/bin/env bash
# Profiles of a training step and of the fused SGD kernel, then the GPU-sized benchmark suite.
# About 8 minutes on one H100 (estimated from the parts: 90 + 30 + 45 + 330 s; the new
# kernels' and the deferred updates' parts are guesses); 11.5 at the time limits, 15.5 with the
# lockstep, neuron and Keras-training benchmarks at the end (never timed on a GPU). The suite
# runs with the engine settings (EngineConfig fields) that made the fastest step in the step
# profile (its first part).
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
# The step profile and the chunk-64 one run with the engine's defaults and their variants' own
# settings, whatever the caller's environment holds.
unset EVOJAX_PRUNE_BENCH_ENGINE
# Where a generation's training step spends its time, in each of the engine variants
# (step_profile.VARIANTS). First, because it is quick and checks the engine's default path on
# this device: the suite is not worth running if that fails.
# The candidates are engine settings a run could have (step_profile.CANDIDATES); XLA's step and
# XLA's scatter as references.
timeout 150 $python benchmarks/step_profile.py --population 32 --epochs 3 --out "$out/step_profile.json" \
  --variants "packed, fused SGD kernel" "packed, XLA's SGD" "packed, fused SGD kernel, tiles summed by XLA's scatter" \
  "packed, fused SGD kernel, tiles summed by gathering" || true
# The rest of the suite runs with the fastest candidate's engine settings (a JSON object of
# EngineConfig fields, recorded in every JSON as "engine"), so that its figures are the
# trainer's best on this device.
engine=$($python - "$out/step_profile.json" <<'CHECK'
import json, sys
try:
    profile = json.load(open(sys.argv[1]))
except (OSError, ValueError) as error:  # stopped before its first variant finished
    print(f"gpu.sh: no step profile ({error}); the suite runs with the engine's defaults", file=sys.stderr)
    print("{}")
    sys.exit(0)
first = profile["layouts"][0]
if "error" in first:
    sys.exit(f"gpu.sh: the engine's default path failed on this device, so the suite was not run: "
             f"{first['error'][:1000]}")
fastest = profile.get("fastest") or {"variant": first["layout"], "settings": {}}
print(f"gpu.sh: the suite runs with {fastest['variant']!r}: {fastest['settings']}", file=sys.stderr)
print(json.dumps(fastest["settings"]))
CHECK
)
# Chunks of 64 heads (the engine caps them at 32, max_heads_per_chunk: XLA's scatter failed for
# 64 on an H100), with the tiles summed by gathering (the GPU default), then by the scatter.
timeout 60 $python benchmarks/step_profile.py --population 64 --chunk-size 64 --epochs 2 \
  --variants "packed, fused SGD kernel, tiles summed by gathering" \
  "packed, fused SGD kernel, tiles summed by XLA's scatter" \
  --out "$out/step_profile_chunk64.json" || true
export EVOJAX_PRUNE_BENCH_ENGINE=$engine  # from here on (the chunk-64 profile above ran without)
echo "engine settings for the suite: $EVOJAX_PRUNE_BENCH_ENGINE"
# The fused SGD kernel alone over Triton's settings: which settings fused_sgd should default to.
timeout 90 $python benchmarks/fused_sgd_step.py --blocks 32 64 --out "$out/fused_sgd_step.json" || true
timeout 390 $python benchmarks/run_all.py --size gpu --out-dir "$out" || true
# Last, so that a device whose time runs out has the suite's figures already: R = 4 runs in
# lockstep against one after another (built for accelerators, never timed on one), and heads
# trained on their kept neurons against the full-width layers, at 32 heads.
timeout 120 $python benchmarks/runs_lockstep.py --runs 4 --repeats 1 --out "$out/runs_lockstep.json" || true
timeout 60 $python benchmarks/neuron_gathering.py --heads 32 --repeats 2 --out "$out/neuron_gathering.json" || true
# What the paper preset's Keras training costs where its decay keeps the fused SGD step off.
timeout 60 $python benchmarks/keras_semantics.py --heads 32 --repeats 2 --out "$out/keras_semantics.json" || true
