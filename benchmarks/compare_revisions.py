"""The trainer of another git revision and of this checkout, side by side in one run.

Both trainers train the same heads (the authors' initial masks on RPS-shaped
random features, the paper's protocol for ``--epochs`` epochs without early
stopping) through the public API, ``evojax_prune.train_population``, each in a
fresh process; the processes alternate, old and new, ``--repeats`` times, so
that a noisy machine slows both alike. The revision is checked out into a
temporary ``git worktree`` and put first on ``PYTHONPATH``.

    python benchmarks/compare_revisions.py --against 77a46ef --out /tmp/compare.json

Reports per revision the median over processes of the fastest of ``--calls``
compiled calls, and of the first call (compile included), and the ratio new /
old; checks that both trained the same weights (the first kernels' sums).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import environment, save

REPO = Path(__file__).resolve().parents[1]

# Runs in each process: the same data, masks and configuration for any revision.
TIMING = r"""
import json, sys, time
import jax, numpy as np
import evojax_prune as ep
population, epochs, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
num_samples, num_features, num_classes = 2520, 2048, 3
x = rng.normal(size=(num_samples, num_features)).astype(np.float32)
y = (np.arange(num_samples) % num_classes).astype(np.int32)
masks = np.zeros((population, num_features), bool)
for row in masks:  # the authors' initialisation: round(p * D) ones, p ~ U(0, 1)
    row[rng.choice(num_features, round(rng.uniform() * num_features), replace=False)] = True
# The default preset: the head and training every revision has (paper's training became Keras 2.2.4's).
config = ep.preset("default").replace(train={"max_epochs": epochs, "patience": epochs + 1})
key = jax.random.key(0)
def train():
    return jax.block_until_ready(ep.train_population(key, masks, x, y, config, num_classes=num_classes))
started = time.perf_counter(); train(); first = time.perf_counter() - started
seconds = []
for _ in range(calls):
    started = time.perf_counter(); trained = train(); seconds.append(time.perf_counter() - started)
kernel = np.asarray(trained.params.hidden_kernel)
print(json.dumps({"package": ep.__file__, "first_call_seconds": first, "seconds": min(seconds),
                  "calls_seconds": seconds,
                  "kernel_sum": float(np.abs(kernel).sum()), "kernel_head0_row0": kernel[0, 0, :4].tolist(),
                  "epochs": np.asarray(trained.epochs).tolist()}))
"""


def _time(root: Path, population: int, epochs: int, calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # In the revision's root: ``python -c`` puts the working directory first on sys.path.
    arguments = [str(population), str(epochs), str(calls)]
    completed = subprocess.run([sys.executable, "-c", TIMING, *arguments], env=env, cwd=root,
                               capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"the timing process for {root} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if not result["package"].startswith(str(root)):
        raise RuntimeError(f"imported {result['package']}, not the package under {root}")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4, help="processes per revision, alternating")
    parser.add_argument("--calls", type=int, default=3,
                        help="compiled calls per process (the fastest counts)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "compare_revisions.json")
    args = parser.parse_args(argv)
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.against], capture_output=True,
                              text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    runs = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), revision],
                       capture_output=True, check=True)
        try:
            for repeat in range(args.repeats):
                order = (("old", worktree), ("new", REPO))
                for name, root in order if repeat % 2 == 0 else order[::-1]:  # each goes first as often
                    runs[name].append(_time(root, args.population, args.epochs, args.calls))
                    print(f"repeat {repeat + 1}: {name} {runs[name][-1]['seconds']:.2f} s "
                          f"(first call {runs[name][-1]['first_call_seconds']:.2f} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True, check=False)
    summary = {name: {"median_seconds": statistics.median(run["seconds"] for run in rows),
                      "median_first_call_seconds": statistics.median(run["first_call_seconds"]
                                                                     for run in rows),
                      "seconds": [run["seconds"] for run in rows]} for name, rows in runs.items()}
    old, new = runs["old"][0], runs["new"][0]
    report = {
        "benchmark": "compare_revisions", **environment(), "old_revision": revision,
        "new_revision": head, "new_has_uncommitted_changes": bool(subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, check=True).stdout.strip()),
        "population": args.population, "epochs": args.epochs, "repeats": args.repeats, "calls": args.calls,
        **summary,
        "ratio_new_over_old": summary["new"]["median_seconds"] / summary["old"]["median_seconds"],
        "same_epochs": old["epochs"] == new["epochs"],
        "kernel_sum_relative_difference": abs(old["kernel_sum"] - new["kernel_sum"]) / old["kernel_sum"],
    }
    print(f"median compiled call: old {summary['old']['median_seconds']:.2f} s, new "
          f"{summary['new']['median_seconds']:.2f} s, new / old {report['ratio_new_over_old']:.3f}")
    save(args.out, report)
    return report


if __name__ == "__main__":
    main()
