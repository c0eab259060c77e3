"""One NSGA-II survival step: ours (jitted) against pymoo's ``RankAndCrowding``.

The step: non-dominated ranks, crowding distances and the best N / 2 of N
random points (uniform in [0, 1)^M, M = 3 by default, so there are no ties at
the cut). Ours is timed after compilation (compile time reported on its own);
pymoo's ``RankAndCrowding().do(problem, pop, n_survive=N // 2)`` is timed in the
same run on the same points. Both results are checked: identical ranks and the
same multiset of surviving ranks.

    python benchmarks/nsga2_selection.py                      # N = 200, 2000, 20000
    python benchmarks/nsga2_selection.py --sizes 200 2000 --objectives 2 --out /tmp/x.json
    python benchmarks/nsga2_selection.py --rank-methods chain peel    # each ranking method alone too

``--rank-methods`` also times ``ranking.non_dominated_rank`` alone with each
named method (checked against pymoo's ranks): which one ``"auto"`` should pick
on the device (it picks ``"chain"`` above N = 256 for M = 3, chosen on a CPU).

Writes JSON (device, versions, date, per N: times and the ratio ours / pymoo) to
benchmarks/results/nsga2_selection_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import environment, save

from evojax_prune.search import ranking

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "nsga2_selection_cpu.json"


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _ready(fn) -> None:
    jax.block_until_ready(fn())


def _repeats_for(num_points: int) -> int:
    return 50 if num_points <= 2000 else 10


def bench_size(num_points: int, num_objectives: int, seed: int, rank_methods=()) -> dict:
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    rng = np.random.default_rng(seed)
    fitness = rng.random((num_points, num_objectives)).astype(np.float32)
    num_survivors = num_points // 2
    device_fitness = jax.device_put(fitness)

    # Ours: compile separately, then time the compiled step.
    start = time.perf_counter()
    step = jax.jit(ranking.select_survivors, static_argnames=("num_survivors",))
    compiled = step.lower(device_fitness, num_survivors=num_survivors).compile()
    compile_seconds = time.perf_counter() - start
    survivors, rank, _ = jax.block_until_ready(compiled(device_fitness))

    def ours():
        jax.block_until_ready(compiled(device_fitness))

    # pymoo, same points (float64, as pymoo works).
    problem = Problem(n_var=1, n_obj=num_objectives)
    survival = RankAndCrowding()
    population = Population.new("F", fitness.astype(np.float64))

    def reference():
        return survival.do(
            problem, population, n_survive=num_survivors, random_state=np.random.default_rng(0)
        )

    # Interleave the two so that load on the machine hits both alike.
    repeats = _repeats_for(num_points)
    ours_times, pymoo_times = [], []
    for _ in range(repeats):
        ours_times.append(_median_seconds(ours, 1)[0])
        pymoo_times.append(_median_seconds(reference, 1)[0])
    kept = reference()

    _, reference_rank = NonDominatedSorting().do(fitness.astype(np.float64), return_rank=True)
    survivors = np.asarray(survivors)
    ranks_identical = bool(np.array_equal(np.asarray(rank), reference_rank))
    same_surviving_ranks = bool(
        np.array_equal(np.sort(np.asarray(rank)[survivors]), np.sort(kept.get("rank").astype(int)))
    )
    ours_median, pymoo_median = statistics.median(ours_times), statistics.median(pymoo_times)
    rank_alone = {}
    for method in rank_methods:  # non_dominated_rank compiles once per method (its jit is inside)
        rank_once = functools.partial(ranking.non_dominated_rank, device_fitness, method=method)
        rank_alone[method] = {
            "identical_to_pymoo": bool(np.array_equal(np.asarray(rank_once()), reference_rank)),
            "median_ms": _median_seconds(functools.partial(_ready, rank_once), repeats)[0] * 1e3,
        }
    return {
        "num_points": num_points,
        "num_objectives": num_objectives,
        "num_survivors": num_survivors,
        "num_fronts": int(reference_rank.max()) + 1,
        "repeats": repeats,
        "ours_compile_seconds": compile_seconds,
        "ours_median_ms": ours_median * 1e3,
        "ours_min_ms": min(ours_times) * 1e3,
        "pymoo_median_ms": pymoo_median * 1e3,
        "pymoo_min_ms": min(pymoo_times) * 1e3,
        "ratio_ours_over_pymoo": ours_median / pymoo_median,
        "ratio_of_min_times": min(ours_times) / min(pymoo_times),
        "ranks_identical_to_pymoo": ranks_identical,
        "same_surviving_ranks_as_pymoo": same_surviving_ranks,
        "rank_alone_by_method": rank_alone,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 20000])
    parser.add_argument("--objectives", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank-methods", nargs="*", default=[], choices=ranking.RANK_METHODS,
                        help="also time non_dominated_rank alone with each of these methods")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    results = []
    for num_points in args.sizes:
        row = bench_size(num_points, args.objectives, args.seed, args.rank_methods)
        results.append(row)
        print(
            f"N={num_points:>6} M={args.objectives}  ours {row['ours_median_ms']:9.3f} ms "
            f"(compile {row['ours_compile_seconds']:.2f} s)  pymoo {row['pymoo_median_ms']:9.3f} ms  "
            f"ours/pymoo {row['ratio_ours_over_pymoo']:6.2f}  "
            f"ranks identical {row['ranks_identical_to_pymoo']}",
            flush=True,
        )
        for method, alone in row["rank_alone_by_method"].items():
            print(f"    ranking alone, {method}: {alone['median_ms']:9.3f} ms "
                  f"(identical to pymoo: {alone['identical_to_pymoo']})", flush=True)
    report = {
        "benchmark": "nsga2_selection",
        "question": "one survival step (rank + crowding + best N/2), jitted JAX vs pymoo RankAndCrowding",
        **environment(("pymoo", "moocore")),
        "timing": "median over repeats, ours and pymoo interleaved; ours after compilation",
        # Other jobs may share the machine: the 1-minute load average before and after.
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "results": results,
    }
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
