"""R searches in lockstep (``run_searches(runs=R)``) against the same R searches one after another.

Both sides run the same seeds (s .. s + R - 1) in the same process, after a
warm-up of both at one generation (so that neither pays for compiling), and
take turns going first over ``--repeats``. Each run's front in lockstep is
checked to equal its seed's alone (masks and every validation and test metric).

    python benchmarks/runs_lockstep.py                           # quick preset, 4 runs, embedded digits
    python benchmarks/runs_lockstep.py --runs 4 --generations 4 --repeats 2 --out /tmp/runs.json

Writes JSON (device, versions, date, load, the training plan of one lockstep
call, per repeat both wall times, and the median ratio lockstep / one after
another) to benchmarks/results/runs_lockstep_cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import environment, plan_record, save, with_engine

from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.search.loop import run_search, run_searches

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "runs_lockstep_cpu.json"


def _same_front(a, b) -> bool:
    return np.array_equal(a.masks, b.masks) and all(
        np.array_equal(getattr(a, split)[name], getattr(b, split)[name])
        for split in ("validation", "test") for name in getattr(b, split)
    )


def _time(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", help="FeatureSet .npz (default: the embedded digits)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--generations", type=int, help="default: the preset's")
    parser.add_argument("--population", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    features = FeatureSet.load(args.features) if args.features else embedded.digits()
    search = {name: value for name, value in (("generations", args.generations),
                                              ("population_size", args.population)) if value is not None}
    config = with_engine(preset(args.preset).replace(search=search, preset=args.preset))
    seeds = list(range(args.seed, args.seed + args.runs))

    def together(cfg):
        return run_searches(features, cfg, seed=args.seed, runs=args.runs).runs

    def one_after_another(cfg):
        return [run_search(features, cfg, seed=seed) for seed in seeds]

    sides = {"lockstep": together, "one_after_another": one_after_another}
    warm = config.replace(search={"generations": 1}, preset=config.preset)
    warm_up = {"lockstep_seconds": _time(lambda: together(warm))[0],
               "one_after_another_seconds": _time(lambda: one_after_another(warm))[0]}
    repeats = []
    for repeat in range(args.repeats):
        order = ("lockstep", "one_after_another") if repeat % 2 == 0 else ("one_after_another", "lockstep")
        timed = {side: _time(lambda run=sides[side]: run(config)) for side in order}
        same = all(_same_front(a, b) for a, b in zip(timed["lockstep"][1], timed["one_after_another"][1],
                                                      strict=True))
        repeats.append({"first": order[0], "lockstep_seconds": timed["lockstep"][0],
                        "one_after_another_seconds": timed["one_after_another"][0],
                        "ratio": timed["lockstep"][0] / timed["one_after_another"][0], "fronts_equal": same})
        print(f"repeat {repeat}: lockstep {timed['lockstep'][0]:.1f} s, one after another "
              f"{timed['one_after_another'][0]:.1f} s, ratio {repeats[-1]['ratio']:.3f}, fronts equal {same}")
    population = config.search.population_size + 1
    report = {
        "benchmark": "runs_lockstep",
        "environment": environment(),
        "features": features.metadata.get("name", "custom"),
        "preset": args.preset,
        "runs": args.runs,
        "seeds": seeds,
        "population_size": config.search.population_size,
        "generations": config.search.generations,
        "training_plan": plan_record(config, args.runs * population, features.num_features,
                                     features.num_classes),
        "warm_up": warm_up,
        "repeats": repeats,
        "median_ratio": statistics.median(r["ratio"] for r in repeats),
        "fronts_equal": all(r["fronts_equal"] for r in repeats),
    }
    print(f"median lockstep / one after another: {report['median_ratio']:.3f} "
          f"(fronts equal: {report['fronts_equal']})")
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
