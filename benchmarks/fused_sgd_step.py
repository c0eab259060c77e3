"""The fused SGD kernel alone, against XLA's step, over Triton's settings.

One SGD step of a packed first layer (``fused_sgd.sgd_step``): T tiles of r kept
rows, H hidden units, batch B (default: 320 tiles of 128 rows, H = 512, B = 32,
the chunk of 32 authors'-initialisation heads that ``step_profile.py`` traces).
Timed as ``--steps`` steps inside one jitted ``fori_loop`` (no dispatch in the
measurement), the best of ``--repeats``:

  * ``xla``: the same step the way the trainer does it without the kernel: the
    gradient product, ``optax.sgd`` (momentum 0.9, Nesterov), the masked
    update and the next forward product;
  * ``fused``: the kernel, for every combination of ``--blocks`` (hidden units
    per program), ``--warps`` and ``--stages`` (Triton's warps and pipeline
    stages), skipping those Triton cannot compile (the error is recorded);

For each: microseconds per step, and the bandwidth of the 4 passes the roofline
counts (reading and writing the kernel and its momentum) as a fraction of the
stream bandwidth measured in the same run. The best setting is what
``fused_sgd.BLOCK_HIDDEN`` / ``NUM_WARPS`` / ``NUM_STAGES`` should hold.

    python benchmarks/fused_sgd_step.py --out /tmp/fused.json          # on a GPU
    python benchmarks/fused_sgd_step.py --tiles 4 --steps 2            # CPU: interpreter, a smoke check

On a CPU the kernel runs in Pallas' interpreter, so its times there say nothing.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from common import environment, save
from trainer_throughput import memory_bandwidth_gbs

from evojax_prune.train import fused_sgd

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fused_sgd_step.json"
LEARNING_RATE, DECAY = 1e-3, 0.9


def operands(tiles: int, rows: int, batch: int, hidden: int, idle_fraction: float) -> dict:
    keys = jax.random.split(jax.random.key(0), 5)
    training = jnp.arange(tiles) < round(tiles * (1 - idle_fraction))
    return dict(
        kernel=0.05 * jax.random.normal(keys[0], (tiles, rows, hidden), jnp.float32),
        momentum=0.01 * jax.random.normal(keys[1], (tiles, rows, hidden), jnp.float32),
        inputs_transposed=jax.random.uniform(keys[2], (tiles, rows, batch), jnp.float32),
        d_pre_activation=1e-3 * jax.random.normal(keys[3], (tiles, batch, hidden), jnp.float32),
        next_inputs=jax.random.uniform(keys[4], (tiles, batch, rows), jnp.float32),
        training=training,
    )


def xla_step(kernel, momentum, inputs_transposed, d_pre_activation, next_inputs, training, **_):
    """The trainer's step on packed tiles without the kernel (``xla_step``, ``EngineConfig.step`` xla)."""
    optimizer = optax.sgd(LEARNING_RATE, momentum=DECAY, nesterov=True)
    grad = jnp.einsum("trb,tbh->trh", inputs_transposed, d_pre_activation)
    update, state = optimizer.update(grad, (optax.TraceState(trace=momentum), optax.EmptyState()), kernel)
    new_kernel = optax.apply_updates(kernel, jnp.where(training[:, None, None], update, 0.0))
    product = jnp.einsum("tbr,trh->tbh", next_inputs, new_kernel)
    return new_kernel, state[0].trace, product


def time_steps(step, data: dict, steps: int, repeats: int) -> float:
    """Seconds per step: ``steps`` steps carried through one jitted loop, best of ``repeats``."""
    fixed = {name: value for name, value in data.items() if name not in ("kernel", "momentum")}

    @jax.jit
    def run(kernel, momentum, fixed):
        def body(_, carry):
            kernel, momentum, total = carry
            kernel, momentum, product = step(kernel, momentum, **fixed)
            return kernel, momentum, total + product[0, 0, 0]  # keeps the product alive

        return jax.lax.fori_loop(0, steps, body, (kernel, momentum, jnp.float32(0.0)))

    jax.block_until_ready(run(data["kernel"], data["momentum"], fixed))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run(data["kernel"], data["momentum"], fixed))
        best = min(best, time.perf_counter() - started)
    return best / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=320)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--idle-fraction", type=float, default=0.0,
                        help="share of tiles that do not train (stopped heads, padding)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    on_gpu = jax.devices()[0].platform == "gpu"
    data = operands(args.tiles, args.rows, args.batch, args.hidden, args.idle_fraction)
    bandwidth = memory_bandwidth_gbs()
    weight_bytes = args.tiles * args.rows * args.hidden * 4
    result = {"benchmark": "fused_sgd_step", **environment(), "compiled": on_gpu,
              "shapes": {"tiles": args.tiles, "rows": args.rows, "batch": args.batch, "hidden": args.hidden,
                         "idle_fraction": args.idle_fraction},
              "memory_bandwidth_gbs": bandwidth, "bytes_counted_per_step": 4 * weight_bytes,
              "defaults": {"block": fused_sgd.block_hidden(args.hidden), "num_warps": fused_sgd.NUM_WARPS,
                           "num_stages": fused_sgd.NUM_STAGES},
              "rows": []}
    # Compiled by Triton on a GPU, Pallas' interpreter elsewhere (TrainingPlan.interpret_kernels).
    hyper = dict(learning_rate=LEARNING_RATE, decay=DECAY, nesterov=True, interpret=not on_gpu)
    print(f"{args.tiles} tiles of {args.rows} x {args.hidden}, batch {args.batch}; "
          f"stream bandwidth {bandwidth:.0f} GB/s; {'compiled' if on_gpu else 'interpreted'}", flush=True)

    combinations = [{"block": block, "num_warps": warps, "num_stages": stages}
                    for block, warps, stages in itertools.product(args.blocks, args.warps, args.stages)
                    if args.hidden % block == 0]
    if not on_gpu:  # the interpreter ignores Triton's settings: one is enough
        combinations = combinations[:1]
    settings = [("xla", {})] + [("fused", setting) for setting in combinations]
    kernels = {"fused": fused_sgd.sgd_step}
    for name, setting in settings:
        step = xla_step if name == "xla" else (
            lambda kernel, momentum, setting=setting, kernel_fn=kernels[name], **rest: kernel_fn(
                kernel, momentum, **rest, **hyper, **setting))
        row = {"variant": name, **setting}
        try:
            seconds = time_steps(step, data, args.steps, args.repeats)
            row.update(microseconds_per_step=seconds * 1e6,
                       counted_gbs=4 * weight_bytes / seconds / 1e9,
                       fraction_of_stream_bandwidth=4 * weight_bytes / seconds / 1e9 / bandwidth)
            print(f"{name:5} {setting}: {seconds * 1e6:9.1f} us per step, "
                  f"{row['fraction_of_stream_bandwidth']:.2f} of the stream bandwidth", flush=True)
        except Exception as error:  # a setting Triton cannot compile, e.g. out of shared memory
            row["error"] = f"{type(error).__name__}: {error}"[:1000]
            print(f"{name:5} {setting}: failed: {row['error'][:200]}", flush=True)
        result["rows"].append(row)
        save(args.out, result)
    for name in kernels:
        timed = [row for row in result["rows"] if row["variant"] == name and "microseconds_per_step" in row]
        if timed:
            result["fastest" if name == "fused" else f"fastest_{name}"] = min(
                timed, key=lambda row: row["microseconds_per_step"])
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
