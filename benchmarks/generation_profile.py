"""Where a generation's time goes, and the authors' whole run estimated.

Part 1, generation profile: on RPS-shaped features (``common.rps_shaped_features``:
N = 2,016 train, 504 validation, 372 + 372 OoD, D = 2048, H = 512, C = 3), for
each population size P, one generational step of the search exactly as
``run_search`` does it: NSGA-II ``ask`` (selection), ``train_population`` on
the P offspring (training), ``evaluate_population`` on validation + OoD
(scoring), ``tell`` (selection), and the host's bookkeeping (cache lookups,
the one transfer of metrics). Training runs a fixed number of epochs (early
stopping off) so that every P does the same work per head. Each phase is timed
after a first, compiling call. Reported: seconds per phase, heads per second,
peak host / device memory, the host memory the compiled generation itself grew
by (sampled every 5 ms), and the largest population that fits the device's
memory (``largest_population``; a GPU reports its memory limit, a CPU uses the
host memory available).

Part 2, the authors' whole run: population 30, 200 evaluations (30 initial +
85 steady-state generations of 2), their training protocol (SGD 1e-3,
momentum 0.9, Nesterov, batch 32, up to 600 epochs). Measured here on a
reduced epoch count and scaled linearly in epochs to the 600-epoch limit (an
upper bound: early stopping ends most heads sooner), in both the authors'
steady-state order (85 calls training 2 heads) and generational (the 200 heads
in 7 calls of 30), against their 19,851 s on a V100 for RPS.

Part 3, scaling over devices (``--devices`` / ``--simulated-devices``): the
same generation with the population split over n devices (``devices.py``),
for each n, at the ``--scaling-populations``. ``--devices 1 2 4 8`` uses the
real devices JAX sees (counts above what exists are skipped and listed);
``--simulated-devices 1 2 4`` re-runs this script once per n in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=n``: n CPU "devices"
that share the same cores, so the figures say how the sharded program behaves
and what it costs, not what n real devices would give. Rows carry
``"simulated"`` accordingly.

    python benchmarks/generation_profile.py                       # CPU sizes
    python benchmarks/generation_profile.py --populations 32 256 1024 --epochs 20 --paper-epochs 20
    python benchmarks/generation_profile.py --paper-search     # part 4: the authors' budget, run for real
    python benchmarks/generation_profile.py --scaling-only --simulated-devices 1 2 4   # CPU
    python benchmarks/generation_profile.py --scaling-only --devices 1 2 4 8 --scaling-populations 1024

Part 4 (``--paper-search``, meant for accelerators): the authors' budget run
for real, full protocol with early stopping, as one ``run_search``; see
``paper_search``.

Every part trains with $EVOJAX_PRUNE_BENCH_ENGINE's engine settings over the
preset's, and records the plans it trained with (``trainer.training_plan``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import (
    PeakMemory,
    environment,
    host_memory_available_bytes,
    paper_budget,
    peak_memory,
    plan_record,
    rps_shaped_features,
    with_engine,
)

from evojax_prune import config as cfg
from evojax_prune import head
from evojax_prune.io import atomic
from evojax_prune.score import evaluate
from evojax_prune.search.evaluator import MaskEvaluator
from evojax_prune.search.strategy import MultiObjective
from evojax_prune.train import memory, trainer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "generation_profile_cpu.json"
AUTHORS_RPS_SECONDS = 19_851.0


def _timed(function, *args):
    started = time.perf_counter()
    result = jax.block_until_ready(function(*args))
    return result, time.perf_counter() - started


def profile_generation(features, population: int, epochs: int, devices: int | None = None) -> dict:
    """One generation of ``population`` heads, on the first ``devices`` devices (None: the engine's)."""
    config = cfg.preset("default").replace(
        search={"population_size": population}, train={"max_epochs": epochs, "patience": epochs + 1}
    )
    config = with_engine(config, {} if devices is None else {"devices": devices})
    evolver = MultiObjective(config.search, features.num_features)
    key = jax.random.PRNGKey(0)
    evaluator = MaskEvaluator(features, config, key, max_batch=population)
    parents = evolver.initial_population(key)
    objectives = np.random.default_rng(0).random((population, 3))
    state = evolver.init(key, parents, objectives)
    x_val, y_val, ood = evaluator.x_val, evaluator.y_val, evaluator.ood_val

    def generation(generation_key):
        timings = {}
        (offspring, new_state), timings["ask"] = _timed(evolver.ask, generation_key, state)
        started = time.perf_counter()
        masks = evolver.masks(offspring)
        evaluator.cache.lookup(masks)  # the host's bookkeeping, as in the search
        timings["host"] = time.perf_counter() - started
        trained, timings["train"] = _timed(evaluator.train, masks)
        scores, timings["score"] = _timed(
            evaluate.evaluate_population, trained.params, masks, x_val, y_val, ood, config
        )
        started = time.perf_counter()
        fitness = np.asarray(jax.device_get(scores.objectives(config.ood.auroc)))
        timings["host"] += time.perf_counter() - started
        _, timings["tell"] = _timed(evolver.tell, generation_key, offspring, fitness, new_state)
        return timings

    first = generation(jax.random.PRNGKey(1))  # compiles
    with PeakMemory() as sampled:
        timings = generation(jax.random.PRNGKey(2))
    total = sum(timings.values())
    flops = 6.0 * features.x_train.shape[0] * epochs * population * (
        features.num_features * config.head.hidden + config.head.hidden * features.num_classes
    )
    # evaluator.train pads the masks to a bucket: max_batch = population, the population itself.
    training = plan_record(config, population, features.num_features, features.num_classes)
    return {
        "population": population,
        "epochs": epochs,
        "devices": evaluator.mesh.size,
        "seconds": {
            "training": timings["train"], "scoring": timings["score"],
            "selection": timings["ask"] + timings["tell"], "host": timings["host"], "total": total,
        },
        "first_call_seconds": sum(first.values()),
        "heads_per_second": population / total,
        "head_epochs_per_second": population * epochs / timings["train"],
        "dense_training_gflops": flops / timings["train"] / 1e9,
        "train_chunk_size": training["chunk_size"],
        "plan": training,
        # The process's peaks include every earlier, smaller population and XLA's compilations;
        # the growth during this population's compiled generation is its own working memory.
        "memory": {**peak_memory(), "host_rss_growth_bytes": sampled.peak_bytes - sampled.start_bytes},
    }


def largest_population(features) -> dict:
    """What bounds the population: one training chunk, one scoring chunk and every head's parameters.

    Training and scoring are chunked, so their temporaries are one chunk's
    (``memory.training_bytes`` per head of a training chunk, as many heads as
    the plan of a population too large for one chunk holds,
    ``memory.scoring_bytes`` per head of a scoring chunk); what grows with P
    is every head's trained parameters (D*H + H*C + C floats). The model's
    largest P is (limit - data - training chunk - scoring chunk) / parameters
    per head. An accelerator reports its limit (``memory_stats``); on a CPU
    the device's memory is the host's, and the limit is what the kernel says
    is available now (``MemAvailable``). ``run_all.py`` sets beside it the
    largest P implied by the memory growth measured between the profiled
    populations.
    """
    config = with_engine(cfg.preset("default"))
    hidden, classes = config.head.hidden, features.num_classes
    per_head = memory.training_bytes(features.num_features, classes, hidden, config.train)
    params_per_head = head.param_bytes(features.num_features, classes, hidden)
    chunk = trainer.training_plan(config, 1 << 20, features.num_features, classes).chunk_size
    rows = len(features.y_val) + len(features.ood_val)  # what each generation scores
    perturb = config.ood.epsilon > 0
    shapes = (rows, features.num_features, hidden, classes, perturb)
    scoring_chunk = evaluate.auto_chunk_size(*shapes, config.engine.memory_budget_mb)
    scoring_bytes = scoring_chunk * memory.scoring_bytes(*shapes)
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    source = "device memory limit"
    if limit is None and jax.devices()[0].platform == "cpu":
        limit, source = host_memory_available_bytes(), "host memory available"
    data = sum(array.nbytes for array in features.arrays().values())
    return {
        "bytes_per_training_head": per_head,
        "params_bytes_per_head": params_per_head,
        "training_chunk_size": chunk,
        "scoring_chunk_size": scoring_chunk,
        "scoring_chunk_bytes": scoring_bytes,
        "device_memory_limit_bytes": limit,
        "memory_limit_source": source if limit else None,
        "largest_population_by_model": (
            int((limit - data - chunk * per_head - scoring_bytes) // params_per_head) if limit else None
        ),
    }


def paper_run(features, epochs: int) -> dict:
    """The authors' 200 evaluations, timed at ``epochs`` epochs per head and scaled to 600."""
    config = with_engine(paper_budget().replace(train={"max_epochs": epochs, "patience": epochs + 1}))
    key = jax.random.PRNGKey(0)
    masks = np.asarray(MultiObjective(config.replace(search={"population_size": 200}).search,
                                      features.num_features).initial_population(key))

    def train_in_groups(group):
        evaluator = MaskEvaluator(features, config, key, max_batch=group)
        jax.block_until_ready(evaluator.train(masks[:group]))  # compile
        started = time.perf_counter()
        for start in range(0, len(masks), group):
            jax.block_until_ready(evaluator.train(masks[start:start + group]))
        return time.perf_counter() - started

    steady = train_in_groups(2)
    generational = train_in_groups(30)
    scale = 600 / epochs
    return {
        "evaluations": len(masks),
        "measured_epochs": epochs,
        "scaled_to_epochs": 600,
        "steady_state_seconds_measured": steady,
        "generational_seconds_measured": generational,
        "steady_state_seconds_at_600_epochs": steady * scale,
        "generational_seconds_at_600_epochs": generational * scale,
        "authors_v100_seconds": AUTHORS_RPS_SECONDS,
        "speedup_vs_authors_generational": AUTHORS_RPS_SECONDS / (generational * scale),
        "plans": {
            f"groups of {group}": plan_record(config, group, features.num_features, features.num_classes)
            for group in (2, 30)
        },
        "note": "upper bound: every head runs all 600 epochs; the authors' heads stopped early "
                "(their time also re-ran ResNet-50 on every evaluation)",
    }


def paper_search(features, repeats: int = 2, save=None) -> dict:
    """The authors' whole budget as one real search: ``run_search``, measured, not scaled.

    Their protocol (``paper_budget``: the paper preset without Keras 2.2.4's
    training rules; SGD 1e-3, momentum 0.9, Nesterov, batch 32, up to 600
    epochs with early stopping on the training loss, patience 10; ODIN T =
    1000; the paper's AUROC), run generationally:
    population 30, then 5 generations of 34 offspring, 200 evaluations in all
    (duplicates are not retrained, so possibly fewer). Wall time includes
    scoring, selection, the final front's retraining and its test scores. The
    first run includes XLA's compilation; later runs reuse the compiled code,
    as any run after the first in one process does. ``save(summary)`` is
    called after every run, so that a time limit during a repeat keeps the
    first.
    """
    from evojax_prune.search.loop import run_search

    config = with_engine(paper_budget().replace(search={"offspring_size": 34, "generations": 5}))
    search = config.search
    # run_search trains buckets of up to max(population + 1, offspring) heads (the baseline
    # beside the initial population): this plan is its largest bucket's.
    bucket = max(search.population_size + 1, search.num_offspring)
    training = plan_record(config, bucket, features.num_features, features.num_classes)
    runs = []
    for _ in range(repeats):
        if runs and runs[0]["wall_seconds"] > 90:
            break  # a slow device: one run says enough, the time limit is better spent elsewhere
        started = time.perf_counter()
        result = run_search(features, config, seed=0)
        wall = time.perf_counter() - started
        history = result.history
        runs.append({
            "wall_seconds": wall,
            "train_seconds": sum(record["train_seconds"] for record in history),
            "score_seconds": sum(record["score_seconds"] for record in history),
            "select_seconds": sum(record["select_seconds"] for record in history),
            # After the last generation: the front and the baseline retrained, scored on the test split.
            "final_front_seconds": wall - history[-1]["elapsed_seconds"],
            "evaluations": result.evaluations,
            "front_size": len(result.masks),
            "front_mean_epochs": float(np.mean(result.validation["epochs"])),
            "front_max_epochs": float(np.max(result.validation["epochs"])),
            "best_test_accuracy": float(result.test["accuracy"].max()),
            "baseline_test_accuracy": float(result.baseline_test["accuracy"]),
        })
        print(f"authors' budget as one search: {wall:.1f} s, {result.evaluations} evaluations, "
              f"front epochs mean {runs[-1]['front_mean_epochs']:.0f}", flush=True)
        summary = {
            "schedule": "population 30 + 5 generations x 34 offspring = 200 evaluations, generational",
            "protocol": f"paper preset: SGD 1e-3 momentum 0.9 nesterov, batch 32, <= 600 epochs, "
                        f"patience {config.train.patience}",
            "runs": runs,
            "cold_seconds": runs[0]["wall_seconds"],
            "warm_seconds": min(run["wall_seconds"] for run in runs[1:]) if len(runs) > 1 else None,
            "authors_v100_seconds": AUTHORS_RPS_SECONDS,
            "plan": training,
        }
        if save:
            save(summary)
    return summary


def _write(out: Path, result: dict) -> None:
    """Written after every part, so that a run stopped by a time limit keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out, result)


def _scaling_row(row: dict, simulated: bool) -> dict:
    seconds = row["seconds"]
    return {"devices": row["devices"], "simulated": simulated, "population": row["population"],
            "epochs": row["epochs"], "training_seconds": seconds["training"],
            "scoring_seconds": seconds["scoring"], "total_seconds": seconds["total"],
            "heads_per_second": row["heads_per_second"], "first_call_seconds": row["first_call_seconds"],
            "train_chunk_size": row["train_chunk_size"], "plan": row["plan"]}


def scaling_real(features, device_counts, populations, epochs) -> dict:
    """Part 3 on the devices of this process (simulated when they are CPU slices)."""
    available = jax.device_count()
    simulated = jax.devices()[0].platform == "cpu" and available > 1
    rows, skipped = [], [count for count in device_counts if count > available]
    for count in [count for count in device_counts if count <= available]:
        for population in populations:
            row = profile_generation(features, population, epochs, devices=count)
            rows.append(_scaling_row(row, simulated))
            _print_scaling(rows[-1])
    return {"simulated": simulated, "rows": _with_speedups(rows), "skipped_device_counts": skipped,
            "device_kind": jax.devices()[0].device_kind}


def scaling_simulated(device_counts, populations, epochs) -> dict:
    """Part 3 on n simulated CPU devices: this script once per n, in a subprocess."""
    rows = []
    for count in device_counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
               "JAX_PLATFORMS": "cpu"}
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "scaling.json"
            command = [sys.executable, __file__, "--scaling-only", "--devices", str(count), "--epochs",
                       str(epochs), "--scaling-populations", *map(str, populations), "--out", str(out)]
            subprocess.run(command, env=env, check=True)
            child = json.loads(out.read_text())["scaling"]
        rows += [{**row, "simulated": True} for row in child["rows"]]
    return {"simulated": True, "rows": _with_speedups(rows), "skipped_device_counts": [],
            "device_kind": "cpu (simulated devices share the same cores)"}


def _with_speedups(rows: list[dict]) -> list[dict]:
    """Adds each row's speed-up over the one-device row of the same population, where there is one."""
    single = {row["population"]: row for row in rows if row["devices"] == 1}
    for row in rows:
        base = single.get(row["population"])
        row["speedup_total"] = base["total_seconds"] / row["total_seconds"] if base else None
        row["speedup_training"] = base["training_seconds"] / row["training_seconds"] if base else None
    return rows


def _print_scaling(row: dict) -> None:
    label = "simulated " if row["simulated"] else ""
    print(f"P={row['population']:>5} on {row['devices']} {label}device(s): "
          f"train {row['training_seconds']:.2f}s  "
          f"score {row['scoring_seconds']:.2f}s  total {row['total_seconds']:.2f}s  "
          f"({row['heads_per_second']:.1f} heads/s)", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="*", default=[32, 64],
                        help="populations of part 1 (none: skip it)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per head in the profile")
    parser.add_argument("--paper-epochs", type=int, default=2, help="epochs measured for part 2")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument(
        "--paper-search",
        action="store_true",
        help="also run the authors' whole budget as one real search, full protocol (for accelerators)",
    )
    parser.add_argument("--devices", type=int, nargs="+", metavar="N",
                        help="part 3 on the first N real devices, for each N (more than exist: skipped)")
    parser.add_argument("--simulated-devices", type=int, nargs="+", metavar="N",
                        help="part 3 on N simulated CPU devices (a subprocess per N)")
    parser.add_argument("--scaling-populations", type=int, nargs="+", default=[32], metavar="P",
                        help="populations of part 3 (default 32)")
    parser.add_argument("--scaling-only", action="store_true", help="part 3 alone")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = rps_shaped_features()
    result = {"benchmark": "generation_profile", **environment(), "rows": []}
    if args.devices:
        result["scaling"] = scaling_real(features, args.devices, args.scaling_populations, args.epochs)
    elif args.simulated_devices:
        result["scaling"] = scaling_simulated(args.simulated_devices, args.scaling_populations, args.epochs)
    if args.scaling_only:
        _write(args.out, result)
        return result
    if "scaling" in result:
        _write(args.out, result)
    for population in args.populations:
        row = profile_generation(features, population, args.epochs)
        result["rows"].append(row)
        seconds = row["seconds"]
        print(f"P={population:>5}: train {seconds['training']:.2f}s  score {seconds['scoring']:.2f}s  "
              f"select {seconds['selection']:.3f}s  host {seconds['host']:.3f}s  "
              f"({row['heads_per_second']:.1f} heads/s, {row['dense_training_gflops']:.1f} GFLOP/s)",
              flush=True)
        _write(args.out, result)
    result["capacity"] = largest_population(features)
    _write(args.out, result)
    if args.paper_search:  # before part 2: on an accelerator this is the number that matters
        def save(summary):
            result["paper_search"] = summary
            _write(args.out, result)

        paper_search(features, save=save)
    if not args.skip_paper:
        result["paper_run"] = paper_run(features, args.paper_epochs)
        paper = result["paper_run"]
        print(f"authors' run (200 evals, scaled to 600 epochs): steady state "
              f"{paper['steady_state_seconds_at_600_epochs']:.0f}s, generational "
              f"{paper['generational_seconds_at_600_epochs']:.0f}s vs {AUTHORS_RPS_SECONDS:.0f}s on a V100")
        _write(args.out, result)
    _write(args.out, result)
    return result


if __name__ == "__main__":
    main()
