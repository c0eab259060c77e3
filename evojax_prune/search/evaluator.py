"""Training and scoring a search's masks: each distinct mask once, in padded buckets.

``MaskEvaluator`` holds one run's cache of metrics (``MaskCache``) and trained
heads (``TrainedHeads``); its ``metrics`` and ``objectives`` are generators
that yield the masks needing training, so that the driver of the search
decides how they train: alone (``MaskEvaluator.train_and_score``) or
together with other runs' masks in one call (``train_and_score_together``,
``lockstep.py``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune import devices
from evojax_prune.config import RunConfig
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.result import METRIC_NAMES
from evojax_prune.result import objectives as to_objectives
from evojax_prune.score import evaluate
from evojax_prune.search.evaluation_cache import MaskCache, TrainedHeads
from evojax_prune.train import memory, trainer


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

    The data is placed on every device of the mesh once (``device_data``;
    the runs of ``run_searches(runs=R)`` share it). On several hosts every
    process holds the same evaluator: the metrics come back to every process,
    so the caches stay equal.

    ``metrics`` and ``objectives`` are generators: they yield ``(self,
    masks)``, masks that need training (``(K, L)``, at most ``max_batch``),
    and take their (K, metrics) rows back, so that whoever drives the search decides how they are trained
    (``train_and_score`` for one run; ``train_and_score_together`` for the
    masks of several runs in one call).
    """

    def __init__(self, features: FeatureSet, config: RunConfig, train_key: jax.Array, max_batch: int,
                 data: tuple[jax.Array, ...] | None = None):
        self.config = config
        self.train_key = train_key
        self.max_batch = max_batch
        self.num_classes = features.num_classes
        self.mesh = devices.mesh_for(config.engine.devices)
        self.data = device_data(features, self.mesh) if data is None else data
        self.x_train, self.y_train, self.x_val, self.y_val, self.ood_val = self.data
        self.num_features = features.num_features
        self.cache = MaskCache(config.head.chromosome_length(features.num_features))
        self.heads = TrainedHeads()  # the trained heads of the masks the search still holds
        self.baseline: np.ndarray | None = None  # trained beside the next call's masks if room is left
        # Kept while the population's heads fit the memory budget (twice it at the peak of a
        # generation: the population's heads and the generation's); a larger population has its
        # front trained again at the end instead, as the heads' memory would bound P.
        head_bytes = memory.param_bytes(features.num_features, features.num_classes, config.head.hidden,
                                        config.head.hidden_layers)
        self.keep_heads = max_batch * head_bytes <= memory.budget_bytes(config.engine.memory_budget_mb)
        self.seconds = {"train": 0.0, "score": 0.0}
        self.trained_masks = 0
        self.train_calls: list[list[int]] = []  # [padded, trained] per call since the last history record
        self.diverged = 0  # of the heads trained since the last history record
        self.warned_divergence = False

    def metrics(self, masks: np.ndarray):
        """(K, L) bool -> (K, len(METRIC_NAMES)) float64 validation metrics (a generator, see above)."""
        found, values = self.cache.lookup(masks)
        if not found.all():
            fresh = np.unique(masks[~found], axis=0)
            for start in range(0, len(fresh), self.max_batch):  # one call per generation in practice
                part = fresh[start:start + self.max_batch]
                self.cache.insert(part, (yield self, part))
            found, values = self.cache.lookup(masks)
        return values

    def objectives(self, masks: np.ndarray):
        """(K, L) bool -> (K, 3) objectives (a generator, as ``metrics``)."""
        values = yield from self.metrics(masks)
        return to_objectives(dict(zip(METRIC_NAMES, values.T, strict=True)), self.config.ood.auroc)

    def cached_metrics(self, masks: np.ndarray) -> np.ndarray:
        """``metrics`` of masks evaluated before (the population's)."""
        found, values = self.cache.lookup(masks)
        if not found.all():
            raise KeyError(f"MaskEvaluator: {int((~found).sum())} of {len(found)} masks were never evaluated")
        return values

    def cached_objectives(self, masks: np.ndarray) -> np.ndarray:
        values = self.cached_metrics(masks)
        return to_objectives(dict(zip(METRIC_NAMES, values.T, strict=True)), self.config.ood.auroc)

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

    def train_and_score(self, masks: np.ndarray) -> np.ndarray:
        """(K, L) bool masks, trained and scored now -> (K, len(METRIC_NAMES)) float64 rows."""
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
        values = metric_rows(scores, trained)
        self.seconds["train"] += scored_at - started
        self.seconds["score"] += time.perf_counter() - scored_at
        self.trained_masks += len(masks)
        self.diverged += int(values[: len(masks), METRIC_NAMES.index("diverged")].sum())
        return values[: len(masks)]

    def final_scores(self, masks: np.ndarray, features: FeatureSet) -> tuple[dict[str, dict], Any]:
        """The (K, L) ``masks`` scored on ``features``' validation and test data with their trained heads.

        Heads missing (after a resume) are trained again. Padded to the
        generations' largest bucket, so that scoring (and training) reuses the
        generations' compiled programs (the authors' budget at 1 epoch on a
        2-core CPU: 27.2 s against 31.2 s when the front was retrained).

        Returns ``{"validation": metrics, "test": metrics}`` (name -> (K,)
        float64) and the K heads as HeadParams of host arrays.
        """
        padded = self._padded(masks, at_least=self.max_batch)
        missing = self.heads.missing(masks)
        if missing.any():
            retrain = self._padded(masks[missing], at_least=self.max_batch)
            self.heads.add(masks[missing], self._train_padded(retrain, int(missing.sum())))
        trained = self.heads.stack(padded)  # padding rows: the first head again, as in the masks
        scores = {}
        for split, (x, y, ood) in {
            "validation": (features.x_val, features.y_val, features.ood_val),
            "test": (features.x_test, features.y_test, features.ood_test),
        }.items():
            scored = evaluate.evaluate_population(trained.params, padded, x, y, ood, self.config,
                                                  train=(self.x_train, self.y_train))
            rows = metric_rows(scored, trained)[: len(masks)]
            scores[split] = dict(zip(METRIC_NAMES, rows.T, strict=True))
        params = jax.tree.map(lambda leaf: np.asarray(leaf)[: len(masks)], devices.to_host(trained.params))
        return scores, params

    def retain_heads(self, masks: np.ndarray) -> None:
        """Keeps the trained heads of ``masks`` and of the baseline; lets the others go."""
        if self.keep_heads:
            self.heads.retain(np.concatenate([masks, np.ones((1, masks.shape[1]), bool)]))


