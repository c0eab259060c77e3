"""How fast are heads trained: the population trainer against one head at a time and Keras.

Data shaped like the RPS data set's features (N = 2520, D = 2048, C = 3,
synthetic values: non-negative like pooled ResNet-50 features, labels from a
linear rule), the paper's head (H = 512) and training protocol (SGD 1e-3,
momentum 0.9, Nesterov, batch 32), a fixed number of epochs (early stopping off:
patience > epochs). Masks are drawn with the authors' initialisation: each draws
p ~ U(0, 1) and gets exactly round(p * D) ones at random positions.

Side by side, in one run, for each population size P:

  (a) ``train_population`` on all P masks in one call; timed after a first
      call that compiles (its extra time is reported as ``compile_s``);
  (b) the same trainer called once per head (P calls of a population of 1;
      compiled once beforehand, not counted);
  (c) the authors' approach: one Keras 3 model per head (JAX backend): masked
      input -> Dense(512, relu, use_bias=False) -> Dense(3, softmax), SGD(1e-3,
      momentum 0.9, nesterov), categorical cross-entropy, ``model.fit`` with
      batch 32; every model's build and compile is counted (``total_s``),
      and the time of its epochs after the first is reported on its own
      (``steady_s``) so that the per-model overhead is visible. Keras trains
      one model after another, so its rate does not depend on P: it is
      measured once, on ``--keras-heads`` heads drawn like the populations'.

Roofline: the float32 matmul peak and the memory bandwidth (a streaming pass
over an array far larger than the caches) are both measured in the same run;
a run's bound is max(FLOPs / peak, bytes / bandwidth), with the FLOPs of the
kept features and the fewest bytes the protocol must move (``bytes_per_epoch``:
each SGD step reads and writes the kernel and its momentum), and the fraction
achieved is bound / measured time. At batch 32 a step does 8 FLOPs per byte
of weights, so a CPU is near its ridge and a GPU is memory-bound. Beside it,
``step_products_gflops``: the step's two first-layer products alone at the
chunk's shapes, the ceiling that the matrix-product library sets at batch 32
(below the large-product peak the roofline uses, which stays the reference).

Reported: head-epochs per second, the ratios (a)/(b) and (a)/(c), achieved
GFLOP/s against a float32 matmul peak measured in the same run (dense FLOPs
count every feature as Keras computes them; kept FLOPs count only the kept
ones, the work the gathered trainer does), resident memory (sampled from
/proc every 5 ms: before, at the peak of (a)'s first call, which includes XLA's
compilation, and the growth during the timed runs; ``ru_maxrss`` for the whole
process) and JAX device memory statistics when the device has them.

    python benchmarks/trainer_throughput.py                           # P = 1, 4, 16, 64; 2 epochs
    python benchmarks/trainer_throughput.py --populations 1 8 --epochs 3 --out /tmp/t.json
    python benchmarks/trainer_throughput.py --no-keras --gather off   # the dense formulation

The trainer runs with the engine's defaults, $EVOJAX_PRUNE_BENCH_ENGINE's settings
over them, and ``--gather`` / ``--chunk-size`` over those; each population's
row records the plan it trained with (``trainer.training_plan``).

Writes JSON to benchmarks/results/trainer_throughput_<platform>.json (``_cpu`` here)
unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
from common import PeakMemory, environment, plan_record, with_engine

from evojax_prune.config import HeadConfig, RunConfig, TrainConfig
from evojax_prune.io import atomic
from evojax_prune.train import trainer

RESULTS = Path(__file__).resolve().parent / "results"
NUM_SAMPLES, NUM_FEATURES, HIDDEN, NUM_CLASSES = 2520, 2048, 512, 3


def device_memory() -> dict | None:
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {key: stats[key] for key in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if key in stats}


def synthetic_features(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 non-negative features and (N,) int labels from a linear rule."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(NUM_SAMPLES, NUM_FEATURES)), 0.0).astype(np.float32)
    direction = rng.normal(size=(NUM_FEATURES, NUM_CLASSES)).astype(np.float32)
    y = np.argmax(x @ direction, axis=1).astype(np.int32)
    return x, y


def author_masks(rng: np.random.Generator, population: int) -> np.ndarray:
    """The authors' initialisation: p ~ U(0, 1), exactly round(p * D) ones at random positions."""
    masks = np.zeros((population, NUM_FEATURES), bool)
    for row in masks:
        row[rng.choice(NUM_FEATURES, round(rng.uniform() * NUM_FEATURES), replace=False)] = True
    return masks


