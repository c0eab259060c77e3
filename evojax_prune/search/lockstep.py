"""Several independent searches in lockstep, and the front merged over them.

MO-EvoPruneDeepTL's fronts were merged over 10 runs (docs/PROTOCOL.md). Here R
runs (seeds s .. s + R - 1) advance together: each run's search is a generator
(``loop._search``) that stops wherever it needs masks trained, and ``drive``
collects what every run asks for in one round and has it trained in one
``train_population`` call and scored in one ``evaluate_population`` call
(``evaluator.train_and_score_together``). A round is a generation for every run
still going (a run that resumed one generation behind, or stopped early by its
own controls, simply takes part in fewer rounds). Each head trains from its
own run's initial weights and minibatch order, in chunks that never mix runs,
so every run reaches the front it reaches alone.

Memory: the training call holds R times a run's heads (the trainer's chunks
bound its working memory, not the population); each run keeps its own trained
population (``TrainedHeads``) and cache; the data sits on the devices once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune import devices
from evojax_prune.result import REFERENCE_POINT
from evojax_prune.run import rundir
from evojax_prune.run.search_result import SearchResult
from evojax_prune.search import ranking
from evojax_prune.search.controls import RunControls
from evojax_prune.search.evaluation_cache import pack_masks
from evojax_prune.search.evaluator import device_data, train_and_score_together
from evojax_prune.search.hypervolume import hypervolume


def drive(searches: list[Generator], train_and_score: Callable[[list], list]) -> list[Any]:
    """Runs search generators to their end; returns what each returned.

    Each round, every unfinished search's request ``(evaluator, masks)`` goes to
    ``train_and_score`` in one list, and each gets its rows back.
    """
    results: list[Any] = [None] * len(searches)
    requests: dict[int, Any] = {}

    def advance(index: int, rows: Any) -> None:
        try:
            requests[index] = searches[index].send(rows)
        except StopIteration as finished:
            requests.pop(index, None)
            results[index] = finished.value

    for index in range(len(searches)):
        advance(index, None)
    while requests:
        waiting = sorted(requests)
        for index, rows in zip(waiting, train_and_score([requests[i] for i in waiting]), strict=True):
            advance(index, rows)
    return results


@dataclasses.dataclass(frozen=True)
class RunsResult:
    """What ``run_searches(runs=R)`` found: each run's result and the front merged over them.

    Attributes:
      runs: R SearchResults, run r with seed ``seed + r``.
      merged_run, merged_member: (F,) int, the run and the member (its index in
        that run's front) of each member of the merged front: the members of
        the R fronts that no other member of any front dominates (validation
        objectives), sorted by validation accuracy, best first.
      hypervolume: of the merged front's validation objectives, reference (1, 1, 1).
      run_hypervolumes: (R,) each run's own.
    """

    runs: tuple[SearchResult, ...]
    merged_run: np.ndarray
    merged_member: np.ndarray
    hypervolume: float
    run_hypervolumes: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """(F, L) bool, the merged front's masks."""
        return np.stack([self.runs[r].masks[m] for r, m in zip(self.merged_run, self.merged_member,
                                                                strict=True)])

    def metrics(self, split: str = "validation") -> dict[str, np.ndarray]:
        """The merged front's metrics on ``split`` ("validation" or "test"): name -> (F,)."""
        names = getattr(self.runs[0], split)
        return {name: np.asarray([getattr(self.runs[r], split)[name][m]
                                  for r, m in zip(self.merged_run, self.merged_member, strict=True)])
                for name in names}

    @classmethod
    def load(cls, group_dir: str | Path) -> RunsResult:
        """The finished group of runs in ``group_dir`` (``run_searches``' ``out_dir``), every file validated.

        Each run directory is read by ``SearchResult.load``; the merged front is
        merged again from them (``merge`` is deterministic) and must be the one
        ``runs.json`` records.
        """
        path = Path(group_dir)
        if not (path / "runs.json").is_file():
            raise rundir.RunDirectoryError(f"{path}: not a group of runs (no runs.json)")
        remedy = rundir.results_remedy(path)
        recorded = rundir.read_json_file(path / "runs.json", remedy)
        rundir.require_keys(path / "runs.json", recorded, ("runs", "merged"), remedy)
        try:
            directories = [path / run["directory"] for run in recorded["runs"]]
        except (KeyError, TypeError) as error:
            raise rundir.RunFileError(path / "runs.json", f"its runs are malformed ({error!r})",
                                      remedy) from None
        merged = merge([SearchResult.load(directory) for directory in directories])
        said = recorded["merged"]
        pairs = (merged.merged_run.tolist(), merged.merged_member.tolist())
        if (said.get("run"), said.get("member")) != pairs:
            raise rundir.RunFileError(path / "runs.json", "its merged front is not the one its runs' fronts "
                                      "make (a run directory replaced?)", remedy)
        return merged

    def spread(self) -> dict[str, float]:
        """Mean, standard deviation (ddof 0), least and most of the runs' hypervolumes."""
        values = self.run_hypervolumes
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max())}

    def __repr__(self) -> str:
        spread = self.spread()
        return (f"RunsResult({len(self.runs)} runs, merged front of {len(self.merged_run)}, hypervolume "
                f"{self.hypervolume:.4f}; per run {spread['mean']:.4f} +- {spread['std']:.4f} "
                f"[{spread['min']:.4f}, {spread['max']:.4f}])")


