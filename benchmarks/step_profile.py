"""Where a training step's time goes: a device trace of one search generation, summarised.

The authors' budget trains each generation's 30-34 heads as one chunk. For P
heads with the authors' initial masks (mixed widths) on RPS-shaped features,
the paper's protocol for ``--epochs`` epochs, in each variant in turn:

  * ``packed, fused SGD kernel``: the trainer's default for a chunk of
    several heads on a GPU: kept rows packed in tiles (``trainer.chunk_layouts``),
    the first layer trained by ``fused_sgd.sgd_step`` (on a CPU the kernel
    does not apply and this is the next variant);
  * ``packed, XLA's SGD``: the same tiles, the step left to XLA
    (``TrainConfig.fused_update=False``);
  * ``padded, XLA's SGD``: every head padded to the capacity of the widest
    head of the chunk (the layout before packing);
  * ``packed, fused SGD kernel, command buffers on``: compiled with XLA's CUDA
    graphs ("command buffers"), which the trainer turns off for chunks of
    several heads (``trainer._TRAINING_COMPILER_OPTIONS``: they failed to
    instantiate on an H200). Its error, if any, is recorded rather than raised;
  * ``packed, fused SGD kernel, tiles summed by XLA's scatter`` and ``... by
    gathering``: how each head sums its tiles' forward products
    (``trainer.TILE_SUM``; the trainer gathers on a GPU, where the scatter's
    atomic adds have no fixed order). The scatter failed for packed chunks of
    64 heads on an H100 (``--population 64 --chunk-size 64`` measures whether
    such chunks pay with the gather);

(The kernel by head, the fused output layer and deferred windows, never measured
on a GPU, left the package; the tag ``pre-variant-removal`` holds them.)

For each: the wall time of a compiled call, the time per minibatch step, the
heads' final losses (the variants must agree), and the operations of a
``jax.profiler`` trace of that call summed by name (the device's kernels on an
accelerator, XLA's thunks on a CPU), the largest first. The trace is read from
its Perfetto JSON, so nothing beyond JAX is needed to read it.

    python benchmarks/step_profile.py --population 32 --epochs 3 --out /tmp/step.json

On an H100 (2026-11-26, 32 heads, T = 320 tiles) XLA's step took 327 us, 88%
of it busy on the device: its optimizer fusion 49%, the two first-layer
products 15% each. The fused kernel's step took 259 us (the kernel 149 us of
it), the losses within 1e-4 of XLA's; with command buffers on, 263 us.

Writes JSON; prints a short table per variant.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, rps_shaped_features, trainer_replaced

from evojax_prune import atomic, trainer
from evojax_prune import config as cfg
from evojax_prune.strategy import MultiObjective

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "step_profile.json"


# The trainer's own, kept here: profile_layout swaps trainer.chunk_layouts for a variant's.
TRAINER_CHUNK_LAYOUTS = trainer.chunk_layouts


def padded_layouts(num_features: int, chunk_size: int, gather: bool) -> tuple[trainer.ChunkLayout, ...]:
    """The layouts before packing: one tile per head, at the chunk's widest capacity.

    Chunks of one head are the trainer's own layouts (its finer ladder of capacities).
    """
    if chunk_size == 1:
        return TRAINER_CHUNK_LAYOUTS(num_features, 1, gather)
    capacities = trainer.capacity_levels(num_features) if gather else (num_features,)
    return tuple(trainer.ChunkLayout(capacity, chunk_size, per_head=True) for capacity in capacities)


def summarise_trace(trace_dir: Path, top: int) -> dict:
    """Sums the complete events of a Perfetto trace by (process, name); device processes first."""
    trace_file = next(trace_dir.rglob("perfetto_trace.json.gz"))
    events = json.load(gzip.open(trace_file))["traceEvents"]
    processes = {event["pid"]: event["args"]["name"] for event in events
                 if event.get("ph") == "M" and event.get("name") == "process_name"}
    busy = collections.defaultdict(float)
    count = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            where = processes.get(event["pid"], str(event["pid"]))
            busy[(where, event["name"])] += event.get("dur", 0.0)
            count[(where, event["name"])] += 1
    device = [key for key in busy if "/device:" in key[0]]
    # On a CPU there is no device process: XLA's own operations on the host, without the
    # Python frames ("$file:line") and the executor's wrappers around them.
    wrappers = ("$", "ThunkExecutor", "PjitFunction", "PjRt", "Allocate")
    chosen = device or [key for key in busy
                        if "/host:" in key[0] and not key[1].startswith(wrappers)]
    total = sum(busy[key] for key in chosen)
    rows = sorted(chosen, key=lambda key: -busy[key])[:top]
    return {
        "source": "device" if device else "host",
        "busy_us": total,
        "operations": [
            {"where": where, "name": name, "total_us": busy[(where, name)], "count": count[(where, name)],
             "share": busy[(where, name)] / total if total else None}
            for where, name in rows
        ],
    }


def trainer_program(command_buffers: bool = False):
    """A fresh jit of the trainer's program, with or without XLA's command buffers.

    Traced anew (JAX caches a function's trace by its identity, whatever jit
    wraps it, so the partial is a new function): it sees ``trainer.TILE_SUM``
    as it is now.
    """
    options = {} if command_buffers else trainer._TRAINING_COMPILER_OPTIONS
    return jax.jit(functools.partial(trainer._train_population), compiler_options=options,
                   static_argnames=trainer._STATIC_ARGUMENTS)


def profile_layout(name, layouts_fn, key, masks, features, config, top, program=None,
                   traced_settings=None) -> dict:
    """Times and traces one variant; ``traced_settings``: trainer globals read at trace time."""
    traced_settings = traced_settings or {}
    replacements = {"chunk_layouts": layouts_fn, **traced_settings}
    if program:
        replacements["_training_program"] = lambda chunk_size: program
    with trainer_replaced(**replacements):
        def train():
            return jax.block_until_ready(trainer.train_population(
                key, masks, features.x_train, features.y_train, config, num_classes=features.num_classes))

        started = time.perf_counter()
        train()
        first = time.perf_counter() - started
        started = time.perf_counter()
        trained = train()
        seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as scratch:
            with jax.profiler.trace(scratch, create_perfetto_trace=True):
                train()
            summary = summarise_trace(Path(scratch), top)
    population = len(masks)
    chunk = trainer.choose_chunk_size(population, features.num_features, features.num_classes,
                                      config.head.hidden, config.train)
    steps = -(-population // chunk) * config.train.max_epochs * -(-len(features.y_train)
                                                                    // config.train.batch_size)
    fused = trainer.fused_update_applies(
        config.train, layouts_fn(features.num_features, chunk, True)[0], config.head.hidden)
    result = {"layout": name, "fused_update": fused,
              "tile_sum": traced_settings.get("TILE_SUM") or trainer.tile_sum_method(),
              "chunk_size": chunk, "seconds": seconds,
              "first_call_seconds": first, "final_loss": np.asarray(trained.final_loss).tolist(),
              "sequential_steps": steps, "microseconds_per_step": seconds / steps * 1e6, "trace": summary}
    print(f"{name}: {seconds:.3f} s, {result['microseconds_per_step']:.0f} us per step "
          f"(chunks of {chunk}; {summary['source']} busy {summary['busy_us'] / 1e3:.1f} ms in the trace)")
    for row in summary["operations"][:10]:
        share = f"{row['share']:6.1%}"
        print(f"  {row['total_us'] / 1e3:9.2f} ms  x{row['count']:<6} {share}  {row['name'][:80]}")
    return result


# name: (layouts, TrainConfig.fused_update, command buffers on, trainer globals read when traced)
PACKED = TRAINER_CHUNK_LAYOUTS
VARIANTS = {
    "packed, fused SGD kernel": (PACKED, None, False, {}),
    "packed, XLA's SGD": (PACKED, False, False, {}),
    "padded, XLA's SGD": (padded_layouts, False, False, {}),
    "packed, fused SGD kernel, command buffers on": (PACKED, None, True, {}),
    "packed, fused SGD kernel, tiles summed by XLA's scatter": (PACKED, None, False, {"TILE_SUM": "scatter"}),
    "packed, fused SGD kernel, tiles summed by gathering": (PACKED, None, False, {"TILE_SUM": "gather"}),
}


# The variants that differ only in trainer settings a user's run could have (deterministic:
# XLA's scatter is left out); gpu.sh runs the suite with the fastest one's settings.
CANDIDATES = (
    "packed, fused SGD kernel",
    "packed, fused SGD kernel, tiles summed by gathering",
)


def fastest_settings(layouts: list[dict], tolerance: float = 1e-3) -> dict | None:
    """The fastest candidate variant that ran and agrees with the first: its name, settings and time."""
    agreeing = [row for row in layouts if row["layout"] in CANDIDATES and "error" not in row
                and row.get("largest_loss_difference_from_first", 0.0) <= tolerance]
    if not agreeing:
        return None
    best = min(agreeing, key=lambda row: row["microseconds_per_step"])
    return {"variant": best["layout"], "settings": VARIANTS[best["layout"]][3],
            "microseconds_per_step": best["microseconds_per_step"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="heads per chunk (default: the trainer's choice; 1 on a CPU)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="which variants, in this order (default: all)")
    parser.add_argument("--top", type=int, default=25, help="operations kept per layout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = rps_shaped_features()
    config = cfg.preset("paper").replace(
        train={"max_epochs": args.epochs, "patience": args.epochs + 1, "chunk_size": args.chunk_size}
    )
    key = jax.random.PRNGKey(0)
    search = config.replace(search={"population_size": args.population}).search
    masks = np.asarray(MultiObjective(search, features.num_features).initial_population(key))
    result = {"benchmark": "step_profile", **environment(), "population": args.population,
              "epochs": args.epochs, "mean_kept_fraction": float(masks.mean()), "layouts": []}
    for name in args.variants:
        layouts_fn, fused_update, command_buffers, traced_settings = VARIANTS[name]
        variant_config = config.replace(train={"fused_update": fused_update})
        # A fresh program where the variant changes what is traced or how it is compiled.
        program = trainer_program(command_buffers) if command_buffers or traced_settings else None
        try:
            row = profile_layout(name, layouts_fn, key, masks, features, variant_config, args.top, program,
                                 traced_settings)
        except Exception as error:  # e.g. RESOURCE_EXHAUSTED instantiating CUDA graphs
            row = {"layout": name, "error": f"{type(error).__name__}: {error}"[:2000]}
            print(f"{name}: failed: {row['error'][:300]}", flush=True)
        if "final_loss" in row and result["layouts"] and "final_loss" in result["layouts"][0]:
            row["largest_loss_difference_from_first"] = float(np.max(np.abs(
                np.subtract(row["final_loss"], result["layouts"][0]["final_loss"]))))
            print(f"  final losses differ from the first variant's by at most "
                  f"{row['largest_loss_difference_from_first']:.2e}")
        result["layouts"].append(row)
        result["fastest"] = fastest_settings(result["layouts"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
