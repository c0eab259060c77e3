"""What the paper preset's Keras 2.2.4 training costs: its rules against the default's, side by side.

The same heads (the authors' initial masks) train through ``train_population``
with the default ``TrainConfig`` (``optax.sgd``, the exact cross-entropy) and
with the paper preset's (``config.PAPER_TRAINING``: Keras' SGD with decay 1e-6,
``train/keras_sgd.py``, and the cross-entropy on clipped probabilities). Both
are compiled first, then timed in turns; each side's plan is recorded (on a GPU
the decay keeps the fused SGD step off, which is most of the difference there).
Early stopping is set never to trigger, so both sides run the same epochs and
the restore rule costs nothing.

    python benchmarks/keras_semantics.py                      # RPS shapes, 8 heads, 2 epochs
    python benchmarks/keras_semantics.py --heads 32 --out /tmp/keras.json

Writes JSON (device, versions, date, load, the two plans, the median seconds of
each side and the ratio paper / default) to
benchmarks/results/keras_semantics_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import environment, plan_record, rps_shaped_features, save, with_engine

from evojax_prune.config import PAPER_TRAINING, RunConfig, TrainConfig
from evojax_prune.search.strategy import MultiObjective
from evojax_prune.train import trainer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "keras_semantics_cpu.json"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = rps_shaped_features()
    budget = dict(max_epochs=args.epochs, patience=args.epochs + 1)
    configs = {
        "default": with_engine(RunConfig(train=TrainConfig(**budget))),
        "paper": with_engine(RunConfig(train=TrainConfig(**budget, **PAPER_TRAINING))),
    }
    key = jax.random.PRNGKey(0)
    search = configs["default"].replace(search={"population_size": args.heads}).search
    masks = np.asarray(MultiObjective(search, features.num_features).initial_population(key))

    def train(config):
        return jax.block_until_ready(trainer.train_population(
            key, masks, features.x_train, features.y_train, config, num_classes=features.num_classes))

    outputs = {side: train(config) for side, config in configs.items()}  # compiles both
    seconds = {side: [] for side in configs}
    for repeat in range(args.repeats):
        for side in (("default", "paper") if repeat % 2 == 0 else ("paper", "default")):
            started = time.perf_counter()
            train(configs[side])
            seconds[side].append(time.perf_counter() - started)
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    ratio = medians["paper"] / medians["default"]
    # Decay 1e-6 and clipping at 1e-7 barely move the weights in a few epochs: a check that the
    # two sides trained the same heads, not a test of the rules (tests/test_trainer.py does that).
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(outputs["paper"].params),
                                     jax.tree.leaves(outputs["default"].params), strict=True))
    print(f"{args.heads} heads, {args.epochs} epochs: default {medians['default']:.2f} s, paper "
          f"{medians['paper']:.2f} s, ratio {ratio:.3f} (weights differ by at most {difference:.1e})")
    report = {
        "benchmark": "keras_semantics", "environment": environment(), "features": "rps-shaped-synthetic",
        "heads": args.heads, "epochs": args.epochs, "kept_fraction": float(masks.mean()),
        "paper_training": PAPER_TRAINING, "seconds": seconds, "median_seconds": medians, "ratio": ratio,
        "max_weight_difference": difference,
        "plans": {side: plan_record(config, args.heads, features.num_features, features.num_classes)
                  for side, config in configs.items()},
    }
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
