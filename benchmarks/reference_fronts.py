"""Records, or checks against a recorded file, the exact results of two fixed CPU searches.

A change to how heads are trained (the engine, not the method) must leave the
results of a seed bit for bit where they were. This script runs

  embedded-default   what ``evojax-prune run`` runs: the embedded digits, the
                     quick preset, seed 0;
  quick-seed1        the quick preset with population 8, 3 generations, seed 1;

and writes, for each, the front's masks, its validation and test metrics (as
exact float64 hex), the history's hypervolumes and a SHA-256 of every trained
weight array. ``--check FILE`` runs them again and reports every difference
(exit 1 if any). Only comparable on the same device kind and versions (the
recorded file says which).

  python benchmarks/reference_fronts.py --out benchmarks/results/reference_fronts_cpu.json
  python benchmarks/reference_fronts.py --check benchmarks/results/reference_fronts_cpu.json
  python benchmarks/reference_fronts.py --front population \
      --check benchmarks/results/reference_fronts_cpu_population.json

The population file is the record from before the archive front became the
default (``SearchConfig.front``): the same searches, the front drawn from the
final population.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np

import evojax_prune as ep
from evojax_prune.data import embedded
from evojax_prune.io import atomic

RUNS = {
    "embedded-default": (0, {}),
    "quick-seed1": (1, {"population_size": 8, "generations": 3}),
}


def _digest(array) -> str:
    array = np.ascontiguousarray(np.asarray(array))
    return hashlib.sha256(array.tobytes() + str((array.dtype, array.shape)).encode()).hexdigest()


def _exact(values: dict) -> dict:
    return {name: [float(v).hex() for v in np.asarray(value, np.float64).ravel()]
            for name, value in sorted(values.items())}


def record(name: str, front: str | None = None) -> dict:
    seed, search = RUNS[name]
    search = {**search, **({"front": front} if front else {})}
    config = ep.preset("quick").replace(search=search) if search else ep.preset("quick")
    result = ep.run_search(embedded.digits(), config, seed=seed)
    return {
        "seed": seed,
        "masks": _digest(result.masks),
        "front_size": len(result.masks),
        "active_features": result.masks.sum(axis=1).tolist(),
        "validation": _exact(result.validation),
        "test": _exact(result.test),
        "baseline_test": _exact(result.baseline_test),
        "hypervolumes": [float(row["hypervolume"]).hex() for row in result.history],
        "evaluations": result.evaluations,
        "weights": {leaf: _digest(getattr(result.params, leaf))
                    for leaf in ("hidden_kernel", "output_kernel", "output_bias")},
        "baseline_weights": {leaf: _digest(getattr(result.baseline_params, leaf))
                             for leaf in ("hidden_kernel", "output_kernel", "output_bias")},
    }


def differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(found, dict):
        lines = []
        for key in sorted(set(expected) | set(found)):
            if key not in found:
                lines.append(f"{prefix}{key}: in the record, not in this run")
            elif key not in expected:  # a metric added since: reported, not a difference
                print(f"note: {prefix}{key} is new since the record")
            else:
                lines += differences(expected[key], found[key], f"{prefix}{key}.")
        return lines
    return [] if expected == found else [f"{prefix[:-1]}: recorded {expected!r:.80}, now {found!r:.80}"]


def main(argv=None) -> int:
    from evojax_prune.run import rundir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="write the record here")
    where.add_argument("--check", help="compare with this record")
    parser.add_argument("--front", choices=("archive", "population"),
                        help="SearchConfig.front (default: the preset's, the archive); "
                             "reference_fronts_cpu_population.json is the population's")
    args = parser.parse_args(argv)
    runs = {name: record(name, args.front) for name in RUNS}
    if args.out:
        atomic.write_json(args.out, {"environment": rundir.environment(), "runs": runs})
        print(f"recorded {', '.join(runs)} in {args.out}")
        return 0
    recorded = json.loads(open(args.check).read())
    lines = differences(recorded["runs"], runs)
    for line in lines:
        print(line)
    print(f"{len(lines)} differences from {args.check} over {', '.join(runs)}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
