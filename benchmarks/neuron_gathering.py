"""Heads that prune neurons, trained on their kept neurons only against the full-width masked layers.

The same masks (each keeping a fraction U(0, 1) of its pruned layer's
neurons, the authors' initialisation) train both ways through
``train_population``: ``EngineConfig(gather_features="auto")`` (the default:
``neuron_packing``, each head narrowed to a capacity of its kept neurons) and
``gather_features=False`` (H wide, pruned activations held at zero). Both are
compiled first, then timed in turns; their weights are checked to agree.

    python benchmarks/neuron_gathering.py                       # RPS shapes, 4 heads, hidden1 and both
    python benchmarks/neuron_gathering.py --heads 8 --epochs 2 --repeats 3 --out /tmp/neurons.json

Writes JSON (device, versions, date, load, the two plans, per mode the median
seconds of each side and the ratio narrow / full width) to
benchmarks/results/neuron_gathering_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import environment, plan_record, rps_shaped_features, save, with_engine

from evojax_prune.config import HeadConfig, RunConfig, TrainConfig
from evojax_prune.train import trainer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "neuron_gathering_cpu.json"
MODES = {"hidden1": (1, "hidden1"), "both": (2, "both")}


def _masks(rng, heads: int, length: int) -> np.ndarray:
    keep = rng.uniform(size=(heads, 1))
    return rng.uniform(size=(heads, length)) < keep


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = rps_shaped_features()
    rng = np.random.default_rng(0)
    rows = []
    for mode in args.modes:
        layers, prune = MODES[mode]
        head_config = HeadConfig(hidden=512, hidden_layers=layers, prune=prune)
        train_config = TrainConfig(max_epochs=args.epochs, patience=args.epochs + 1)
        base = RunConfig(head=head_config, train=train_config)
        configs = {"narrow": with_engine(base), "full_width": with_engine(base, {"gather_features": False})}
        masks = _masks(rng, args.heads, head_config.chromosome_length(features.num_features))
        key = jax.random.key(1)

        def train(config, masks=masks, key=key):
            return jax.block_until_ready(trainer.train_population(
                key, masks, features.x_train, features.y_train, config, num_classes=features.num_classes))

        outputs = {side: train(config) for side, config in configs.items()}  # compiles both
        difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                         for a, b in zip(jax.tree.leaves(outputs["narrow"].params),
                                         jax.tree.leaves(outputs["full_width"].params), strict=True))
        seconds = {side: [] for side in configs}
        for repeat in range(args.repeats):
            for side in (("narrow", "full_width") if repeat % 2 == 0 else ("full_width", "narrow")):
                started = time.perf_counter()
                train(configs[side])
                seconds[side].append(time.perf_counter() - started)
        medians = {side: statistics.median(values) for side, values in seconds.items()}
        row = {"mode": mode, "heads": args.heads, "epochs": args.epochs,
               "kept_fraction": float(masks.mean()), "seconds": seconds,
               "median_seconds": medians, "ratio": medians["narrow"] / medians["full_width"],
               "max_weight_difference": difference,
               "plans": {side: plan_record(config, args.heads, features.num_features, features.num_classes)
                         for side, config in configs.items()}}
        rows.append(row)
        print(f"{mode}: narrow {medians['narrow']:.2f} s, full width {medians['full_width']:.2f} s, ratio "
              f"{row['ratio']:.3f} (kept {row['kept_fraction']:.2f}, weights agree to {difference:.1e})")
    report = {"benchmark": "neuron_gathering", "environment": environment(),
              "features": "rps-shaped-synthetic", "rows": rows}
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
