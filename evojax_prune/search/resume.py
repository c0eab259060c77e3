"""Resuming a run from what its directory records: ``resume_search`` and ``resume_searches``.

A run directory's config.json holds everything that fixes the run (its
configuration, seed, data set and warm start), so a run is continued from its
directory alone, whatever started it: the CLI (``run --out DIR --resume``) and
Python both come here, and a run started from one resumes from the other.
Only the engine (devices, chunking) and the run controls may be chosen anew;
what the run is cannot.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from evojax_prune.config import RunConfig
from evojax_prune.data import run_features
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.run import rundir
from evojax_prune.run.search_result import SearchResult
from evojax_prune.search import lockstep, loop
from evojax_prune.search.controls import RunControls

BUILT_IN_STRATEGY = "nsga2"


@dataclasses.dataclass(frozen=True)
class RecordedRun:
    """What a run directory (or a group's first run) says the run is.

    Attributes:
      path: the run directory, or the group directory.
      config: the run's configuration (config.json).
      seed: its seed (a group's first run's).
      runs: 1 for a run directory, R for a group of R runs.
      recorded: config.json's dict (the group's first run's).
    """

    path: Path
    config: RunConfig
    seed: int
    runs: int
    recorded: dict[str, Any]

    @property
    def initial_masks(self) -> str | None:
        """The warm start's file as recorded, when the run had one read from a file that is still there."""
        source = (self.recorded.get("initial_masks") or {}).get("source")
        return source if source is not None and Path(source).exists() else None


def read_recorded(out_dir: str | Path) -> RecordedRun:
    """The run (or group of runs) in ``out_dir`` as its files record it, checked resumable.

    Raises:
      rundir.RunDirectoryError: nothing to resume there (which file is missing, and what to do).
      rundir.RunFileError: config.json is damaged.
    """
    path = Path(out_dir)
    if not path.is_dir():
        raise rundir.RunDirectoryError(f"{path}: nothing to resume (no such directory); start the run "
                                       "with resume=False")
    members = set(rundir.group_member_names(path))
    if not (path / "config.json").exists() and members:
        runs = len(members)
        first = rundir.group_members(path, runs)[0]
        if {member.name for member in rundir.group_members(path, runs)} != members:
            raise rundir.RunDirectoryError(f"{path}: cannot resume, its run directories "
                                           f"{sorted(members)[:6]} are not a group's run-0 .. run-{runs - 1}")
    else:
        runs, first = 1, path
    rundir.resume_point(first)
    recorded = rundir.read_config(first)
    return RecordedRun(path=path, config=RunConfig.from_dict(recorded["config"]), seed=int(recorded["seed"]),
                       runs=runs, recorded=recorded)


def resume_search(out_dir: str | Path, features: Any = None, *, controls: RunControls | None = None,
                  engine: dict[str, Any] | None = None, initial_masks: Any = None) -> SearchResult:
    """Continues the run in ``out_dir`` with the settings it was started with (config.json).

    Args:
      out_dir: a run directory written by ``run_search`` or ``evojax-prune run``.
      features: the FeatureSet (or its path; for a fold-averaged run, the list
        of folds) the run was started with; ``None`` rebuilds the embedded
        digits, and any other data set must be given (it is checked against
        the run's record and fingerprint).
      controls: this session's run controls (``RunControls``).
      engine: ``EngineConfig`` fields to change (how heads train, not what
        they learn), e.g. ``{"devices": "1"}``.
      initial_masks: the warm start the run was started with, when config.json
        names no file that is still there (a run killed before its first
        checkpoint starts again and needs them); checked against its digest.

    Returns:
      The run's SearchResult; a finished run's as written, nothing rewritten.
    """
    run = read_recorded(out_dir)
    if run.runs > 1:
        raise rundir.RunDirectoryError(f"{run.path}: holds a group of {run.runs} runs; resume it with "
                                       "resume_searches")
    _check_strategy(run)
    return loop.run_search(recorded_features(run, features), _with_engine(run.config, engine), seed=run.seed,
                           out_dir=run.path, resume=True, controls=controls,
                           initial_masks=run.initial_masks if initial_masks is None else initial_masks)


def resume_searches(group_dir: str | Path, features: Any = None, *, controls: RunControls | None = None,
                    engine: dict[str, Any] | None = None, initial_masks: Any = None) -> lockstep.RunsResult:
    """``resume_search`` for a group of runs (``run_searches``): every run continued together."""
    run = read_recorded(group_dir)
    if run.runs == 1:
        raise rundir.RunDirectoryError(f"{run.path}: holds one run, not a group; resume it with "
                                       "resume_search")
    _check_strategy(run)
    return loop.run_searches(recorded_features(run, features), _with_engine(run.config, engine),
                             runs=run.runs, seed=run.seed, out_dir=run.path, resume=True, controls=controls,
                             initial_masks=run.initial_masks if initial_masks is None else initial_masks)


def _check_strategy(run: RecordedRun) -> None:
    strategy = run.recorded.get("strategy")
    if strategy != BUILT_IN_STRATEGY:
        raise rundir.RunDirectoryError(
            f"{run.path}: the run searched with the evosax algorithm {strategy!r}, which its files cannot "
            f"rebuild; resume it from Python: run_search(features, config, algorithm={strategy}(...), "
            "resume=True, out_dir=...)"
        )


def recorded_features(run: RecordedRun, features: Any = None):
    """The data the run searched: ``features`` checked against its record, or the embedded digits
    rebuilt (``run_features.read_run_features``); a list of FeatureSets for a fold-averaged run."""
    folds = (run.recorded.get("features") or {}).get("folds")
    if folds:
        if not isinstance(features, (list, tuple)) or len(features) != len(folds):
            raise ValueError(f"{run.path}: the run averaged its objectives over {len(folds)} folds; pass "
                             f"their {len(folds)} FeatureSets (features=[FOLD, ...])")
        return [fold if isinstance(fold, FeatureSet) else FeatureSet.load(fold) for fold in features]
    if isinstance(features, (list, tuple)):
        if len(features) != 1:
            raise ValueError(f"{run.path}: the run searched one FeatureSet, {len(features)} were given")
        features = features[0]
    return run_features.read_run_features(run.recorded, features, source=str(run.path))


def _with_engine(config: RunConfig, engine: dict[str, Any] | None) -> RunConfig:
    return config if not engine else config.replace(engine=engine, preset=config.preset)
