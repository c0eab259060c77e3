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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune import devices, head
from evojax_prune.config import RunConfig
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.run import rundir
from evojax_prune.score import evaluate
from evojax_prune.search import stopping, strategy, warm_start
from evojax_prune.search.evaluation_cache import METRIC_NAMES, MaskCache, TrainedHeads
from evojax_prune.search.hypervolume import hypervolume
from evojax_prune.search.result import REFERENCE_POINT, SearchResult
from evojax_prune.search.result import objectives as to_objectives
from evojax_prune.train import trainer

__all__ = ["REFERENCE_POINT", "SearchResult", "run_search"]

def bucket_size(count: int, max_batch: int) -> int:
    """How many heads a call that trains ``count`` new masks is padded to.

    More than half of ``max_batch``: ``max_batch`` itself, so that a
    generational search compiles one shape for its initial population and its
    generations (the authors' budget run generationally trains 30 and then 34
    masks: one compiled program, not two, and compiling one costs seconds).
    Fewer: the next power of two, so that a steady-state search (2 offspring at
    a time) is not padded to the population. More than ``max_batch``:
    multiples of it.
    """
    if count > max_batch:
        return -(-count // max_batch) * max_batch
    if 2 * count > max_batch:
        return max_batch
    return min(max_batch, 1 << max(count - 1, 0).bit_length())


class MaskEvaluator:
    """Trains and scores masks on the validation data, each distinct mask once.

    Masks not in the cache are trained together in one ``train_population``
    call, padded to a bucket (``bucket_size``) and then to a multiple of the
    device count, so that a run compiles a handful of shapes instead of one per
    count and every device gets as many heads.

    The data is placed on every device of the mesh once, here. On several
    hosts every process holds the same evaluator: the metrics come back to
    every process, so the caches stay equal.
    """

    def __init__(self, features: FeatureSet, config: RunConfig, train_key: jax.Array, max_batch: int):
        self.config = config
        self.train_key = train_key
        self.max_batch = max_batch
        self.num_classes = features.num_classes
        self.mesh = devices.mesh_for(config.engine.devices)
        everywhere = devices.replicated(self.mesh)
        self.x_train, self.y_train = devices.put((features.x_train, features.y_train), everywhere)
        self.x_val, self.y_val = devices.put((features.x_val, features.y_val), everywhere)
        self.ood_val = devices.put(features.ood_val, everywhere)
        self.num_features = features.num_features
        self.cache = MaskCache(config.head.chromosome_length(features.num_features))
        self.heads = TrainedHeads()  # the trained heads of the masks the search still holds
        self.baseline: np.ndarray | None = None  # trained beside the next call's masks if room is left
        # Kept while the population's heads fit the memory budget (twice it at the peak of a
        # generation: the population's heads and the generation's); a larger population has its
        # front trained again at the end instead, as the heads' memory would bound P.
        head_bytes = head.param_bytes(features.num_features, features.num_classes, config.head.hidden,
                                      config.head.hidden_layers)
        self.keep_heads = max_batch * head_bytes <= config.engine.memory_budget_mb * 2**20
        self.seconds = {"train": 0.0, "score": 0.0}
        self.trained_masks = 0
        self.train_calls: list[list[int]] = []  # [padded, trained] per call since the last history record
        self.diverged = 0  # of the heads trained since the last history record
        self.warned_divergence = False

    def metrics(self, masks: np.ndarray) -> np.ndarray:
        """(K, D) bool -> (K, len(METRIC_NAMES)) float64 validation metrics."""
        found, values = self.cache.lookup(masks)
        if not found.all():
            fresh = np.unique(masks[~found], axis=0)
            for start in range(0, len(fresh), self.max_batch):  # one call per generation in practice
                self.cache.insert(fresh[start:start + self.max_batch],
                                  self._train_and_score(fresh[start:start + self.max_batch]))
            found, values = self.cache.lookup(masks)
        return values

    def objectives(self, masks: np.ndarray) -> np.ndarray:
        values = self.metrics(masks)
        return to_objectives(dict(zip(METRIC_NAMES, values.T, strict=True)), self.config.odin.auroc)

    def _padded(self, masks: np.ndarray, at_least: int = 0) -> np.ndarray:
        """(K, D) -> (bucket, D): max(``bucket_size``, ``at_least``), up to a multiple of the devices.

        The padding repeats a real mask and is never trained (``num_trained``):
        the bucket keeps the compiled shape, not the work.
        """
        count = len(masks)
        bucket = devices.padded_size(max(bucket_size(count, self.max_batch), at_least), self.mesh.size)
        return np.concatenate([masks, np.repeat(masks[:1], bucket - count, axis=0)])

    def training_plan(self) -> dict[str, Any]:
        """How the generations' largest bucket trains (``trainer.training_plan``), for config.json."""
        local = devices.padded_size(self.max_batch, self.mesh.size) // self.mesh.size
        plan = trainer.training_plan(self.config, local, self.num_features, self.num_classes, self.mesh)
        return {"population": local, **plan.to_dict()}

    def train(self, masks: np.ndarray) -> trainer.TrainedPopulation:
        """Trains (K, D) masks in a padded bucket; returns the K trained heads (device arrays)."""
        trained = self._train_padded(self._padded(masks), len(masks))
        return jax.tree.map(lambda leaf: leaf[: len(masks)], trained)

    def _train_padded(self, padded: np.ndarray, count: int) -> trainer.TrainedPopulation:
        """Trains the first ``count`` masks of a padded bucket (the rest keep the shape only)."""
        self.train_calls.append([len(padded), count])
        return trainer.train_population(
            self.train_key, padded, self.x_train, self.y_train, self.config,
            num_classes=self.num_classes, num_trained=count,
        )

    def _train_and_score(self, masks: np.ndarray) -> np.ndarray:
        padded = self._padded(masks)
        count = len(masks)
        if self.baseline is not None and count < len(padded):  # a padding row trains it for free
            padded[count] = self.baseline
            count, self.baseline = count + 1, None
        started = time.perf_counter()
        trained = jax.block_until_ready(self._train_padded(padded, count))
        if self.keep_heads:
            self.heads.add(padded[:count], trained)
        scored_at = time.perf_counter()
        scores = evaluate.evaluate_population(
            trained.params, padded, self.x_val, self.y_val, self.ood_val, self.config,
            train=(self.x_train, self.y_train),
        )
        values = _metric_rows(scores, trained)
        self.seconds["train"] += scored_at - started
        self.seconds["score"] += time.perf_counter() - scored_at
        self.trained_masks += len(masks)
        self.diverged += int(values[: len(masks), METRIC_NAMES.index("diverged")].sum())
        return values[: len(masks)]

    def retain_heads(self, masks: np.ndarray) -> None:
        """Keeps the trained heads of ``masks`` and of the baseline; lets the others go."""
        if self.keep_heads:
            self.heads.retain(np.concatenate([masks, np.ones((1, masks.shape[1]), bool)]))


def _metric_rows(scores: evaluate.PopulationMetrics, trained: trainer.TrainedPopulation) -> np.ndarray:
    columns = {name: getattr(scores, name) for name in METRIC_NAMES[:7]}
    columns["epochs"] = trained.epochs
    columns["train_loss"] = trained.final_loss
    columns["diverged"] = trained.diverged
    host = devices.to_host(columns)  # the generation's one transfer to the host (to every host)
    return np.stack([np.asarray(host[name], np.float64) for name in METRIC_NAMES], axis=-1)


def run_search(
    features: FeatureSet,
    config: RunConfig,
    *,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
    algorithm: Any = None,
    time_budget: float | None = None,
    hv_patience: int | None = None,
    initial_masks: Any = None,
) -> SearchResult:
    """Runs MO-EvoPruneDeepTL on a FeatureSet.

    Args:
      features: the data (train / validation / test and OoD features).
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
      on_generation: called with each generation's history record (progress).
      algorithm: ``None`` runs NSGA-II on the three objectives (the method).
        An evosax population-based algorithm (e.g.
        ``evosax.algorithms.SimpleGA(population_size, solution=jnp.zeros(D))``)
        runs a single-objective search on the validation error instead, as
        EvoPruneDeepTL did, its genomes thresholded at 0.5 into masks; the
        reported front is then the lowest-error members.
      time_budget: seconds; stop after the first generation that ends past it
        (``stopping.Stopping``; a resumed run counts its earlier time). The
        run is checkpointed and its front written as a finished run's, and
        ``resume=True`` with a larger budget or none continues it to
        ``config.search.generations``.
      hv_patience: stop once the front's hypervolume has not improved for
        this many generations. Budget and patience are run controls, not
        configuration: a run may be resumed with others.
      initial_masks: a warm start (``warm_start``): (K, D) bool / 0-1 masks,
        or the path of a ``.npy`` of them, of an earlier run's ``pareto.npz``
        or of its run directory; they take the first K places of the initial
        population (the first P if more). Checked before anything is written;
        ignored on resume (the checkpoint holds the population) unless they
        differ from those the run started with, which is refused.

    Returns:
      SearchResult; its ``stopping`` says why the search stopped and after
      which generation.
    """
    if not isinstance(features, FeatureSet):
        raise TypeError(f"features must be a FeatureSet, got {type(features).__name__}")
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    started = time.perf_counter()
    search = config.search
    length = config.head.chromosome_length(features.num_features)  # D, or neurons (HeadConfig.prune)
    if search.min_active > length:
        raise ValueError(f"search.min_active = {search.min_active} exceeds the chromosome's {length} bits "
                         f"(HeadConfig.prune {config.head.prune!r})")
    evolver = strategy.build(search, length, algorithm)
    # Process 0 writes; the others only read, and only to resume.
    main = devices.is_main_process()
    controls = stopping.Stopping(time_budget, hv_patience)  # checked before anything is written
    seeds, seeds_record = _initial_masks(initial_masks, evolver.num_dims, evolver.population_size)
    run_path = None
    if out_dir is not None and (main or resume):
        run_path = rundir.prepare(out_dir, resume=resume, overwrite=overwrite)
    write_path = run_path if main else None
    train_key, init_key, evolve_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    # One row more than the initial population, so that the baseline trains beside it (a
    # steady-state search has no other call with a free row, and trained alone at the end,
    # the baseline costs a whole training).
    evaluator = MaskEvaluator(
        features, config, train_key, max_batch=max(evolver.population_size + 1, evolver.num_offspring)
    )
    settings = {"config": config.to_dict(), "seed": seed, "features": features.metadata,
                "num_features": features.num_features, "num_classes": features.num_classes,
                "strategy": evolver.kind if algorithm is None else type(algorithm).__name__}

    if resume:
        state, history, elapsed = _restore(run_path, settings, evolver, evaluator, init_key)
        _resume_controls(run_path, write_path, controls, seeds_record)
        started -= elapsed
    else:
        if write_path is not None:
            rundir.write_config(write_path, {**settings, "training_plan": evaluator.training_plan(),
                                             "stopping": controls.to_dict(), "initial_masks": seeds_record})
        population = evolver.initial_population(init_key, seeds)
        if evaluator.keep_heads:  # the baseline trains with the initial population
            evaluator.baseline = np.ones(length, bool)
        state = evolver.init(init_key, population, evaluator.objectives(evolver.masks(population)))
        evaluator.retain_heads(evolver.masks(state.population))
        history = []
        _record(history, state, evolver, evaluator, started, 0, on_generation)
        _checkpoint(write_path, state, evaluator, history, started)

    stopped = None
    for generation in range(len(history), search.generations + 1):
        # After the last generation's record and checkpoint: a stopped run is a resumable one.
        stopped = controls.reason(history, time.perf_counter() - started)
        if stopped is not None:
            break
        ask_key, tell_key = jax.random.split(jax.random.fold_in(evolve_key, generation))
        offspring, state = evolver.ask(ask_key, state)
        objectives = evaluator.objectives(evolver.masks(offspring))
        selected_at = time.perf_counter()
        state = jax.block_until_ready(evolver.tell(tell_key, offspring, objectives, state))
        evaluator.seconds["select"] = time.perf_counter() - selected_at
        evaluator.retain_heads(evolver.masks(state.population))
        _record(history, state, evolver, evaluator, started, generation, on_generation)
        _checkpoint(write_path, state, evaluator, history, started)

    if resume and write_path is not None:
        # A resumed run that ran no generation (stopped at once, or already finished) still holds
        # the history line a kill may have left past its checkpoint.
        rundir.write_history(write_path, history)
    ended = stopping.summary(stopped, controls, history, search.generations, time.perf_counter() - started)
    result = _final_front(features, config, seed, state, evolver, evaluator, history, started)
    result = dataclasses.replace(result, stopping=ended)
    # Every process ran the same selection on the same gathered objectives.
    devices.assert_same_on_every_process((result.masks, result.objectives), "the final fronts")
    if write_path is not None:
        rundir.write_results(write_path, result)
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


def _resume_controls(run_path, write_path, controls, seeds_record) -> None:
    """A resumed run: its warm start must be the one it started with; its controls are recorded.

    The time budget and the patience may change (they are not what is searched);
    config.json's ``stopping`` then records those of the latest session.
    """
    recorded = rundir.read_config(run_path)
    started_with = recorded.get("initial_masks")
    if seeds_record is not None and (started_with or {}).get("sha256") != seeds_record["sha256"]:
        raise rundir.RunDirectoryError(
            f"{run_path}: cannot resume, the run was started with different initial masks "
            f"({'none' if started_with is None else started_with.get('source') or 'an array'}); "
            "resume without --initial-masks"
        )
    if write_path is not None and recorded.get("stopping") != controls.to_dict():
        rundir.write_config_fields(write_path, recorded, stopping=controls.to_dict())


def _front_masks(state, evolver, evaluator) -> np.ndarray:
    """(F, D) bool: the distinct masks of the population's front."""
    masks = np.unique(evolver.masks(state.population), axis=0)
    return masks[evolver.front(evaluator.objectives(masks))]


def _record(history, state, evolver, evaluator, started, generation, on_generation) -> None:
    front = _front_masks(state, evolver, evaluator)
    values = dict(zip(METRIC_NAMES, evaluator.metrics(front).T, strict=True))
    objectives = to_objectives(values, evaluator.config.odin.auroc)
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
        "best_auroc": float(values["auroc"].max()),
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


def _checkpoint(run_path, state, evaluator, history, started) -> None:
    if run_path is None:
        return
    # History first: a kill between the two writes leaves a history one line
    # ahead of the checkpoint, which resume trims.
    rundir.write_history(run_path, history)
    rundir.write_checkpoint(
        run_path, [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state))],
        evaluator.cache.state_dict(), trained_masks=evaluator.trained_masks,
        elapsed=time.perf_counter() - started, generation=history[-1]["generation"],
    )


