"""A mask's objectives averaged over cross-validation folds, as the authors scored SRSMAS and LEAVES.

Two of the authors' data sets came as 5 folds (train / test pairs); their
fitness trained one head per fold and took the mean of the folds' accuracies
and AUROCs (docs/PROTOCOL.md, "Datasets"). ``run_search`` given a list of
FeatureSets, one per fold, does the same: ``FoldEvaluator`` trains and scores
each generation's new masks on every fold (one ``train_population`` and one
``evaluate_population`` call per fold, a loop over the F folds, not over
heads) and caches the fold means. MEM is a function of the mask alone.

The reported front's metrics are fold means too; its heads (``SearchResult.params``,
``pareto.npz``) are the first fold's, the only heads a run directory keeps.
Memory: each fold keeps its own data and trained population on the devices, F
times one run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from evojax_prune.config import RunConfig
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.result import METRIC_NAMES
from evojax_prune.search.evaluator import MaskEvaluator

_DIVERGED = METRIC_NAMES.index("diverged")


def fold_mean(rows: np.ndarray) -> np.ndarray:
    """(F, K, metrics) rows of F folds -> (K, metrics): the mean over folds, ``diverged`` the
    largest (a head that diverged on any fold ranks as diverged)."""
    rows = np.asarray(rows, np.float64)
    mean = rows.mean(axis=0)
    mean[:, _DIVERGED] = rows[:, :, _DIVERGED].max(axis=0)
    return mean


def check_folds(folds: Sequence[FeatureSet]) -> list[FeatureSet]:
    """The folds as a list; ValueError naming the first that does not match the first fold."""
    folds = list(folds)
    if not folds:
        raise ValueError("run_search: an empty list of folds; give one FeatureSet per fold")
    for index, fold in enumerate(folds):
        if not isinstance(fold, FeatureSet):
            raise TypeError(f"fold {index} must be a FeatureSet, got {type(fold).__name__}")
        first = folds[0]
        if fold.num_features != first.num_features or fold.class_names != first.class_names:
            raise ValueError(
                f"fold {index} ({fold.name!r}: D = {fold.num_features}, classes {list(fold.class_names)}) "
                f"does not match fold 0 ({first.name!r}: D = {first.num_features}, classes "
                f"{list(first.class_names)}); every fold must have the same features and classes"
            )
    return folds


class FoldEvaluator(MaskEvaluator):
    """``MaskEvaluator`` whose metrics are means over folds (one evaluator per fold inside).

    Its cache holds the fold means; the folds' own evaluators hold each fold's
    data and trained heads. Every fold trains from the same key, as the
    authors' seed reset gave.
    """

    def __init__(self, folds: Sequence[FeatureSet], config: RunConfig, train_key: jax.Array, max_batch: int):
        self.folds = [MaskEvaluator(fold, config, train_key, max_batch) for fold in folds]
        super().__init__(folds[0], config, train_key, max_batch, data=self.folds[0].data)

    def train_and_score(self, masks: np.ndarray) -> np.ndarray:
        rows = []
        for fold in self.folds:
            fold.baseline = self.baseline
            rows.append(fold.train_and_score(masks))
            self.train_calls.extend(fold.train_calls)
            fold.train_calls, fold.diverged = [], 0
        self.baseline = None
        values = fold_mean(rows)
        self.seconds = {name: sum(fold.seconds[name] for fold in self.folds) for name in ("train", "score")}
        self.trained_masks += len(masks)
        self.diverged += int(values[:, _DIVERGED].sum())
        return values

    def retain_heads(self, masks: np.ndarray) -> None:
        for fold in self.folds:
            fold.retain_heads(masks)

    def final_scores(self, masks: np.ndarray, features: Sequence[FeatureSet]) -> tuple[dict[str, dict], Any]:
        """Each split's metrics as fold means; the first fold's heads."""
        scored = [fold.final_scores(masks, data) for fold, data in zip(self.folds, features, strict=True)]
        scores = {}
        for split in ("validation", "test"):
            rows = np.stack([np.stack([metrics[split][name] for name in METRIC_NAMES], axis=-1)
                             for metrics, _ in scored])
            scores[split] = dict(zip(METRIC_NAMES, fold_mean(rows).T, strict=True))
        return scores, scored[0][1]