def device_data(features: FeatureSet, mesh) -> tuple[jax.Array, ...]:
    """(x_train, y_train, x_val, y_val, ood_val): the splits a search trains and scores on,
    placed on every device of ``mesh`` (replicated), once per search (or per group of runs)."""
    return devices.put((features.x_train, features.y_train, features.x_val, features.y_val, features.ood_val),
                       devices.replicated(mesh))


def metric_rows(scores: evaluate.PopulationMetrics, trained: trainer.TrainedPopulation) -> np.ndarray:
    columns = {name: getattr(scores, name) for name in METRIC_NAMES[:7]}
    columns["epochs"] = trained.epochs
    columns["train_loss"] = trained.final_loss
    columns["diverged"] = trained.diverged
    host = devices.to_host(columns)  # the generation's one transfer to the host (to every host)
    return np.stack([np.asarray(host[name], np.float64) for name in METRIC_NAMES], axis=-1)


def train_and_score_together(requests: list[tuple[MaskEvaluator, np.ndarray]]) -> list[np.ndarray]:
    """The masks of several runs' evaluators trained in one ``train_population`` call and scored in one.

    ``requests``: (evaluator, (K_i, L) masks) per run, evaluators of the same
    configuration and data (``device_data`` shared). Each run's heads start
    from its own key's weights and orders (``train_population(runs=)``), so
    each run's metrics are those it would get alone; a pending baseline rides
    along with its run's masks. The bucket is ``bucket_size`` of all the masks
    for the evaluators' summed ``max_batch``. Returns each request's
    (K_i, len(METRIC_NAMES)) rows.
    """
    if len(requests) == 1:
        evaluator, masks = requests[0]
        return [evaluator.train_and_score(masks)]
    first = requests[0][0]
    blocks = []
    for evaluator, masks in requests:
        if evaluator.baseline is not None:
            masks = np.concatenate([masks, evaluator.baseline[None]])
            evaluator.baseline = None
        blocks.append(masks)
    count = sum(len(block) for block in blocks)
    max_batch = sum(evaluator.max_batch for evaluator, _ in requests)
    bucket = devices.padded_size(bucket_size(count, max_batch), first.mesh.size)
    masks = np.concatenate([*blocks, np.repeat(blocks[0][:1], bucket - count, axis=0)])
    runs = np.concatenate([np.repeat(np.arange(len(blocks)), [len(block) for block in blocks]),
                           np.zeros(bucket - count, int)])
    keys = jnp.stack([evaluator.train_key for evaluator, _ in requests])
    started = time.perf_counter()
    trained = jax.block_until_ready(trainer.train_population(
        keys, masks, first.x_train, first.y_train, first.config, num_classes=first.num_classes,
        num_trained=count, runs=runs,
    ))
    scored_at = time.perf_counter()
    scores = evaluate.evaluate_population(trained.params, masks, first.x_val, first.y_val, first.ood_val,
                                          first.config, train=(first.x_train, first.y_train))
    values = metric_rows(scores, trained)
    finished = time.perf_counter()
    rows, start = [], 0
    for (evaluator, asked), block in zip(requests, blocks, strict=True):
        if evaluator.keep_heads:
            evaluator.heads.add(block, trained, first_row=start)
        mine = values[start:start + len(asked)]
        # The call is shared: every run's record counts its whole time.
        evaluator.seconds["train"] += scored_at - started
        evaluator.seconds["score"] += finished - scored_at
        evaluator.train_calls.append([bucket, count])
        evaluator.trained_masks += len(asked)
        evaluator.diverged += int(mine[:, METRIC_NAMES.index("diverged")].sum())
        rows.append(mine)
        start += len(block)
    return rows
