"""Scoring a population for OoD robustness: the jitted batch against a per-head Python loop.

Two questions, answered in one run on the same machine:

  1. ODIN + AUROC for P heads (default P = 1024) with n InD and m OoD samples
     each (default 372 + 372, the size of RPS's test split), C = 3 classes,
     random float32 logits (InD ones a little more spread, so AUROCs are not
     all 0.5). Ours: one jitted call, ``odin_score`` on (P, n, C) and
     (P, m, C) logits and ``vmap(auroc)``; also ``vmap(ood_metrics)`` (all five
     OoD metrics) for scale. The baseline is what the authors' code did per
     head: a NumPy softmax of logits / T, its maximum, then scikit-learn's
     ``roc_auc_score``, in a Python loop over heads. Ours is timed after
     compilation (compile time reported on its own); the two are interleaved
     so that load on the machine hits both alike. Checked: our AUROCs equal
     scikit-learn's on float64 softmax scores.
  2. ``evaluate_population`` end to end for P heads on RPS-shaped data:
     D = 2048 features (non-negative, like pooled ResNet-50 features),
     H = 512, C = 3, N = 372 validation and M = 372 OoD samples, masks drawn
     with the authors' initialisation (p ~ U(0, 1), exactly round(p D) ones).
     Its chunk size comes from the engine's memory budget
     (``EngineConfig.memory_budget_mb``; $EVOJAX_PRUNE_BENCH_ENGINE's settings
     apply) unless --chunk-size is given. Reported with the FLOP rate of its
     dominant matmul.

    python benchmarks/odin_metrics.py                        # P = 1024, both parts
    python benchmarks/odin_metrics.py --population 256 --skip-evaluate --out /tmp/o.json

Writes JSON (device, versions, date, timings, ratios) to
benchmarks/results/odin_metrics_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import environment, save, with_engine

from evojax_prune import config as cfg
from evojax_prune import head
from evojax_prune.score import evaluate, metrics, odin
from evojax_prune.score.ood_scores import OodSpec

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "odin_metrics_cpu.json"
TEMPERATURE = 1000.0


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rss_gb(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so a peak belongs to one phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _numpy_max_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The authors' ODIN score: max of a scipy-style softmax (here in float64)."""
    scaled = logits.astype(np.float64) / temperature
    exps = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return (exps / exps.sum(axis=-1, keepdims=True)).max(axis=-1)


def bench_odin_auroc(population: int, num_ind: int, num_ood: int, num_classes: int,
                     repeats: int, seed: int) -> dict:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    ind_logits = (rng.normal(size=(population, num_ind, num_classes)) * 13.0).astype(np.float32)
    ood_logits = (rng.normal(size=(population, num_ood, num_classes)) * 10.0).astype(np.float32)
    device_ind, device_ood = jax.device_put(ind_logits), jax.device_put(ood_logits)

    def odin_auroc(ind, ood):
        return jax.vmap(metrics.auroc)(odin.odin_score(ind, TEMPERATURE), odin.odin_score(ood, TEMPERATURE))

    def odin_all_metrics(ind, ood):
        scores = odin.odin_score(ind, TEMPERATURE), odin.odin_score(ood, TEMPERATURE)
        return jax.vmap(metrics.ood_metrics)(*scores)

    compiled, compile_seconds = {}, {}
    for name, fn in (("auroc", odin_auroc), ("all_metrics", odin_all_metrics)):
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(device_ind, device_ood).compile()
        compile_seconds[name] = time.perf_counter() - start
    ours_auroc = np.asarray(compiled["auroc"](device_ind, device_ood))
    jax.block_until_ready(compiled["all_metrics"](device_ind, device_ood))

    labels = np.r_[np.ones(num_ind), np.zeros(num_ood)]

    def sklearn_loop():
        return np.array([
            roc_auc_score(labels, np.r_[_numpy_max_softmax(ind_logits[p], TEMPERATURE),
                                        _numpy_max_softmax(ood_logits[p], TEMPERATURE)])
            for p in range(population)
        ])

    reference_auroc = sklearn_loop()
    times = {"ours_auroc": [], "ours_all_metrics": [], "sklearn_loop": []}
    for _ in range(repeats):
        times["ours_auroc"].append(_seconds(
            lambda: jax.block_until_ready(compiled["auroc"](device_ind, device_ood))))
        times["ours_all_metrics"].append(_seconds(
            lambda: jax.block_until_ready(compiled["all_metrics"](device_ind, device_ood))))
        times["sklearn_loop"].append(_seconds(sklearn_loop))
    median = {name: statistics.median(values) for name, values in times.items()}
    difference = np.abs(ours_auroc - reference_auroc)
    return {
        "population": population, "num_ind": num_ind, "num_ood": num_ood, "num_classes": num_classes,
        "temperature": TEMPERATURE, "repeats": repeats,
        "compile_seconds": compile_seconds,
        "ours_auroc_median_ms": median["ours_auroc"] * 1e3,
        "ours_all_metrics_median_ms": median["ours_all_metrics"] * 1e3,
        "sklearn_loop_median_ms": median["sklearn_loop"] * 1e3,
        "sklearn_loop_per_head_ms": median["sklearn_loop"] * 1e3 / population,
        "speedup_sklearn_loop_over_ours_auroc": median["sklearn_loop"] / median["ours_auroc"],
        "speedup_sklearn_loop_over_ours_all_metrics": median["sklearn_loop"] / median["ours_all_metrics"],
        "auroc_max_abs_difference_vs_sklearn": float(difference.max()),
        # One InD/OoD pair ordered differently moves the AUROC by 1 / (n m).
        "heads_differing_by_more_than_one_pair": int(np.sum(difference > 1.0 / (num_ind * num_ood) + 1e-7)),
    }


