"""Hypervolume of a front: the volume it dominates up to a reference point.

Exact, for any number of objectives, by moocore (the library pymoo delegates
to; Fonseca, Paquete and López-Ibáñez's algorithms). All objectives minimised.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np


def hypervolume(objectives: np.ndarray, reference: Sequence[float]) -> float:
    """Exact hypervolume of ``objectives (K, M)`` with respect to ``reference (M,)``.

    Points that do not strictly dominate the reference contribute nothing; an
    empty front has hypervolume 0.
    """
    objectives = np.asarray(objectives, np.float64)
    reference = np.asarray(reference, np.float64)
    if objectives.ndim != 2 or objectives.shape[1] != reference.shape[0]:
        raise ValueError(
            f"hypervolume: objectives must be (K, {reference.shape[0]}), got shape {objectives.shape}"
        )
    inside = np.all(objectives < reference, axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(objectives[inside], ref=reference))
