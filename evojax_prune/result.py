"""The result's vocabulary, written once: ``SearchResult``, the metric names, the objectives.

Every layer that reads or writes a search's result (the evaluator, the loop, the
run directory, the report, the ensembles) takes these names from here: the
metrics a head is scored on (``METRIC_NAMES``), which AUROC the robustness
objective is (``robustness_metric``), the map from metrics to the minimised
objectives (``objectives``) and the hypervolume's reference point.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from evojax_prune.config import AUROC_KINDS, AurocKind, RunConfig

# The metrics of one head on one split, in the order of the evaluation cache's columns.
METRIC_NAMES = (
    "accuracy", "mem", "auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out", "epochs", "train_loss",
    "diverged",  # 1.0: the head's training diverged (TrainedPopulation.diverged)
)
REFERENCE_POINT = (1.0, 1.0, 1.0)  # every objective lies in [0, 1]
# Front members by what they are best at (``SearchResult.member_index``).
MEMBERS = ("accuracy", "mem", "auroc")
WORST = np.asarray(REFERENCE_POINT)  # a diverged head's objectives


def robustness_metric(auroc_kind: AurocKind) -> str:
    """The metric name of the AUROC the robustness objective uses (``OodConfig.auroc``).

    ``"exact"``: ``"auroc"`` (Mann-Whitney, ties half); ``"paper"``: ``"auroc_paper"``
    (the authors' 100-threshold trapezoid, docs/PROTOCOL.md).
    """
    if auroc_kind not in AUROC_KINDS:
        raise ValueError(f"auroc_kind must be one of {AUROC_KINDS}, got {auroc_kind!r}")
    return "auroc" if auroc_kind == "exact" else "auroc_paper"


def robustness(values: dict[str, Any], auroc_kind: AurocKind) -> np.ndarray:
    """The robustness objective's AUROC from a metric mapping (arrays or floats)."""
    return np.asarray(values[robustness_metric(auroc_kind)])


def objectives(values: dict[str, Any], auroc_kind: AurocKind) -> np.ndarray:
    """(..., 3) objectives as minimised, error, MEM and 1 - AUROC, from metric arrays (...,).

    ``auroc_kind`` picks the robustness measure (``OodConfig.auroc``). A head
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
        data (``METRIC_NAMES``; ``diverged`` is 1.0 for a head
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
        return objectives(self.validation, self.config.ood.auroc)

    def member_index(self, member: int | str) -> int:
        """The position in ``masks`` of a front member.

        Args:
          member: a position (negative counts from the end), or what the member
            is best at on the validation split: ``"accuracy"`` (ties: the fewest
            features), ``"mem"`` (the fewest features; ties: the best accuracy)
            or ``"auroc"`` (the robustness objective's AUROC; ties: the best
            accuracy).
        """
        count = len(self.masks)
        if isinstance(member, (int, np.integer)) and not isinstance(member, bool):
            if not -count <= member < count:
                raise ValueError(f"member = {member}: the front has {count} members")
            return int(member) % count
        accuracy = self.validation["accuracy"]
        size = self.masks.sum(axis=1)
        if member == "accuracy":
            keys = (size, -accuracy)  # np.lexsort: the last key first
        elif member == "mem":
            keys = (-accuracy, size)
        elif member == "auroc":
            keys = (-accuracy, -robustness(self.validation, self.config.ood.auroc))
        else:
            raise ValueError(f"member must be one of {MEMBERS} or a front position, got {member!r}")
        return int(np.lexsort(keys)[0])

    def __repr__(self) -> str:
        return (
            f"SearchResult(front of {len(self.masks)}, best test accuracy "
            f"{self.test['accuracy'].max():.3f} vs baseline {self.baseline_test['accuracy']:.3f}, "
            f"smallest MEM {self.validation['mem'].min():.3f}, hypervolume {self.hypervolume:.4f}, "
            f"{self.evaluations} evaluations in {self.wall_time:.1f} s)"
        )
