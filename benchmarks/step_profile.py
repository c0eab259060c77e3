"""Where a training step's time goes: a device trace of one search generation, summarised.

The authors' budget trains each generation's 30-34 heads as one chunk. For P
heads with the authors' initial masks (mixed widths) on RPS-shaped features,
the paper's protocol for ``--epochs`` epochs, in each variant in turn, each an
``EngineConfig`` (``VARIANTS``; applied over $EVOJAX_PRUNE_BENCH_ENGINE's settings):

  * ``packed, fused SGD kernel``: the engine's defaults, for a chunk of
    several heads on a GPU: kept rows packed in tiles (``plan.chunk_layouts``),
    the first layer trained by ``fused_sgd.sgd_step`` where Triton compiles the
    shapes (``step`` auto; on a CPU the kernel does not apply and this is the
    next variant);
  * ``packed, XLA's SGD``: the same tiles, the step left to XLA (``step`` xla);
  * ``packed, fused SGD kernel, command buffers on``: compiled with XLA's CUDA
    graphs ("command buffers", ``command_buffers`` true), which the engine
    turns off for chunks of several heads (they failed to instantiate on an
    H200). Its error, if any, is recorded rather than raised;
  * ``packed, fused SGD kernel, tiles summed by XLA's scatter`` and ``... by
    gathering``: how each head sums its tiles' forward products
    (``tile_sum``; the engine gathers on a GPU, where the scatter's atomic adds
    have no fixed order). The scatter failed for packed chunks of 64 heads on
    an H100 (``--population 64 --chunk-size 64`` measures whether such chunks
    pay with the gather).

(Padding every head of a chunk to its widest head, the layout before packing,
was measured slower long ago and left the benchmark. The kernel by head, the
fused output layer and deferred windows, never measured on a GPU, left the
package; the tag ``pre-variant-removal`` holds them.)

For each: the engine settings and the plan they resolved to
(``trainer.training_plan``), the wall time of a compiled call, the time per
minibatch step, the heads' final losses (the variants must agree), and the
operations of a ``jax.profiler`` trace of that call summed by name (the
device's kernels on an accelerator, XLA's thunks on a CPU), the largest
first. The trace is read from its Perfetto JSON, so nothing beyond JAX is
needed to read it.

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
import gzip
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import environment, paper_budget, plan_record, rps_shaped_features, with_engine

from evojax_prune.io import atomic
from evojax_prune.search.strategy import MultiObjective
from evojax_prune.train import trainer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "step_profile.json"


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


def profile_variant(name, key, masks, features, config, plan, top) -> dict:
    """Times and traces one variant, trained with ``config`` (its engine section set) as ``plan`` says."""

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
    chunks = -(-plan["population_per_device"] // plan["chunk_size"])
    steps = chunks * config.train.max_epochs * -(-len(features.y_train) // config.train.batch_size)
    result = {"layout": name, "engine": VARIANTS[name], "plan": plan, "seconds": seconds,
              "first_call_seconds": first, "final_loss": np.asarray(trained.final_loss).tolist(),
              "sequential_steps": steps, "microseconds_per_step": seconds / steps * 1e6, "trace": summary}
    print(f"{name}: {seconds:.3f} s, {result['microseconds_per_step']:.0f} us per step "
          f"(chunks of {plan['chunk_size']}, step {plan['step']}, tiles summed by {plan['tile_sum']}; "
          f"{summary['source']} busy {summary['busy_us'] / 1e3:.1f} ms in the trace)")
    for row in summary["operations"][:10]:
        share = f"{row['share']:6.1%}"
        print(f"  {row['total_us'] / 1e3:9.2f} ms  x{row['count']:<6} {share}  {row['name'][:80]}")
    return result


# name: the variant's EngineConfig fields (over $EVOJAX_PRUNE_BENCH_ENGINE's and --chunk-size).
VARIANTS = {
    "packed, fused SGD kernel": {},
    "packed, XLA's SGD": {"step": "xla"},
    "packed, fused SGD kernel, command buffers on": {"command_buffers": True},
    "packed, fused SGD kernel, tiles summed by XLA's scatter": {"tile_sum": "scatter"},
    "packed, fused SGD kernel, tiles summed by gathering": {"tile_sum": "gather"},
}


# The variants whose engine settings a user's run could have (deterministic: XLA's scatter
# is left out); gpu.sh runs the suite with the fastest one's settings.
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
    return {"variant": best["layout"], "settings": dict(VARIANTS[best["layout"]]),
            "microseconds_per_step": best["microseconds_per_step"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="EngineConfig.chunk_size, heads per chunk (default: auto, 1 on a CPU)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="which variants, in this order (default: all)")
    parser.add_argument("--top", type=int, default=25, help="operations kept per layout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = rps_shaped_features()
    config = paper_budget().replace(train={"max_epochs": args.epochs, "patience": args.epochs + 1})
    chunk_size = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}
    key = jax.random.PRNGKey(0)
    search = config.replace(search={"population_size": args.population}).search
    masks = np.asarray(MultiObjective(search, features.num_features).initial_population(key))
    result = {"benchmark": "step_profile", **environment(), "population": args.population,
              "epochs": args.epochs, "chunk_size": args.chunk_size,
              "mean_kept_fraction": float(masks.mean()), "layouts": []}
    for name in args.variants:
        # Each variant's plan is a static argument of the trainer's jitted program: its own trace.
        variant_config = with_engine(config, {**chunk_size, **VARIANTS[name]})
        plan = None
        try:
            plan = plan_record(variant_config, len(masks), features.num_features, features.num_classes)
            row = profile_variant(name, key, masks, features, variant_config, plan, args.top)
        except Exception as error:  # e.g. RESOURCE_EXHAUSTED instantiating CUDA graphs
            row = {"layout": name, "engine": VARIANTS[name], "plan": plan,
                   "error": f"{type(error).__name__}: {error}"[:2000]}
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