def merge(results: list[SearchResult]) -> RunsResult:
    """The non-dominated members of several runs' fronts (validation objectives), best accuracy first.

    A mask on several runs' fronts enters once, from the earliest run: with
    ``TrainConfig.training_seed`` (the authors' seed reset) it is the same head
    in every run, and a merged front of distinct masks is what they reported.
    """
    objectives = np.concatenate([result.objectives for result in results])
    run = np.concatenate([np.full(len(result.masks), index) for index, result in enumerate(results)])
    member = np.concatenate([np.arange(len(result.masks)) for result in results])
    keys = pack_masks(np.concatenate([result.masks for result in results]))
    first = np.zeros(len(keys), bool)
    first[np.unique(keys, return_index=True)[1]] = True  # np.unique's index: each key's first place
    front = (np.asarray(ranking.non_dominated_rank(objectives)) == 0) & first
    accuracy = np.concatenate([result.validation["accuracy"] for result in results])[front]
    order = np.lexsort((member[front], run[front], -accuracy))  # ties: the earlier run, the earlier member
    return RunsResult(
        runs=tuple(results),
        merged_run=run[front][order],
        merged_member=member[front][order],
        hypervolume=hypervolume(objectives[front], REFERENCE_POINT),
        run_hypervolumes=np.asarray([result.hypervolume for result in results]),
    )


def run_together(search: Callable[..., Generator], features, config, *, seed: int, runs: int,
                 out_dir: str | Path | None, resume: bool, overwrite: bool, controls: RunControls,
                 **options) -> RunsResult:
    """``run_searches``: R searches of ``search`` (``loop._search``) driven in lockstep.

    The group's run directories are all checked (``rundir.prepare_group``),
    then every search checks the rest of its run, and only then are the
    directories prepared (an overwritten group's files deleted), so that a bad
    one leaves everything as it was.
    """
    main = devices.is_main_process()
    paths: list[Path | None] = [None] * runs
    prepared = out_dir is not None and (main or resume)
    if out_dir is not None:
        paths = rundir.group_members(out_dir, runs)
        if prepared:
            rundir.prepare_group(out_dir, runs, resume=resume, overwrite=overwrite, check_only=True)
    data = device_data(features, devices.mesh_for(config.engine.devices))
    searches = [
        search(features, config, seed=seed + index, out_dir=paths[index], resume=resume, overwrite=False,
               controls=_tagged(controls, index), data=data, group=True, **options)
        for index in range(runs)
    ]
    if prepared:
        rundir.prepare_group(out_dir, runs, resume=resume, overwrite=overwrite)
    result = merge(drive(searches, train_and_score_together))
    if out_dir is not None and main:
        rundir.write_merged(Path(out_dir), result)
    return result


def _tagged(controls: RunControls, run: int) -> RunControls:
    """``controls`` whose callback sees each record with its ``run``."""
    if controls.on_generation is None:
        return controls
    on_generation = controls.on_generation
    return dataclasses.replace(controls, on_generation=lambda record: on_generation({**record, "run": run}))
