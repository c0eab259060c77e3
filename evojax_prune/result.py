"""The result's vocabulary, written once: the metric names, the objectives, the reference point.

Every layer that reads or writes a search's result (the evaluator, the loop, the
run directory, the report, the ensembles) takes these names from here: the
metrics a head is scored on (``METRIC_NAMES``), which AUROC the robustness
objective is (``robustness_metric``), the map from metrics to the minimised
objectives (``objectives``) and the hypervolume's reference point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evojax_prune.config import AUROC_KINDS, AurocKind

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