def _authors_masks(rng: np.random.Generator, population: int, num_features: int) -> np.ndarray:
    masks = np.zeros((population, num_features), bool)
    for row, fraction in zip(masks, rng.random(population), strict=True):
        row[rng.permutation(num_features)[: round(fraction * num_features)]] = True
    return masks


def bench_evaluate(population: int, num_ind: int, num_ood: int, num_classes: int, num_features: int,
                   hidden: int, chunk_size: int | None, repeats: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    config = with_engine(cfg.preset("default"))
    # Heads straight from head.init (Glorot), one at a time inside one jitted
    # lax.map, so the (P, D, H) stack is the only large allocation.
    keys = jax.random.split(jax.random.key(seed), population)
    params = jax.jit(lambda keys: jax.lax.map(
        lambda key: head.init(key, num_features, num_classes, hidden), keys))(keys)
    masks = jax.device_put(_authors_masks(rng, population, num_features))
    features = jax.device_put(np.maximum(rng.normal(size=(num_ind, num_features)), 0).astype(np.float32))
    labels = jax.device_put(rng.integers(0, num_classes, num_ind).astype(np.int32))
    ood_features = jax.device_put(
        (np.maximum(rng.normal(size=(num_ood, num_features)), 0) * 1.2).astype(np.float32)
    )
    jax.block_until_ready((params, masks, features, ood_features))
    used_chunk = chunk_size or evaluate.auto_chunk_size(
        num_ind + num_ood, num_features, hidden, num_classes, perturb=False,
        memory_budget_mb=config.engine.memory_budget_mb,
    )

    def run():
        result = evaluate.evaluate_population(
            params, masks, features, labels, ood_features, config, chunk_size=chunk_size
        )
        return jax.block_until_ready(result)

    # The machine's own float32 matmul rate at one head's shape, for scale.
    single = jax.jit(lambda x, kernel: x @ kernel)
    both = jax.numpy.concatenate([features, ood_features])
    jax.block_until_ready(single(both, params.hidden_kernel[0]))
    matmul_seconds = statistics.median(
        [_seconds(lambda: jax.block_until_ready(single(both, params.hidden_kernel[0]))) for _ in range(20)]
    )

    rss_before_gb = _rss_gb("VmRSS")
    peak_was_reset = _reset_peak_rss()
    first_call = _seconds(run)
    times = [_seconds(run) for _ in range(repeats)]
    result = run()
    median = statistics.median(times)
    peak_rss_gb = _rss_gb("VmHWM") if peak_was_reset else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20
    compiled = evaluate.evaluate_sharded.lower(
        params, masks, features, labels, ood_features, OodSpec(temperature=jax.numpy.float32(TEMPERATURE)),
        chunk_size=min(used_chunk, population),
    ).compile()
    memory = compiled.memory_analysis()
    xla_temp_gb = None if memory is None else memory.temp_size_in_bytes / 2**30
    # The hidden-layer matmul of every head over every sample dominates.
    flops = 2.0 * population * (num_ind + num_ood) * num_features * hidden
    return {
        "population": population, "num_ind": num_ind, "num_ood": num_ood, "num_classes": num_classes,
        "num_features": num_features, "hidden": hidden, "chunk_size": min(used_chunk, population),
        "repeats": repeats,
        "first_call_seconds_including_compile": first_call,
        "median_seconds": median,
        "per_head_ms": median * 1e3 / population,
        "hidden_matmul_gflop_per_second": flops / median / 1e9,
        "plain_matmul_gflop_per_second_same_run": flops / population / matmul_seconds / 1e9,
        "parameters_gb": population * head.param_bytes(num_features, num_classes, hidden) / 2**30,
        "rss_before_evaluate_gb": rss_before_gb,
        "peak_rss_during_evaluate_gb": peak_rss_gb,
        "peak_rss_is_evaluate_only": peak_was_reset,
        "xla_temp_gb": xla_temp_gb,
        "mean_auroc": float(np.mean(result.auroc)),
        "mean_accuracy": float(np.mean(result.accuracy)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--num-ind", type=int, default=372)
    parser.add_argument("--num-ood", type=int, default=372)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="heads per chunk in evaluate_population (default: from the memory budget)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of part 1")
    parser.add_argument("--evaluate-repeats", type=int, default=2, help="timed repeats of part 2")
    parser.add_argument("--skip-evaluate", action="store_true", help="part 1 only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    odin_row = bench_odin_auroc(
        args.population, args.num_ind, args.num_ood, args.classes, args.repeats, args.seed
    )
    print(
        f"ODIN+AUROC P={args.population} n={args.num_ind} m={args.num_ood} C={args.classes}: "
        f"ours {odin_row['ours_auroc_median_ms']:.1f} ms (all five metrics "
        f"{odin_row['ours_all_metrics_median_ms']:.1f} ms), numpy+sklearn loop "
        f"{odin_row['sklearn_loop_median_ms']:.1f} ms -> "
        f"{odin_row['speedup_sklearn_loop_over_ours_auroc']:.1f}x "
        f"({odin_row['speedup_sklearn_loop_over_ours_all_metrics']:.1f}x with all five); "
        f"max |AUROC - sklearn| {odin_row['auroc_max_abs_difference_vs_sklearn']:.2e}",
        flush=True,
    )
    evaluate_row = None
    if not args.skip_evaluate:
        evaluate_row = bench_evaluate(
            args.population, args.num_ind, args.num_ood, args.classes, args.features,
            args.hidden, args.chunk_size, args.evaluate_repeats, args.seed,
        )
        print(
            f"evaluate_population P={args.population} D={args.features} H={args.hidden}: "
            f"{evaluate_row['median_seconds']:.2f} s ({evaluate_row['per_head_ms']:.1f} ms/head, "
            f"{evaluate_row['hidden_matmul_gflop_per_second']:.0f} GFLOP/s, "
            f"chunk {evaluate_row['chunk_size']}; "
            f"first call {evaluate_row['first_call_seconds_including_compile']:.2f} s), "
            f"RSS {evaluate_row['rss_before_evaluate_gb']:.1f} GB before, peak "
            f"{evaluate_row['peak_rss_during_evaluate_gb']:.1f} GB during (XLA temp "
            f"{evaluate_row['xla_temp_gb']:.2f} GB)",
            flush=True,
        )
    report = {
        "benchmark": "odin_metrics",
        "question": "ODIN + AUROC for a population: one jitted call vs a numpy + scikit-learn loop per head; "
                    "evaluate_population end to end on RPS shapes",
        **environment(("scikit-learn",)),
        "timing": "median over repeats after compilation; ours and the loop interleaved in part 1",
        "odin_auroc": odin_row,
        "evaluate_population": evaluate_row,
    }
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
