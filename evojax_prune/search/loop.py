"""The search: NSGA-II over feature masks, one generation at a time.

Each generation (ARCHITECTURE.md):

  NSGA2.ask -> offspring masks (K, D)                                    [jit]
  masks never seen before: train_population on the train split          [jit, one call]
  evaluate_population on the validation split and OoD validation data   [jit, one call]
  objectives (error, MEM, 1 - AUROC), minimised; NSGA2.tell              [jit]
  history line, checkpoint, progress                                     [host, once]

A head's objectives are a deterministic function of its mask (every head
starts from the same weights and sees the same minibatch order), so a mask is
trained once and its metrics cached (``MaskCache``). The trained heads of the
population are kept on the device (``TrainedHeads``; the all-ones baseline
trains in a row kept for it beside the initial population), so the
final front is scored on the test split and the OoD test data beside the
baseline without being trained again; only heads missing after a resume are
retrained. (On an H100 the authors' budget spent 14 of its 88 s outside its
generations, mostly training its front of 30 again for 600 epochs.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import moocore
import numpy as np

from evojax_prune import devices
from evojax_prune.config import RunConfig
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.result import METRIC_NAMES, REFERENCE_POINT, robustness
from evojax_prune.result import objectives as to_objectives
from evojax_prune.run import fingerprint as fingerprints
from evojax_prune.run import rundir, search_result
from evojax_prune.run.search_result import SearchResult
from evojax_prune.search import folds, lockstep, selection, stopping, strategy, warm_start
from evojax_prune.search.controls import RunControls, showing_progress
from evojax_prune.search.evaluation_cache import MaskCache
from evojax_prune.search.evaluator import MaskEvaluator
from evojax_prune.search.hypervolume import hypervolume

__all__ = ["MAX_SEED", "RunControls", "check_runs", "check_seed", "run_search", "run_searches"]

MAX_SEED = 2**32 - 1  # jax.random.PRNGKey keeps 32 bits of a seed: 2**32 would be seed 0

def run_search(
    features: FeatureSet | Sequence[FeatureSet],
    config: RunConfig,
    *,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    controls: RunControls | None = None,
    algorithm: Any = None,
    initial_masks: Any = None,
) -> SearchResult:
    """Runs MO-EvoPruneDeepTL on a FeatureSet: one search, one front.

    Args:
      features: the data (train / validation / test and OoD features), or a
        list of FeatureSets, one per cross-validation fold: a mask's metrics
        are then the means over the folds (``folds.py``, the authors' 5-fold
        SRSMAS and LEAVES) and the front's heads the first fold's.
      config: the run configuration (e.g. ``preset("quick")``).
      seed: the run's seed; the same seed on the same device gives the same front
        (on CPU also on any number of devices, ``config.engine.devices``).
      out_dir: run directory to write (config, history, checkpoint, front, summary);
        ``None`` keeps everything in memory. On several processes
        (``devices.initialize_distributed``) every process runs the same search
        and process 0 alone writes; resuming reads ``out_dir`` on every
        process, so it must be on a file system they share.
      resume: continue the run in ``out_dir`` from its last checkpoint.
      overwrite: replace an earlier run in ``out_dir``.
      controls: a time budget, a hypervolume patience and a per-generation
        callback (``RunControls``); not configuration, so a run may be resumed
        under others. A run stopped early is checkpointed and its front written
        as a finished run's, and ``resume=True`` with a larger budget or none
        continues it to ``config.search.generations``.
      algorithm: ``None`` runs NSGA-II on the three objectives (the method).
        An evosax population-based algorithm (e.g.
        ``evosax.algorithms.SimpleGA(population_size, solution=jnp.zeros(D))``)
        runs a single-objective search on the validation error instead, as
        EvoPruneDeepTL did, its genomes thresholded at 0.5 into masks; the
        reported front is then the lowest-error members.
      initial_masks: a warm start (``warm_start``): (K, D) bool / 0-1 masks,
        or the path of a ``.npy`` of them, of an earlier run's ``pareto.npz``
        or of its run directory; they take the first K places of the initial
        population (the first P if more). Checked before anything is written;
        ignored on resume (the checkpoint holds the population) unless they
        differ from those the run started with, which is refused.

    Returns:
      SearchResult; its ``stopping`` says why the search stopped and after
      which generation. Several seeds at once: ``run_searches``.
    """
    check_seed(seed)
    features, digest = _search_features(features, config)
    with showing_progress(_checked_controls(controls), config.search.generations) as controls:
        search = _search(features, config, seed=seed, out_dir=out_dir, resume=resume, overwrite=overwrite,
                         controls=controls, algorithm=algorithm, initial_masks=initial_masks,
                         features_digest=digest)
        return lockstep.drive([search], _each_alone)[0]


def run_searches(
    features: FeatureSet,
    config: RunConfig,
    *,
    runs: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    controls: RunControls | None = None,
    algorithm: Any = None,
    initial_masks: Any = None,
) -> lockstep.RunsResult:
    """R independent searches in lockstep, and the front merged over them.

    Seeds ``seed`` .. ``seed + runs - 1``: every generation's new masks of all
    runs train in one ``train_population`` call and are scored in one call
    (``lockstep.py``), each run exactly as ``run_search`` would run it alone.

    Args:
      features, config, algorithm, initial_masks: as ``run_search`` (one
        FeatureSet: a fold-averaged search runs its seeds one after another).
      runs: R >= 1.
      out_dir: a group directory: a run directory per run, ``run-0`` ..
        ``run-{R-1}``, and the merged front (``runs.json``, ``merged_pareto.csv``);
        every run directory is checked before any run starts.
      resume, overwrite: as ``run_search``, for every run of the group.
      controls: as ``run_search``, applied to each run on its own;
        ``on_generation`` gets every run's records, each with its ``run``.

    Returns:
      ``RunsResult``: each run's SearchResult and their merged front.
    """
    check_runs(runs)
    check_seed(seed, runs)
    if isinstance(features, (list, tuple)) and len(features) > 1:
        raise ValueError(f"run_searches: {len(features)} folds; several runs of a fold-averaged search run "
                         "one after another (one run_search call each)")
    features, digest = _search_features(features, config)
    with showing_progress(_checked_controls(controls), config.search.generations, runs) as controls:
        return lockstep.run_together(_search, features, config, seed=seed, runs=runs, out_dir=out_dir,
                                     resume=resume, overwrite=overwrite, controls=controls,
                                     algorithm=algorithm, initial_masks=initial_masks,
                                     features_digest=digest)


def check_runs(runs: int) -> None:
    """Refuses a number of runs that is not an integer >= 1."""
    if not (isinstance(runs, int) and not isinstance(runs, bool) and runs >= 1):
        raise ValueError(f"runs must be an integer >= 1, got {runs!r}")


def check_seed(seed: int, runs: int = 1, *, name: str = "seed") -> None:
    """Refuses a seed (and with ``runs``, the seeds ``seed`` .. ``seed + runs - 1``) outside
    [0, ``MAX_SEED``]: ``jax.random.PRNGKey`` keeps 32 bits, so a larger seed would alias a smaller one."""
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}")
    last = int(seed) + runs - 1
    if seed < 0 or last > MAX_SEED:
        seeds = f"{seed}" if runs == 1 else f"{seed} .. {last} ({runs} runs)"
        raise ValueError(f"{name} must be an integer in [0, {MAX_SEED}] (2**32 - 1: a seed keeps 32 bits), "
                         f"got {seeds}")


def _search_features(features, config: RunConfig):
    """The search's view of ``features`` (one FeatureSet, or a list of folds), checked, and the
    digest of the data given (``FeatureSet.digest``; of folds, ``fingerprint.folds_digest``)."""
    if isinstance(features, (list, tuple)):
        features = folds.check_folds(features)
        if len(features) == 1:
            features = features[0]
    if not isinstance(features, (FeatureSet, list)):
        raise TypeError(f"features must be a FeatureSet or a list of them, got {type(features).__name__}")
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    given = features if isinstance(features, list) else [features]
    for fold in given:
        fold.check_searchable()
    digest = fingerprints.folds_digest([fold.digest for fold in given])
    if isinstance(features, list):
        return [selection.search_view(fold, config.search) for fold in features], digest
    return selection.search_view(features, config.search), digest


def _checked_controls(controls: RunControls | None) -> RunControls:
    if controls is None:
        return RunControls()
    if not isinstance(controls, RunControls):
        raise TypeError(f"controls must be a RunControls, got {type(controls).__name__}")
    return controls


def _each_alone(requests: list[tuple[MaskEvaluator, np.ndarray]]) -> list[np.ndarray]:
    return [evaluator.train_and_score(masks) for evaluator, masks in requests]


def _search(features: FeatureSet, config: RunConfig, *, seed: int, out_dir, resume: bool, overwrite: bool,
            controls: RunControls, algorithm, initial_masks, features_digest: str, data=None,
            group: bool = False):
    """``run_search`` for one run: every check, then the run as a generator.

    Everything is checked here, before anything is deleted or written: the
    seed, the strategy, the warm start, the run directory
    (``rundir.prepare(check_only=True)``; ``group``: ``rundir.prepare_group``
    checked and prepares it), the devices and, resuming, what the run was
    started with, its checkpoint and history (every file of the run's own,
    ``run/fingerprint.py``). The generator returned prepares the run directory
    (an overwritten run's files are deleted only then), yields ``(evaluator,
    masks)`` whenever masks need training, takes their metric rows back
    (``MaskEvaluator.metrics``) and returns the SearchResult; for a finished
    run resumed, it returns the run's result as written and writes nothing.
    ``data``: ``device_data`` shared with other runs.
    """
    started = time.perf_counter()
    check_seed(seed)
    search = config.search
    first = features[0] if isinstance(features, list) else features  # folds agree on D and C
    length = config.head.chromosome_length(first.num_features)  # D, or neurons (HeadConfig.prune)
    evolver = strategy.build(search, length, algorithm)
    # Process 0 writes; the others only read, and only to resume.
    main = devices.is_main_process()
    seeds, seeds_record = _initial_masks(initial_masks, evolver.num_dims, evolver.population_size)
    run_path = None
    if out_dir is not None and (main or resume):
        run_path = Path(out_dir) if group else rundir.prepare(out_dir, resume=resume, overwrite=overwrite,
                                                              check_only=True)
    train_key, init_key, evolve_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    if config.train.training_seed is not None:  # every run's heads train as this seed's run's would
        train_key = jax.random.split(jax.random.PRNGKey(config.train.training_seed), 3)[0]
    # One row more than the initial population, so that the baseline trains beside it (a
    # steady-state search has no other call with a free row, and trained alone at the end,
    # the baseline costs a whole training).
    max_batch = max(evolver.population_size + 1, evolver.num_offspring)
    if isinstance(features, list):
        evaluator = folds.FoldEvaluator(features, config, train_key, max_batch)
        # The first fold's, as report and explain read it (they work on that fold), and every fold's.
        metadata = {**first.metadata, "folds": [fold.metadata for fold in features]}
    else:
        evaluator = MaskEvaluator(features, config, train_key, max_batch, data=data)
        metadata = features.metadata
    settings = {"config": config.to_dict(), "seed": seed, "features": metadata,
                "num_features": first.num_features, "num_classes": first.num_classes,
                "strategy": evolver.kind if algorithm is None else type(algorithm).__name__}
    fingerprint = fingerprints.make(config=config, seed=seed, features=features_digest,
                                    strategy=settings["strategy"], file_format=rundir.FORMAT,
                                    initial_masks=None if seeds_record is None else seeds_record["sha256"])
    recorded, restored = None, None
    if resume:
        # A run killed before its first checkpoint starts again from the beginning.
        from_start = rundir.resume_point(run_path) == "start"
        recorded = _check_recorded(run_path, settings, seeds_record, from_start)
        fingerprint = _resumed_fingerprint(run_path, recorded, fingerprint)
        if not from_start:
            restored = _restore(run_path, evolver, evaluator, init_key, fingerprint)
            finished = _finished_result(run_path, search, restored, controls)
            if finished is not None:
                return _finished_search(run_path, search, finished)
    settings[fingerprints.KEY] = fingerprint
    return _generations(
        features, config, seed, evolver, evaluator, settings, controls, seeds, seeds_record,
        run_path=run_path, write_path=run_path if main else None, resume=resume, restored=restored,
        overwrite=overwrite, prepare=not group, recorded=recorded, keys=(init_key, evolve_key),
        started=started, length=length,
    )


def _finished_search(run_path: Path, search, result: SearchResult):
    """The search of a finished run resumed: it says so once every run's checks passed, and returns
    the run's result as written, writing nothing."""
    ended = result.stopping or {}
    warnings.warn(f"{run_path}: the run is finished (generation {len(result.history) - 1} of "
                  f"{search.generations}, stopped by {ended.get('reason', 'generations')}); nothing to do, "
                  "its files are as they were", UserWarning, stacklevel=4)
    return result
    yield  # a generator, as every search is


