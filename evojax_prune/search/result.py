"""What a search returns (``SearchResult``) and the one definition of its objectives."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from evojax_prune.config import RunConfig

REFERENCE_POINT = (1.0, 1.0, 1.0)  # every objective lies in [0, 1]
WORST = np.asarray(REFERENCE_POINT)  # a diverged head's objectives


def robustness(values: dict[str, np.ndarray], auroc_kind: str) -> np.ndarray:
    """The AUROC the robustness objective uses (``OdinConfig.auroc``): exact or the authors'."""
    return np.asarray(values["auroc"] if auroc_kind == "exact" else values["auroc_paper"])


def objectives(values: dict[str, np.ndarray], auroc_kind: str) -> np.ndarray:
    """(..., 3) objectives as minimised, error, MEM and 1 - AUROC, from metric arrays (...,).

    ``auroc_kind`` picks the robustness measure (``OdinConfig.auroc``). A head
    whose training diverged (``values["diverged"]``, ``TrainedPopulation.diverged``)
    gets the worst value of every objective, the reference point
    (1, 1, 1): it ranks behind every head that learned anything and adds
    nothing to a hypervolume, instead of entering the front as a chance-level
    member with a small MEM.
    """
    points = np.stack([1.0 - np.asarray(values["accuracy"]), np.asarray(values["mem"]),
                       1.0 - robustness(values, auroc_kind)], axis=-1)
    diverged = np.asarray(values.get("diverged", np.zeros(points.shape[:-1]))) > 0
    return np.where(diverged[..., None], WORST, points)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a finished search found.

    Attributes:
      masks: (K, D) bool, the final Pareto front (distinct masks), sorted by
        validation accuracy, best first.
      validation, test: metric name -> (K,) float64, the front scored on the
        validation split / OoD validation data and on the test split / OoD test
        data (``evaluation_cache.METRIC_NAMES``; ``diverged`` is 1.0 for a head
        whose training diverged, ``TrainedPopulation.diverged``).
      params: the front's trained heads, HeadParams of numpy arrays with a leading K axis.
      baseline_validation, baseline_test: metric name -> float, the all-ones mask.
      baseline_params: the all-ones head, HeadParams of numpy arrays.
      history: one dict per generation (generation 0 is the initial population).
      hypervolume: of the final front's validation objectives, reference (1, 1, 1).
      evaluations: masks evaluated (duplicates counted once).
      wall_time: seconds.
      config, seed: what produced it.
      folds: cross-validation folds its metrics are means over (``folds.py``);
        1 for one FeatureSet. With more, ``params`` are the first fold's heads.
      stopping: why the search stopped (``search.stopping.summary``: reason
        ``"generations"``, ``"time_budget"`` or ``"hv_patience"``, the
        generation it stopped after, the controls); None when unknown.
    """

    masks: np.ndarray
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    params: Any
    baseline_validation: dict[str, float]
    baseline_test: dict[str, float]
    baseline_params: Any
    history: list[dict[str, Any]]
    hypervolume: float
    evaluations: int
    wall_time: float
    config: RunConfig
    seed: int
    stopping: dict[str, Any] | None = None
    folds: int = 1

    @property
    def objectives(self) -> np.ndarray:
        """(K, 3) validation objectives as minimised: error, MEM, 1 - AUROC."""
        return objectives(self.validation, self.config.odin.auroc)

    def __repr__(self) -> str:
        return (
            f"SearchResult(front of {len(self.masks)}, best test accuracy "
            f"{self.test['accuracy'].max():.3f} vs baseline {self.baseline_test['accuracy']:.3f}, "
            f"smallest MEM {self.validation['mem'].min():.3f}, hypervolume {self.hypervolume:.4f}, "
            f"{self.evaluations} evaluations in {self.wall_time:.1f} s)"
        )