def _restore(run_path, settings, evolver, evaluator, init_key):
    recorded = rundir.read_config(run_path)
    for name in rundir.CONFIG_KEYS:
        ours, theirs = json.loads(json.dumps(settings[name])), recorded[name]
        if name == "config" and isinstance(theirs, dict):
            # How heads train is not what they learn: a run may resume with another engine.
            ours, theirs = _without_engine(ours), _without_engine(theirs)
        if theirs != ours:
            raise rundir.RunDirectoryError(
                f"{run_path}: cannot resume, the run was started with a different {name}"
            )
    # A state of the right structure to pour the saved leaves into.
    population = evolver.initial_population(init_key)
    template = evolver.init(init_key, population, np.zeros((evolver.population_size, 3), np.float32))
    leaves, treedef = jax.tree.flatten(template)
    history = rundir.read_history(run_path)
    checkpoint = rundir.read_checkpoint(run_path, leaves, evaluator.cache.num_features)
    if checkpoint.fallback:
        warnings.warn(checkpoint.fallback, RuntimeWarning, stacklevel=3)
    if len(history) <= checkpoint.generation:
        raise rundir.RunFileError(
            run_path / "history.jsonl",
            f"holds {len(history)} generations, but {checkpoint.file.name} is after generation "
            f"{checkpoint.generation}", rundir.restart_remedy(run_path),
        )
    state = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in checkpoint.state_leaves])
    evaluator.cache = MaskCache.from_state_dict(evaluator.cache.num_features, checkpoint.cache_state)
    evaluator.trained_masks = checkpoint.trained_masks
    return state, history[: checkpoint.generation + 1], checkpoint.elapsed