def _resumed_fingerprint(run_path: Path, recorded: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of the run to resume: config.json's, once this call's data and strategy match
    it (its configuration and seed were compared with ``_check_recorded``); ours for a run from
    before fingerprints."""
    theirs = recorded.get(fingerprints.KEY)
    if not isinstance(theirs, dict):
        return ours
    for part in ("features", "strategy"):
        if theirs.get(part) != ours[part]:
            raise rundir.RunDirectoryError(
                f"{run_path}: cannot resume, the run was started with another "
                f"{fingerprints.PART_NAMES[part]} ({part} {theirs.get(part)!r} in config.json's fingerprint, "
                f"this call's {ours[part]!r})"
            )
    return theirs


def _finished_result(run_path: Path, search, restored, controls: RunControls) -> SearchResult | None:
    """The result of a finished run resumed (no generation left to run under ``controls``, its
    results written and whole), or None: the resumed run has generations or its results to write."""
    history = restored.history
    left = len(history) <= search.generations and controls.stopping.reason(history, restored.elapsed) is None
    if left or not all((run_path / name).is_file() for name in rundir.RESULT_FILES):
        return None
    try:
        result = SearchResult.load(run_path)
    except rundir.ForeignFileError:
        raise
    except rundir.RunFileError:  # damaged results: written again from the checkpoint
        return None
    if len(result.history) < len(history):  # results of an earlier session: the checkpoint's are newer
        return None
    return result


def _generations(features, config, seed, evolver, evaluator, settings, controls, seeds, seeds_record, *,
                 run_path, write_path, resume, restored, overwrite, prepare, recorded, keys, started,
                 length):
    """The run ``_search`` checked (``restored``: the checkpoint it resumes from, or None): the
    generator it returns."""
    search = config.search
    init_key, evolve_key = keys
    on_generation, rules = controls.on_generation, controls.stopping
    fingerprint = settings[fingerprints.KEY]
    if run_path is not None and prepare:  # only now is an overwritten run's directory emptied
        rundir.prepare(run_path, resume=resume, overwrite=overwrite)
    if restored is not None:
        state, history = restored.state, restored.history
        if restored.checkpoint.fallback:
            warnings.warn(restored.checkpoint.fallback, RuntimeWarning, stacklevel=3)
        if write_path is not None:
            rundir.set_aside(restored.checkpoint)
        if write_path is not None and recorded.get("stopping") != rules.to_dict():
            # The controls may change on resume (they are not what is searched); config.json's
            # ``stopping`` records those of the latest session.
            rundir.write_config_fields(write_path, recorded, stopping=rules.to_dict())
        started -= restored.elapsed
    else:
        if write_path is not None:
            rundir.write_config(write_path, {**settings, "training_plan": evaluator.training_plan(),
                                             "stopping": rules.to_dict(), "initial_masks": seeds_record})
        population = evolver.initial_population(init_key, seeds)
        if evaluator.keep_heads:  # the baseline trains with the initial population
            evaluator.baseline = np.ones(length, bool)
        objectives = yield from evaluator.objectives(evolver.masks(population))
        state = evolver.init(init_key, population, objectives)
        _keep_heads_of(state, evolver, evaluator)
        history = []
        _record(history, state, evolver, evaluator, started, 0, on_generation)
        _checkpoint(write_path, state, evaluator, history, started, fingerprint)

    stopped = None
    for generation in range(len(history), search.generations + 1):
        # After the last generation's record and checkpoint: a stopped run is a resumable one.
        stopped = rules.reason(history, time.perf_counter() - started)
        if stopped is not None:
            break
        ask_key, tell_key = jax.random.split(jax.random.fold_in(evolve_key, generation))
        offspring, state = evolver.ask(ask_key, state)
        objectives = yield from evaluator.objectives(evolver.masks(offspring))
        selected_at = time.perf_counter()
        state = jax.block_until_ready(evolver.tell(tell_key, offspring, objectives, state))
        evaluator.seconds["select"] = time.perf_counter() - selected_at
        _keep_heads_of(state, evolver, evaluator)
        _record(history, state, evolver, evaluator, started, generation, on_generation)
        _checkpoint(write_path, state, evaluator, history, started, fingerprint)

    if resume and write_path is not None:
        # A resumed run that ran no generation (stopped at once, or already finished) still holds
        # the history line a kill may have left past its checkpoint.
        rundir.write_history(write_path, history, fingerprint)
    ended = stopping.summary(stopped, rules, history, search.generations, time.perf_counter() - started)
    result = _final_front(features, config, seed, state, evolver, evaluator, history, started)
    result = dataclasses.replace(result, stopping=ended,
                                 folds=len(features) if isinstance(features, list) else 1,
                                 provenance={name: settings[name] for name in search_result.PROVENANCE_KEYS})
    # Every process ran the same selection on the same gathered objectives.
    devices.assert_same_on_every_process((result.masks, result.objectives), "the final fronts")
    if write_path is not None:
        search_result.write_results(write_path, result, fingerprint)
    return result


def _initial_masks(initial_masks, num_dims: int, population_size: int):
    """The warm start's (K, D) bool seeds (K <= P; D the strategy's mask length) and config.json's
    record of them, or (None, None)."""
    if initial_masks is None:
        return None, None
    if isinstance(initial_masks, (str, os.PathLike)):
        source = str(initial_masks)
        masks = warm_start.read_initial_masks(initial_masks, num_dims)
    else:
        source = None
        masks = warm_start.check_initial_masks(initial_masks, num_dims)
    masks = warm_start.for_population(masks, population_size, source=source or "initial_masks", stacklevel=4)
    return masks, warm_start.record(masks, source)


def _check_recorded(run_path, settings, seeds_record, from_start: bool) -> dict[str, Any]:
    """config.json of the run to resume, checked against this run's settings and warm start.

    Resuming from a checkpoint ignores the warm start (the checkpoint holds the
    population) unless it differs from the one the run started with; starting
    again (``from_start``) needs the very masks it started with.
    """
    recorded = rundir.read_config(run_path)
    for name in rundir.CONFIG_KEYS:
        ours, theirs = json.loads(json.dumps(settings[name])), recorded[name]
        if name == "config" and isinstance(theirs, dict):
            # How heads train is not what they learn: a run may resume with another engine.
            ours, theirs = _without_engine(ours), _without_engine(theirs)
        if theirs != ours:
            raise rundir.RunDirectoryError(
                f"{run_path}: cannot resume, the run was started with a different {name} "
                f"({_first_difference(ours, theirs, name)}; resume_search('{run_path}') takes the run's own "
                "settings)"
            )
    started_with = recorded.get("initial_masks")
    source = "none" if started_with is None else started_with.get("source") or "an array"
    if seeds_record is not None and (started_with or {}).get("sha256") != seeds_record["sha256"]:
        raise rundir.RunDirectoryError(
            f"{run_path}: cannot resume, the run was started with different initial masks ({source}); "
            "resume without initial_masks="
        )
    if from_start and started_with is not None and seeds_record is None:
        raise rundir.RunDirectoryError(
            f"{run_path}: cannot resume, the run was killed before its first checkpoint and starts again, "
            f"which needs the initial masks it was started with ({source}): pass them (initial_masks=FILE)"
        )
    return recorded


def _first_difference(ours: Any, theirs: Any, where: str) -> str:
    """The first setting in which two config.json values differ, with both values."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs), key=str):
            if ours.get(key) != theirs.get(key):
                return _first_difference(ours.get(key), theirs.get(key), f"{where}.{key}")
    return f"{where}: the run's {theirs!r}, this call's {ours!r}"