def matmul_peak_gflops(size: int | None = None, repeats: int = 10) -> float:
    """float32 (size x size) @ (size x size) with JAX on the default device, best of ``repeats``.

    JAX's default matmul precision, the one the trainer runs at (on recent
    NVIDIA GPUs that may be TF32 for float32 inputs). ``size`` defaults to 2048
    on a CPU and 8192 on an accelerator, large enough to fill it.
    """
    size = size or (2048 if jax.devices()[0].platform == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(lambda u, v: u @ v)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@functools.cache
def memory_bandwidth_gbs(megabytes: float | None = None, repeats: int = 5) -> float:
    """Memory bandwidth: passes of ``v * s + 1`` over ``megabytes`` of float32, best of ``repeats``.

    Counts bytes read plus bytes written (2x the array per pass). The passes
    run in one jitted ``fori_loop`` (about 4 GB of traffic in all), so that the
    time of one dispatch does not count: measured with one dispatch per pass,
    a 300 MB pass on an H100 read as 993 GB/s instead of about 2,500. The
    default size (256 MB on a CPU, 2 GB on an accelerator) is far larger than
    any cache: the DRAM / HBM rate. At a working set's own size it is the rate
    of the memory level that working set lives in (4 MB on a CPU: a cache).
    """
    megabytes = megabytes or (256 if jax.devices()[0].platform == "cpu" else 2048)
    a = jax.random.uniform(jax.random.key(2), (max(1024, int(megabytes * 2**20) // 4),), jnp.float32)
    passes = int(min(4096, max(4, 4e9 // (2 * a.nbytes))))

    @jax.jit
    def stream(u, s):
        return jax.lax.fori_loop(0, passes, lambda _, v: v * s + 1.0, u)

    stream(a, 0.5).block_until_ready()
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        stream(a, 0.5 + repeat * 1e-3).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes * passes / best / 1e9


def step_products_gflops(chunk_size: int, kept_features: int, batch_size: int, transposed: bool,
                         steps: int = 50) -> float:
    """GFLOP/s of a training step's two first-layer products alone, at the step's shapes.

    The forward product (K, B, c) x (K, c, H) and the kernel gradient
    (K, B, c)^T x (K, B, H) of a chunk of K heads keeping c features, with the
    kernel stored as the trainer stores it ((K, H, c) where ``transposed``:
    the plan's ``kernel_transposed``), looped ``steps`` times in one jitted
    ``fori_loop`` with nothing else: no gather, no optimizer, no output layer.
    What the matrix-product library reaches at the trainer's shapes (batch 32),
    a ceiling for the trainer below the large-product peak; best of 3.
    """
    forward, gradient = ("kbc,khc->kbh", "kbh,kbc->khc") if transposed else ("kbc,kch->kbh", "kbc,kbh->kch")
    keys = jax.random.split(jax.random.key(3), 3)
    inputs = jax.random.uniform(keys[0], (chunk_size, batch_size, kept_features), jnp.float32)
    kernel_shape = (HIDDEN, kept_features) if transposed else (kept_features, HIDDEN)
    kernel = jax.random.normal(keys[1], (chunk_size, *kernel_shape), jnp.float32)
    d_pre = jax.random.normal(keys[2], (chunk_size, batch_size, HIDDEN), jnp.float32)

    @jax.jit
    def products(inputs, kernel, d_pre):
        def step(i, carry):
            scaled = inputs * (1.0 + i * 1e-7)  # a new input every step: nothing to hoist
            gradient_operands = (d_pre, scaled) if transposed else (scaled, d_pre)
            return jnp.einsum(forward, scaled, kernel), jnp.einsum(gradient, *gradient_operands)
        return jax.lax.fori_loop(0, steps, step, (d_pre, kernel))

    jax.block_until_ready(products(inputs, kernel, d_pre))
    best = min(_timed(lambda: jax.block_until_ready(products(inputs, kernel, d_pre)))[1] for _ in range(3))
    return 4 * chunk_size * batch_size * kept_features * HIDDEN * steps / best / 1e9


def flops_per_epoch(kept_features: np.ndarray) -> np.ndarray:
    """Training FLOPs per head-epoch: first layer forward and kernel gradient, output layer."""
    first_layer = 4 * NUM_SAMPLES * kept_features * HIDDEN
    output_layer = 6 * NUM_SAMPLES * HIDDEN * NUM_CLASSES
    return first_layer + output_layer


def steps_per_epoch(batch_size: int) -> int:
    return -(-NUM_SAMPLES // batch_size)


def bytes_per_epoch(kept_features: np.ndarray, batch_size: int) -> np.ndarray:
    """Fewest bytes one head-epoch moves through device memory, per head (float32).

    Every minibatch step reads the first kernel and its momentum and writes both
    back (4 * k * H floats; the output layer's 4 * (H * C + C) too); the kept
    features are read once per epoch (N * k floats). This assumes the weights
    and optimizer state do not stay in cache between steps, which holds once a
    chunk's state (``working_set_bytes``) outgrows the caches; where it does not
    (one head per chunk on a CPU), the bandwidth to use is the cache's, which
    ``memory_bandwidth_gbs`` measures when given the working set's size.
    """
    weights_per_step = 4 * (kept_features * HIDDEN + HIDDEN * NUM_CLASSES + NUM_CLASSES)
    return 4 * (steps_per_epoch(batch_size) * weights_per_step + NUM_SAMPLES * kept_features)


def working_set_bytes(kept_features: np.ndarray, chunk_size: int) -> float:
    """Bytes of first-layer weights and momentum that one step of a chunk streams through."""
    return float(chunk_size * 2 * 4 * HIDDEN * np.mean(kept_features))


def roofline(flops: float, bytes_moved: float, peak_gflops: float, bandwidth_gbs: float,
             seconds: float) -> dict:
    """The roofline bound of one run and the fraction of it achieved (bound / measured time)."""
    compute_s, memory_s = flops / (peak_gflops * 1e9), bytes_moved / (bandwidth_gbs * 1e9)
    bound = max(compute_s, memory_s)
    return {
        "compute_bound_s": compute_s,
        "memory_bound_s": memory_s,
        "bound_s": bound,
        "binding": "compute" if compute_s >= memory_s else "memory",
        "arithmetic_intensity_flop_per_byte": flops / bytes_moved,
        "fraction_of_roofline": bound / seconds,
    }


def _timed(fn):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - start


def bench_population_and_one_at_a_time(
    key, masks, x, y, config, repeats, one_at_a_time: int | None
) -> tuple:
    """(a) all masks in one call, and (b) P calls of a population of 1.

    (a)'s first call compiles and is reported on its own; (b)'s single shape is
    compiled before the clock starts. (b) trains the first ``one_at_a_time``
    heads (all of them if ``None``, none if 0): the masks are in random order,
    so a prefix is a fair sample, and its rate per head-epoch is what (b) would
    reach on all P. With ``repeats`` > 1 the two alternate and
    the fastest time of each is kept, which damps the noise of a shared machine.
    """

    def population():
        return jax.block_until_ready(trainer.train_population(key, masks, x, y, config))

    single_masks = masks if one_at_a_time is None else masks[:one_at_a_time]
    run_single = len(single_masks) > 0

    def each_head():
        for mask in single_masks:
            jax.block_until_ready(trainer.train_population(key, mask[None], x, y, config))

    with PeakMemory() as memory_a:
        rss_before = memory_a.start_bytes
        start = time.perf_counter()
        trained = population()
        first_s = time.perf_counter() - start
    assert int(np.min(trained.epochs)) == config.train.max_epochs
    final_loss_mean = float(np.mean(trained.final_loss))
    del trained  # so that the timed calls below do not hold two results at once
    if run_single:
        jax.block_until_ready(trainer.train_population(key, masks[:1], x, y, config))
    seconds_a, seconds_b = [], []
    growth_a, growth_b = 0, 0  # resident memory added while a timed run ran (compilation excluded)
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            population()
            seconds_a.append(time.perf_counter() - start)
        growth_a = max(growth_a, memory.peak_bytes - memory.start_bytes)
        if run_single:
            with PeakMemory() as memory:
                start = time.perf_counter()
                each_head()
                seconds_b.append(time.perf_counter() - start)
            growth_b = max(growth_b, memory.peak_bytes - memory.start_bytes)
    result_a = {
        "seconds": min(seconds_a),
        "all_seconds": seconds_a,
        "compile_s": max(first_s - min(seconds_a), 0.0),
        "first_call_s": first_s,
        "rss_before_bytes": rss_before,
        "peak_rss_first_call_bytes": memory_a.peak_bytes,
        "rss_growth_timed_run_bytes": growth_a,
        "final_loss_mean": final_loss_mean,
    }
    result_b = (
        {
            "heads": len(single_masks),
            "plan": plan_record(config, 1, NUM_FEATURES, NUM_CLASSES),
            "seconds": min(seconds_b),
            "all_seconds": seconds_b,
            "rss_growth_timed_run_bytes": growth_b,
        }
        if run_single
        else None
    )
    return result_a, result_b


def bench_keras(masks, x, y, epochs: int, seed: int) -> dict:
    """(c): one Keras model per head, as the authors trained them."""
    import keras

    class InputMask(keras.layers.Layer):
        """Multiplies the input by a fixed 0/1 mask (removes every connection of a pruned feature)."""

        def __init__(self, mask, **kwargs):
            super().__init__(**kwargs)
            self.mask_values = np.asarray(mask, np.float32)

        def build(self, input_shape):
            self.mask = self.add_weight(
                shape=self.mask_values.shape, initializer="zeros", trainable=False, name="mask"
            )
            self.mask.assign(self.mask_values)

        def call(self, inputs):
            return inputs * self.mask

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.epoch_seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self.started)

    one_hot = keras.utils.to_categorical(y, NUM_CLASSES)
    keras.utils.set_random_seed(seed)
    # Library start-up (lazy imports, backend set-up) once, off the clock: what is
    # counted below is what every new model costs.
    warm_up = keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    warm_up.compile(optimizer="sgd", loss="categorical_crossentropy")
    warm_up.fit(np.zeros((32, 4), np.float32), one_hot[:32], batch_size=32, epochs=1, verbose=0)
    total_s, steady_s, losses = 0.0, 0.0, []
    with PeakMemory() as memory:
        for mask in masks:
            start = time.perf_counter()
            keras.backend.clear_session()
            model = keras.Sequential(
                [
                    keras.Input((NUM_FEATURES,)),
                    InputMask(mask),
                    keras.layers.Dense(HIDDEN, activation="relu", use_bias=False),
                    keras.layers.Dense(NUM_CLASSES, activation="softmax"),
                ]
            )
            model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, nesterov=True),
                loss="categorical_crossentropy",
            )
            clock = EpochClock()
            history = model.fit(x, one_hot, batch_size=32, epochs=epochs, verbose=0, callbacks=[clock])
            total_s += time.perf_counter() - start
            steady_s += sum(clock.epoch_seconds[1:])
            losses.append(history.history["loss"][-1])
    return {
        "heads": len(masks),
        "seconds": total_s,
        "steady_s": steady_s,
        "steady_epochs": len(masks) * (epochs - 1),
        "peak_rss_bytes": memory.peak_bytes,
        "rss_before_bytes": memory.start_bytes,
        "final_loss_mean": float(np.mean(losses)),
    }


def write_result(out: Path, args, config, peak, bandwidth, rows, keras_run) -> dict:
    """The JSON, written after every population and again at the end (a run cut short keeps its rows)."""
    result = {
        "benchmark": "trainer_throughput",
        **environment(("keras",)),
        "setup": {
            "num_samples": NUM_SAMPLES,
            "num_features": NUM_FEATURES,
            "hidden": HIDDEN,
            "num_classes": NUM_CLASSES,
            "epochs": args.epochs,
            "repeats": args.repeats or "3 for P = 1, 2 up to P = 4, else 1",
            "batch_size": config.train.batch_size,
            "optimizer": "sgd(1e-3, momentum=0.9, nesterov=True)",
            "gather_features": args.gather,
            "chunk_size": args.chunk_size,
            "keras_heads": None if args.no_keras else args.keras_heads,
            "masks": "authors' initialisation: p ~ U(0,1), round(p * D) ones",
        },
        "matmul_peak_gflops": peak,
        "memory_bandwidth_gbs": bandwidth,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_memory": device_memory(),
        "keras": keras_run,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out, result)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="alternate (a) and (b) this often, keep the best (default: 3 for P = 1, 2 up to 4, else 1)",
    )
    parser.add_argument("--keras-heads", type=int, default=8, help="heads Keras trains (once, for every P)")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-one-at-a-time", action="store_true")
    parser.add_argument(
        "--one-at-a-time-heads",
        type=int,
        default=None,
        help="(b) trains only the first this many heads of each population (default: all)",
    )
    parser.add_argument("--gather", choices=("auto", "on", "off"), default="auto",
                        help="EngineConfig.gather_features (default: the engine's)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="EngineConfig.chunk_size (default: the engine's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/trainer_throughput_<backend>.json"
    )
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"trainer_throughput_{jax.devices()[0].platform}.json"

    config = RunConfig(
        head=HeadConfig(hidden=HIDDEN), train=TrainConfig(max_epochs=args.epochs, patience=args.epochs + 1)
    )
    # The command line's engine settings over $EVOJAX_PRUNE_BENCH_ENGINE's.
    flags = {} if args.gather == "auto" else {"gather_features": args.gather == "on"}
    if args.chunk_size is not None:
        flags["chunk_size"] = args.chunk_size
    config = with_engine(config, flags)
    x_host, y_host = synthetic_features(args.seed)
    x, y = jnp.asarray(x_host), jnp.asarray(y_host)
    key = jax.random.key(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    peak = matmul_peak_gflops()
    bandwidth = memory_bandwidth_gbs()
    print(
        f"device {jax.devices()[0].device_kind}, float32 matmul peak {peak:.1f} GFLOP/s, "
        f"memory bandwidth {bandwidth:.1f} GB/s",
        flush=True,
    )

    rows = []
    for population in args.populations:
        masks = author_masks(rng, population)
        head_epochs = population * args.epochs
        kept = masks.sum(axis=1)
        dense_flops = float(flops_per_epoch(np.full(population, NUM_FEATURES)).sum()) * args.epochs
        kept_flops = float(flops_per_epoch(kept).sum()) * args.epochs
        plan = plan_record(config, population, NUM_FEATURES, NUM_CLASSES)
        row = {
            "population": population,
            "head_epochs": head_epochs,
            "mean_kept_fraction": float(kept.mean() / NUM_FEATURES),
            "load_average_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "plan": plan,
            "chunk_size": plan["chunk_size"],
        }
        # Small populations run for a second or so: repeat them to damp a shared machine's noise.
        repeats = args.repeats or (3 if population == 1 else 2 if population <= 4 else 1)
        row["repeats"] = repeats
        single_heads = 0 if args.no_one_at_a_time else args.one_at_a_time_heads
        population_run, single = bench_population_and_one_at_a_time(
            key, masks, x, y, config, repeats, single_heads
        )
        population_run["head_epochs_per_s"] = head_epochs / population_run["seconds"]
        population_run["dense_gflops"] = dense_flops / population_run["seconds"] / 1e9
        population_run["kept_gflops"] = kept_flops / population_run["seconds"] / 1e9
        population_run["dense_fraction_of_peak"] = population_run["dense_gflops"] / peak
        population_run["kept_fraction_of_peak"] = population_run["kept_gflops"] / peak
        # The ceiling the matrix-product library sets at this chunk's shapes (batch 32).
        mean_width = max(8, round(float(kept.mean()) / 8) * 8)
        row["step_products_gflops"] = step_products_gflops(
            row["chunk_size"], mean_width, config.train.batch_size, plan["kernel_transposed"]
        )
        row["step_products_fraction_of_peak"] = row["step_products_gflops"] / peak
        # The bandwidth of the memory level the chunk's weights live in (cache on a CPU's
        # one-head chunks, HBM for a GPU's chunks of tens of heads), and DRAM's for reference.
        working_set = working_set_bytes(kept, row["chunk_size"])
        row["working_set_bytes"] = working_set
        row["working_set_bandwidth_gbs"] = memory_bandwidth_gbs(working_set / 2**20)
        population_run["roofline"] = roofline(
            kept_flops,
            float(bytes_per_epoch(kept, config.train.batch_size).sum()) * args.epochs,
            peak,
            row["working_set_bandwidth_gbs"],
            population_run["seconds"],
        )
        population_run["roofline_at_dram_bandwidth"] = roofline(
            kept_flops,
            float(bytes_per_epoch(kept, config.train.batch_size).sum()) * args.epochs,
            peak,
            bandwidth,
            population_run["seconds"],
        )
        row["population_trainer"] = population_run
        line = (
            f"P={population:4d} (a) {population_run['head_epochs_per_s']:6.2f} head-epochs/s "
            f"(compile {population_run['compile_s']:.1f} s, {population_run['kept_gflops']:.1f} kept / "
            f"{population_run['dense_gflops']:.1f} dense GFLOP/s, "
            f"{population_run['roofline']['fraction_of_roofline']:.2f} of the "
            f"{population_run['roofline']['binding']}-bound roofline; the step's products alone "
            f"{row['step_products_gflops']:.1f} GFLOP/s)"
        )
        if single is not None:
            single["head_epochs_per_s"] = single["heads"] * args.epochs / single["seconds"]
            row["one_at_a_time"] = single
            row["ratio_a_over_b"] = population_run["head_epochs_per_s"] / single["head_epochs_per_s"]
            line += f" | (b) {single['head_epochs_per_s']:6.2f}, a/b {row['ratio_a_over_b']:.2f}"
        print(line, flush=True)
        rows.append(row)
        write_result(out, args, config, peak, bandwidth, rows, None)

    # Keras last, so that its libraries (and TensorFlow, which it imports when
    # installed) do not sit in the resident memory measured for (a) and (b).
    keras_run = None
    if not args.no_keras:
        # One Keras model per head, one after another: its rate does not depend on P,
        # so it is measured once, on heads drawn like the populations' masks.
        keras_masks = author_masks(np.random.default_rng(args.seed + 2), args.keras_heads)
        keras_run = bench_keras(keras_masks, x_host, y_host, args.epochs, args.seed)
        keras_run["mean_kept_fraction"] = float(keras_masks.mean())
        keras_run["head_epochs_per_s"] = keras_run["heads"] * args.epochs / keras_run["seconds"]
        keras_dense = float(flops_per_epoch(np.full(1, NUM_FEATURES))[0]) * keras_run["heads"] * args.epochs
        keras_run["dense_gflops"] = keras_dense / keras_run["seconds"] / 1e9
        if keras_run["steady_epochs"]:
            keras_run["steady_head_epochs_per_s"] = keras_run["steady_epochs"] / keras_run["steady_s"]
        print(
            f"(c) Keras, {keras_run['heads']} heads: {keras_run['head_epochs_per_s']:.2f} head-epochs/s with "
            f"per-model build/compile, {keras_run.get('steady_head_epochs_per_s', float('nan')):.2f} "
            "in epochs after the first",
            flush=True,
        )

        for row in rows:
            rate = row["population_trainer"]["head_epochs_per_s"]
            row["ratio_a_over_c"] = rate / keras_run["head_epochs_per_s"]
            line = f"P={row['population']:4d} a/c {row['ratio_a_over_c']:.2f}"
            if "steady_head_epochs_per_s" in keras_run:
                row["ratio_a_over_c_steady"] = rate / keras_run["steady_head_epochs_per_s"]
                line += f", against Keras' epochs after the first {row['ratio_a_over_c_steady']:.2f}"
            print(line, flush=True)

    result = write_result(out, args, config, peak, bandwidth, rows, keras_run)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
