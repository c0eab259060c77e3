"""One head's training step written three ways, timed side by side: what XLA's CPU backend makes of each.

The trainer's step on a CPU (one head per chunk, its kept features gathered to
``rows`` columns) is: the forward product ``x @ w`` (B, rows) x (rows, H), ReLU,
the output layer, the kernel gradient ``xᵀ d`` and optax's SGD with Nesterov
momentum, two passes over the kernel. This script copies that step outside the
trainer, with the output layer kept and the gathers left out, and times
``steps`` of it in one ``scan`` (best of ``repeats``) for each way of writing it:

  * ``kernel (c, H)``: kernel (rows, H), the update as optax computes it
    (momentum first, then the weights from the new momentum); the layout the
    trainer used on a CPU until it measured the next one;
  * ``kernel (H, c), as the trainer on a CPU``: so the forward product is
    ``x @ wᵀ`` and the gradient ``dᵀ x`` (XLA 0.10.2 still runs the first in
    YNNPACK and the second in Eigen; ``EngineConfig.kernel_layout``, auto:
    ``"hidden_by_kept"`` on a CPU);
  * ``kernel (c, H), update from the old momentum``: the same arithmetic as
    ``w - lr mu² m - lr (1 + mu) g`` and ``mu m + g``, both from the old
    momentum, so that the two updates could be one pass if XLA fused them.

All three compute the same weights (the script reports the largest difference
from the first), so any gap is XLA's doing. With ``--trainer-populations``, the
trainer itself is also timed on RPS-shaped features and the authors' initial
masks, alternating in one process (best of ``repeats``): as it is, and with
each of its CPU choices undone (``TRAINER_WAYS``, engine settings): its kernel
stored (c, H) rather than (H, c) (``EngineConfig.kernel_layout``
``"kept_by_hidden"``), 8 capacity levels for chunks of one head rather than 16
(``EngineConfig.capacity_levels``), and both. The README's "What the CPU
numbers say" quotes this script; ``step_profile.py`` traces the trainer's step.

    python benchmarks/cpu_step_layouts.py                       # 1,792 rows, the widest capacity
    python benchmarks/cpu_step_layouts.py --rows 768 --out /tmp/layouts.json
    python benchmarks/cpu_step_layouts.py --trainer-populations 4 16 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import environment, plan_record, save, with_engine

RESULTS = Path(__file__).parent / "results"
HIDDEN, CLASSES, BATCH = 512, 3, 32
LEARNING_RATE, MOMENTUM = 1e-3, 0.9


def _trainer_update(kernel, momentum, gradient):
    momentum = MOMENTUM * momentum + gradient  # optax.trace
    return kernel - LEARNING_RATE * (gradient + MOMENTUM * momentum), momentum


def _update_from_old_momentum(kernel, momentum, gradient):
    kernel = kernel - (LEARNING_RATE * MOMENTUM**2) * momentum - (LEARNING_RATE * (1 + MOMENTUM)) * gradient
    return kernel, MOMENTUM * momentum + gradient


def make_steps(transposed: bool, update):
    """``steps`` SGD steps of one head over minibatches (S, B, rows); kernel (rows, H) or (H, rows)."""

    def step(carry, batch):
        kernel, momentum, output_kernel = carry
        inputs, labels = batch
        pre_activation = inputs @ (kernel.T if transposed else kernel)  # (B, H)
        hidden = jnp.maximum(pre_activation, 0.0)
        logits = hidden @ output_kernel
        d_logits = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, CLASSES)) / BATCH
        d_pre_activation = jnp.where(pre_activation > 0, d_logits @ output_kernel.T, 0.0)
        gradient = d_pre_activation.T @ inputs if transposed else inputs.T @ d_pre_activation
        kernel, momentum = update(kernel, momentum, gradient)
        return (kernel, momentum, output_kernel - LEARNING_RATE * (hidden.T @ d_logits)), ()

    @jax.jit
    def run(kernel, momentum, output_kernel, inputs, labels):
        return jax.lax.scan(step, (kernel, momentum, output_kernel), (inputs, labels))[0]

    return run


VARIANTS = {
    "kernel (c, H)": (False, _trainer_update),
    "kernel (H, c), as the trainer on a CPU": (True, _trainer_update),
    "kernel (c, H), update from the old momentum": (False, _update_from_old_momentum),
}


def bench(rows: int, steps: int, repeats: int) -> list[dict]:
    keys = jax.random.split(jax.random.key(0), 3)
    inputs = jax.random.normal(keys[0], (steps, BATCH, rows))
    labels = jax.random.randint(keys[1], (steps, BATCH), 0, CLASSES)
    kernel = jax.random.normal(keys[2], (rows, HIDDEN)) * (2.0 / (rows + HIDDEN)) ** 0.5
    output_kernel = jnp.full((HIDDEN, CLASSES), 0.01)
    flops = steps * 2 * (2 * BATCH * rows * HIDDEN)  # the two first-layer products
    results, reference = [], None
    for name, (transposed, update) in VARIANTS.items():
        run = make_steps(transposed, update)
        start = kernel.T if transposed else kernel
        args = (start, jnp.zeros_like(start), output_kernel, inputs, labels)
        trained = jax.block_until_ready(run(*args))  # compiles
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(run(*args))
            best = min(best, time.perf_counter() - started)
        final = trained[0].T if transposed else trained[0]
        reference = final if reference is None else reference
        results.append({
            "variant": name,
            "us_per_step": best / steps * 1e6,
            "first_layer_gflops": flops / best / 1e9,
            "max_abs_difference_from_first": float(jnp.max(jnp.abs(final - reference))),
        })
    for row in results:
        row["speedup_over_first"] = results[0]["us_per_step"] / row["us_per_step"]
    return results


TRAINER_WAYS = {  # engine settings (EngineConfig fields), against the trainer as it is
    "as the trainer": {},
    "kernel (c, H)": {"kernel_layout": "kept_by_hidden"},
    "8 capacity levels for one head": {"capacity_levels": 8},
    "both: the trainer before": {"kernel_layout": "kept_by_hidden", "capacity_levels": 8},
}


def bench_trainer(population: int, epochs: int, repeats: int) -> dict:
    """The trainer on ``population`` heads for ``epochs``, as it is and with each of ``TRAINER_WAYS`` undone.

    Alternating in one process, best of ``repeats``; compile time (the first
    call's excess) reported beside, since each capacity level is a compiled
    branch. Each way's plan is a static argument of the trainer's program: its
    own compiled program, compiled on its first call.
    """
    from trainer_throughput import NUM_CLASSES, NUM_FEATURES, author_masks, synthetic_features

    from evojax_prune import config as cfg
    from evojax_prune.train import trainer

    x, y = synthetic_features(0)
    masks = author_masks(np.random.default_rng(0), population)
    config = cfg.preset("default").replace(train={"max_epochs": epochs, "patience": epochs + 1})
    configs = {name: with_engine(config, settings) for name, settings in TRAINER_WAYS.items()}
    key = jax.random.key(0)
    best, compile_seconds, kernels = dict.fromkeys(TRAINER_WAYS, float("inf")), {}, {}
    for repeat in range(repeats):
        for name, way_config in configs.items():
            train = functools.partial(trainer.train_population, key, masks, x, y, way_config)
            started = time.perf_counter()
            kernels[name] = jax.block_until_ready(train()).params.hidden_kernel
            first_call = time.perf_counter() - started
            started = time.perf_counter()
            jax.block_until_ready(train())
            seconds = time.perf_counter() - started
            best[name] = min(best[name], seconds)
            if repeat == 0:  # later repeats find the program compiled
                compile_seconds[name] = first_call - seconds
    reference = kernels["as the trainer"]
    return {
        "population": population, "epochs": epochs, "seconds": best, "compile_seconds": compile_seconds,
        "engine": TRAINER_WAYS,
        "plans": {name: plan_record(way_config, population, NUM_FEATURES, NUM_CLASSES)
                  for name, way_config in configs.items()},
        "speedup_of_the_trainer": {name: best[name] / best["as the trainer"] for name in TRAINER_WAYS},
        "max_abs_kernel_difference": {
            name: float(jnp.max(jnp.abs(kernel - reference))) for name, kernel in kernels.items()
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1792, help="kept features of the head (its capacity)")
    parser.add_argument("--steps", type=int, default=63, help="minibatches, one epoch of the RPS data set")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trainer-populations", type=int, nargs="*", default=[],
                        help="also time the trainer on this many heads, as it is and its CPU choices undone")
    parser.add_argument("--trainer-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_step_layouts.json")
    args = parser.parse_args(argv)
    results = bench(args.rows, args.steps, args.repeats)
    for row in results:
        print(f"{row['variant']:44s} {row['us_per_step']:7.0f} us per step  "
              f"x{row['speedup_over_first']:.2f}  ({row['first_layer_gflops']:.0f} GFLOP/s, "
              f"max |difference| {row['max_abs_difference_from_first']:.1e})")
    report = {
        "benchmark": "cpu_step_layouts",
        **environment(),
        "setup": {
            "rows": args.rows, "hidden": HIDDEN, "classes": CLASSES, "batch": BATCH, "steps": args.steps,
            "repeats": args.repeats, "optimizer": f"sgd({LEARNING_RATE}, momentum={MOMENTUM}, nesterov=True)",
        },
        "results": results,
        "trainer": [],
    }
    for population in args.trainer_populations:
        row = bench_trainer(population, args.trainer_epochs, args.repeats)
        report["trainer"].append(row)
        for name, seconds in row["seconds"].items():
            print(f"trainer, {population} heads x {args.trainer_epochs} epochs, {name:30s} {seconds:6.3f} s "
                  f"(compile {row['compile_seconds'][name]:4.1f} s): the trainer x"
                  f"{row['speedup_of_the_trainer'][name]:.2f} against it, "
                  f"max |kernel difference| {row['max_abs_kernel_difference'][name]:.1e}")
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