def _front_masks(state, evolver, evaluator) -> np.ndarray:
    """(F, L) bool: the distinct masks of the front (``SearchConfig.front``).

    ``"archive"``: the masks no evaluated mask dominates (moocore's
    non-dominated filter in float64 on the cached objectives; equal objective
    vectors are all kept, as rank 0 keeps them); ``"population"``: the
    population's own front.
    """
    if evaluator.config.search.front == "archive":
        masks = evaluator.cache.masks()
        objectives = evaluator.cached_objectives(masks)
        if isinstance(evolver, strategy.MultiObjective):
            return masks[moocore.is_nondominated(objectives, keep_weakly=True)]
        return masks[evolver.front(objectives)]
    masks = np.unique(evolver.masks(state.population), axis=0)
    return masks[evolver.front(evaluator.cached_objectives(masks))]


def _keep_heads_of(state, evolver, evaluator) -> None:
    """Keeps the trained heads of the population and of the front (the final front scores them)."""
    population = evolver.masks(state.population)
    if evaluator.config.search.front == "archive":
        population = np.concatenate([population, _front_masks(state, evolver, evaluator)])
    evaluator.retain_heads(population)


def _record(history, state, evolver, evaluator, started, generation, on_generation) -> None:
    front = _front_masks(state, evolver, evaluator)
    values = dict(zip(METRIC_NAMES, evaluator.cached_metrics(front).T, strict=True))
    objectives = to_objectives(values, evaluator.config.ood.auroc)
    trained_now = evaluator.trained_masks - (history[-1]["trained"] if history else 0)
    record = {
        "generation": generation,
        "evaluations": len(evaluator.cache),
        "trained": evaluator.trained_masks,
        "diverged": evaluator.diverged,
        "train_calls": evaluator.train_calls,
        "front_size": len(front),
        "hypervolume": hypervolume(objectives, REFERENCE_POINT),
        "best_accuracy": float(values["accuracy"].max()),
        "smallest_mem": float(values["mem"].min()),
        "best_auroc": float(robustness(values, evaluator.config.ood.auroc).max()),
        "train_seconds": evaluator.seconds["train"],
        "score_seconds": evaluator.seconds["score"],
        "select_seconds": evaluator.seconds.get("select", 0.0),
        "elapsed_seconds": time.perf_counter() - started,
    }
    if trained_now and evaluator.diverged == trained_now and not evaluator.warned_divergence:
        evaluator.warned_divergence = True
        warnings.warn(
            f"generation {generation}: every head trained ({trained_now}) diverged (a training loss "
            "not finite, or above 10 log C at its best epoch); they rank last. Lower train.learning_rate "
            f"(now {evaluator.config.train.learning_rate:g})", RuntimeWarning, stacklevel=3,
        )
    evaluator.seconds = {"train": 0.0, "score": 0.0}
    evaluator.diverged = 0
    evaluator.train_calls = []
    history.append(record)
    if on_generation is not None:
        on_generation(record)