def _without_engine(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict in today's form (older ones held engine fields in ``train``), its engine dropped."""
    config = RunConfig.from_dict(config).to_dict()
    return {name: value for name, value in config.items() if name != "engine"}


def _final_front(features, config, seed, state, evolver, evaluator, history, started) -> SearchResult:
    front = _front_masks(state, evolver, evaluator)
    everything = np.concatenate([front, np.ones((1, front.shape[1]), bool)])
    # Padded to the generations' largest bucket, so that scoring (and training, for heads
    # missing after a resume) reuses the generations' compiled programs (the authors' budget
    # at 1 epoch on a 2-core CPU: 27.2 s against 31.2 s when the front was retrained).
    padded = evaluator._padded(everything, at_least=evaluator.max_batch)
    missing = evaluator.heads.missing(everything)
    if missing.any():
        retrain = evaluator._padded(everything[missing], at_least=evaluator.max_batch)
        evaluator.heads.add(everything[missing], evaluator._train_padded(retrain, int(missing.sum())))
    trained = evaluator.heads.stack(padded)  # padding rows: the first head again, as in the masks
    scores = {}
    for split, (x, y, ood) in {
        "validation": (features.x_val, features.y_val, features.ood_val),
        "test": (features.x_test, features.y_test, features.ood_test),
    }.items():
        scored = evaluate.evaluate_population(trained.params, padded, x, y, ood, config,
                                              train=(evaluator.x_train, evaluator.y_train))
        rows = _metric_rows(scored, trained)[: len(everything)]
        scores[split] = dict(zip(METRIC_NAMES, rows.T, strict=True))
    order = np.argsort(-scores["validation"]["accuracy"][:-1], kind="stable")
    params = jax.tree.map(lambda leaf: leaf[: len(everything)], devices.to_host(trained.params))
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
        hypervolume=hypervolume(to_objectives(validation, config.odin.auroc), REFERENCE_POINT),
        evaluations=len(evaluator.cache),
        wall_time=time.perf_counter() - started,
        config=config,
        seed=seed,
    )
