"""A report for a group of runs: ``evojax-prune report GROUP_DIR``.

Reads a group directory (``run_searches``' ``out_dir``: run-0 .. run-{R-1},
runs.json, merged_pareto.csv; ``RunsResult.load`` checks the merged front
against its runs) and writes beside it:

  figures/front_pairs.png       the merged front's pairwise projections, baseline (run 0's) marked
  figures/front_3d.png          the merged front in (MEM, AUROC, accuracy)
  figures/run_hypervolumes.png  each run's hypervolume beside the merged front's
  report.md                     the merged front's numbers, the spread of the runs' hypervolumes
                                and a line per run, written last

Every file is written atomically (``atomic.write_atomically``), report.md last,
as the run report's (``report.py``). The members' own reports are
``evojax-prune report GROUP_DIR/run-<i>``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import numpy as np

from evojax_prune.analysis import report
from evojax_prune.io import atomic
from evojax_prune.result import robustness
from evojax_prune.run import rundir
from evojax_prune.run.search_result import SearchResult
from evojax_prune.search.lockstep import RunsResult

FIGURES = ("front_pairs", "front_3d", "run_hypervolumes")


def is_group(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a group of runs (runs.json, or run-<i> directories without a config.json)."""
    path = Path(path)
    return (path / "runs.json").is_file() or (
        not (path / "config.json").exists() and bool(rundir.group_member_names(path)))


def merged_result(group: RunsResult) -> SearchResult:
    """The merged front as a SearchResult: its members' masks, metrics and heads; the configuration,
    baseline, seed and history of run 0 (the figures mark run 0's baseline)."""
    pairs = list(zip(group.merged_run.tolist(), group.merged_member.tolist(), strict=True))
    heads = [jax.tree.map(lambda leaf, m=member: np.asarray(leaf)[m], group.runs[run].params)
             for run, member in pairs]
    return dataclasses.replace(
        group.runs[0], masks=group.masks, validation=group.metrics("validation"), test=group.metrics("test"),
        params=jax.tree.map(lambda *leaves: np.stack(leaves), *heads), hypervolume=group.hypervolume,
    )


def plot_run_hypervolumes(group: RunsResult):
    """Each run's front hypervolume (bars, with its seed), their mean, and the merged front's."""
    figure = report.new_figure(max(5.0, 0.6 * len(group.runs) + 3), 4)
    axes = figure.subplots()
    values = group.run_hypervolumes
    positions = np.arange(len(values))
    axes.bar(positions, values, color="C0", edgecolor="k", linewidth=0.4, label="each run's front")
    axes.axhline(values.mean(), color="0.3", linestyle=":", linewidth=1,
                 label=f"mean of the runs {values.mean():.4f} (std {values.std():.4f})")
    axes.axhline(group.hypervolume, color="crimson", linestyle="--", linewidth=1,
                 label=f"merged front {group.hypervolume:.4f}")
    axes.set_xticks(positions, [f"run {index}\nseed {run.seed}" for index, run in enumerate(group.runs)])
    low = min(values.min(), group.hypervolume)
    high = max(values.max(), group.hypervolume)
    margin = max(0.005, 0.2 * (high - low))
    axes.set_ylim(max(0.0, low - margin), min(1.0, high + margin))  # the spread, not [0, 1]
    axes.set_ylabel("hypervolume (validation, reference (1, 1, 1))")
    axes.set_title(f"Hypervolume of {len(values)} runs' fronts and of the front merged over them")
    axes.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize=8)
    return figure


def write_group_report(group_dir: str | os.PathLike) -> Path:
    """Writes the figures and report.md of a finished group of runs into its directory.

    Returns:
      The path of report.md.

    Raises:
      rundir.RunDirectoryError: not a finished group of runs (what is missing).
      rundir.RunFileError: a file of it is damaged, or of another run.
    """
    path = Path(group_dir)
    group = RunsResult.load(path)
    rundir.require_writable(path, "write the report")
    merged = merged_result(group)
    figures = {"front_pairs": report.plot_front_pairs(merged), "front_3d": report.plot_front_3d(merged),
               "run_hypervolumes": plot_run_hypervolumes(group)}
    (path / "figures").mkdir(exist_ok=True)
    for name, figure in figures.items():
        report.save_png(figure, path / "figures" / f"{name}.png")
    destination = path / "report.md"
    atomic.write_text(destination, render_markdown(group, merged))
    return destination


def render_markdown(group: RunsResult, merged: SearchResult) -> str:
    """report.md's text for a group: the merged front, the spread, one line per run."""
    first = group.runs[0]
    kind = first.config.ood.auroc
    units = report.unit_name(first)
    score = report.score_label(first)
    name = ((first.provenance or {}).get("features") or {}).get("name", "unnamed")
    spread = group.spread()
    best = report.best_on_test(merged)
    origin = lambda index: f"run {int(group.merged_run[index])} member {int(group.merged_member[index])}"
    seeds = [run.seed for run in group.runs]
    lines = [
        f"# Group report: {name}, {len(group.runs)} runs of preset {first.config.preset}, seeds "
        f"{seeds[0]} .. {seeds[-1]}",
        "",
        "The runs searched independently; the merged front is their fronts' members that no member of "
        "any run dominates (validation objectives). Each run's own report: "
        "`evojax-prune report GROUP_DIR/run-<i>`.",
        "",
        "## Key numbers",
        "",
        f"- Merged front: **{len(group.merged_run)} members** from {len(set(group.merged_run.tolist()))} "
        f"of the {len(group.runs)} runs, keeping {int(merged.masks.sum(axis=1).min())} to "
        f"{int(merged.masks.sum(axis=1).max())} of {merged.masks.shape[1]} {units}; hypervolume "
        f"**{group.hypervolume:.4f}**.",
        f"- The runs' hypervolumes: mean **{spread['mean']:.4f}**, std {spread['std']:.4f}, least "
        f"{spread['min']:.4f}, most {spread['max']:.4f}.",
        f"- Best on test, each metric's own member: accuracy **{best['accuracy'][1]:.4f}** "
        f"({origin(best['accuracy'][0])}), {score} AUROC **{best['auroc'][1]:.4f}** "
        f"({origin(best['auroc'][0])}); run 0's baseline (all {units}): accuracy "
        f"{first.baseline_test['accuracy']:.4f}, {score} AUROC {first.baseline_test['auroc']:.4f}.",
        "",
        "## Each run",
        "",
        f"| run | seed | front | hypervolume | best val accuracy | best val {score} AUROC | best test "
        "accuracy | members in the merged front | stopped by |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for index, run in enumerate(group.runs):
        stopped = (run.stopping or {}).get("reason", "generations")
        lines.append(
            f"| {index} | {run.seed} | {len(run.masks)} | {run.hypervolume:.4f} "
            f"| {run.validation['accuracy'].max():.4f} | {robustness(run.validation, kind).max():.4f} "
            f"| {run.test['accuracy'].max():.4f} | {int(np.sum(group.merged_run == index))} | {stopped} |"
        )
    lines += [
        "",
        "![each run's hypervolume and the merged front's](figures/run_hypervolumes.png)",
        "",
        "## The merged front",
        "",
        "Each point is a pruned head of one of the runs (merged_pareto.csv names its run and member); the "
        "red star is run 0's unpruned head.",
        "",
        "![merged front, pairwise projections](figures/front_pairs.png)",
        "",
        "![merged front in 3D](figures/front_3d.png)",
        "",
    ]
    return "\n".join(lines)