def _checkpoint(run_path, state, evaluator, history, started, fingerprint) -> None:
    if run_path is None:
        return
    # History first: a kill between the two writes leaves a history one line
    # ahead of the checkpoint, which resume trims.
    rundir.write_history(run_path, history, fingerprint)
    rundir.write_checkpoint(
        run_path, [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state))],
        evaluator.cache.state_dict(), trained_masks=evaluator.trained_masks,
        elapsed=time.perf_counter() - started, generation=history[-1]["generation"], fingerprint=fingerprint,
    )


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a resumed run continues from: the search state, its history, the run time so far."""

    state: Any
    history: list[dict[str, Any]]
    elapsed: float
    checkpoint: rundir.Checkpoint


def _restore(run_path, evolver, evaluator, init_key, fingerprint) -> Restored:
    """The checkpoint and history of the run to resume, read and checked; writes nothing (config.json
    was checked before: ``_check_recorded``). Every file must be the run's own: the one whose
    fingerprint most of them do not share is refused by name (``rundir.check_same_run``)."""
    rundir.check_same_run({run_path / "config.json": fingerprint,
                           **{run_path / name: rundir.peek_fingerprint(run_path / name)
                              for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT, "history.jsonl")
                              if (run_path / name).is_file()}})
    # A state of the right structure to pour the saved leaves into.
    population = evolver.initial_population(init_key)
    template = evolver.init(init_key, population, np.zeros((evolver.population_size, 3), np.float32))
    leaves, treedef = jax.tree.flatten(template)
    checkpoint = rundir.read_checkpoint(run_path, leaves, evaluator.cache.num_features, fingerprint)
    # Lines past the checkpoint's are dropped on resume: damage there costs nothing.
    history = rundir.read_history(run_path, fingerprint, needed=checkpoint.generation + 1)
    if len(history) <= checkpoint.generation:
        raise rundir.RunFileError(
            run_path / "history.jsonl",
            f"holds {len(history)} generations, but {checkpoint.file.name} is after generation "
            f"{checkpoint.generation}", rundir.restart_remedy(run_path),
        )
    state = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in checkpoint.state_leaves])
    evaluator.cache = MaskCache.from_state_dict(evaluator.cache.num_features, checkpoint.cache_state)
    evaluator.trained_masks = checkpoint.trained_masks
    return Restored(state, history[: checkpoint.generation + 1], checkpoint.elapsed, checkpoint)


def _without_engine(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict in today's form (older ones held engine fields in ``train``), its engine dropped."""
    config = RunConfig.from_dict(config).to_dict()
    return {name: value for name, value in config.items() if name != "engine"}


def _final_front(features, config, seed, state, evolver, evaluator, history, started) -> SearchResult:
    front = _front_masks(state, evolver, evaluator)
    everything = np.concatenate([front, np.ones((1, front.shape[1]), bool)])
    scores, params = evaluator.final_scores(everything, features)
    order = np.argsort(-scores["validation"]["accuracy"][:-1], kind="stable")
    front_only = lambda values: {name: value[:-1][order] for name, value in values.items()}
    baseline = lambda values: {name: float(value[-1]) for name, value in values.items()}
    validation = front_only(scores["validation"])
    return SearchResult(
        masks=front[order],
        validation=validation,
        test=front_only(scores["test"]),
        params=jax.tree.map(lambda leaf: np.asarray(leaf)[:-1][order], params),
        baseline_validation=baseline(scores["validation"]),
        baseline_test=baseline(scores["test"]),
        baseline_params=jax.tree.map(lambda leaf: np.asarray(leaf)[-1], params),
        history=history,
        hypervolume=hypervolume(to_objectives(validation, config.ood.auroc), REFERENCE_POINT),
        evaluations=len(evaluator.cache),
        wall_time=time.perf_counter() - started,
        config=config,
        seed=seed,
    )
