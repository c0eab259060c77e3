"""The authors' published fronts, as a reference for a run: ``report --compare-published NAME``.

MO-EvoPruneDeepTL's authors (Poyatos et al., arXiv 2302.10253) published, for
each of their six data sets, the Pareto front merged over their 10 runs:
``gradcams/super_pareto_<file>.txt`` in github.com/ari-dasci/S-MOEvoPruneDeepTL
(commit ``SOURCE_COMMIT``), one line ``accuracy MEM AUROC`` per member. They
ship here unchanged in ``published/<name>.txt``. Two facts about those numbers
decide what a comparison means:

  * the authors had no validation split: they selected on the test split and
    report the same test numbers, so their fronts are tuned on the data they
    are measured on; a run of this project selects on validation by default
    (``SearchConfig.selection = "test"``, the paper preset, does as they did);
  * their AUROC is the one their code computed (thresholds at 100 in-distribution
    TPRs, ``OodConfig.auroc = "paper"``), of ODIN at T = 1000 without perturbation.

The paper's hypervolumes (reference (1, 1, 1) on the minimised error, MEM,
1 - AUROC) are ``PUBLISHED_HYPERVOLUME``; every one is reproduced to its four
decimals by ``hypervolume`` of the shipped points (tests/test_published.py),
every point of which is non-dominated.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any

import numpy as np

from evojax_prune.result import REFERENCE_POINT, objectives
from evojax_prune.search.hypervolume import hypervolume

SOURCE_REPOSITORY = "https://github.com/ari-dasci/S-MOEvoPruneDeepTL"
SOURCE_COMMIT = "67d5ad7869d03a6a498a487e27e934f88b643e6e"
# Our name -> the authors' file stem (gradcams/super_pareto_<stem>.txt) and the paper's label.
_AUTHORS = {
    "rps": ("rps", "RPS"),
    "painting": ("pinturas", "PAINTING"),
    "leaves": ("leaves", "LEAVES"),
    "cataract": ("ojos", "CATARACT"),
    "plants": ("plantas", "PLANTS"),
    "srsmas": ("srsmas", "SRSMAS"),
}
PUBLISHED_DATASETS = tuple(_AUTHORS)
# As printed in the paper, to four decimals.
PUBLISHED_HYPERVOLUME = {
    "rps": 0.8657, "painting": 0.9272, "leaves": 0.8495,
    "cataract": 0.6256, "plants": 0.3343, "srsmas": 0.8383,
}


def dataset_name(name: str) -> str:
    """The canonical name (``PUBLISHED_DATASETS``) of ``name``, case-insensitive.

    Raises:
      ValueError: ``name`` is none of them; the message lists the choices.
    """
    canonical = str(name).strip().lower()
    if canonical not in _AUTHORS:
        raise ValueError(f"no published front for {name!r}; expected one of {', '.join(PUBLISHED_DATASETS)}")
    return canonical


def label(name: str) -> str:
    """The paper's name of the data set, e.g. ``"CATARACT"`` for ``"cataract"``."""
    return _AUTHORS[dataset_name(name)][1]


def source_path(name: str) -> str:
    """The file in the authors' repository the shipped front was copied from."""
    return f"gradcams/super_pareto_{_AUTHORS[dataset_name(name)][0]}.txt"


def published_front(name: str) -> np.ndarray:
    """The authors' merged front: (K, 3) float64 of (accuracy, MEM, AUROC), in their file's order."""
    text = resources.files(__package__).joinpath("published", f"{dataset_name(name)}.txt").read_text()
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return np.array(rows, dtype=np.float64).reshape(len(rows), 3)


def published_hypervolume(name: str) -> float:
    """The hypervolume the paper prints for the data set (four decimals)."""
    return PUBLISHED_HYPERVOLUME[dataset_name(name)]


def minimised(points: np.ndarray) -> np.ndarray:
    """(K, 3) (accuracy, MEM, AUROC) -> (K, 3) (error, MEM, 1 - AUROC), the search's objectives."""
    points = np.asarray(points, np.float64)
    return objectives({"accuracy": points[:, 0], "mem": points[:, 1], "auroc": points[:, 2]}, "exact")


def front_hypervolume(points: np.ndarray) -> float:
    """Hypervolume of (K, 3) (accuracy, MEM, AUROC) points: reference (1, 1, 1), objectives minimised."""
    return hypervolume(minimised(points), REFERENCE_POINT)


def non_dominated(points: np.ndarray) -> np.ndarray:
    """(K,) bool: the (accuracy, MEM, AUROC) points no other point is at least as good as on all three
    objectives and better on one.

    In float64 here, not by the search's float32 sort (``ranking.non_dominated_rank``): the authors'
    accuracies hold float32 artefacts (0.8817204294666168 beside 0.8817204301075269) that float32
    would turn into ties, and a tie makes one of two such points dominated.
    """
    objectives = minimised(points)
    at_least = np.all(objectives[:, None, :] <= objectives[None, :, :], axis=-1)  # [j, i]: j <= i
    better = np.any(objectives[:, None, :] < objectives[None, :, :], axis=-1)
    return ~np.any(at_least & better, axis=0)


@dataclasses.dataclass(frozen=True)
class PublishedComparison:
    """A run's front beside the authors' published one for the same data set.

    Attributes:
      dataset: canonical name (``PUBLISHED_DATASETS``).
      ours, theirs: (K, 3) and (P, 3) float64 (accuracy, MEM, AUROC).
      ours_hypervolume, theirs_hypervolume: of the points as given, by ``front_hypervolume``.
      published_hypervolume: the paper's number for ``theirs``.
      ours_non_dominated, theirs_non_dominated: how many points no other point
        of the same front dominates (a run selected on validation can have test
        points that dominate each other).
      ours_description: which split and AUROC ``ours`` holds, for the record.
    """

    dataset: str
    ours: np.ndarray
    theirs: np.ndarray
    ours_hypervolume: float
    theirs_hypervolume: float
    published_hypervolume: float
    ours_non_dominated: int
    theirs_non_dominated: int
    ours_description: str = ""

    @staticmethod
    def _best(points: np.ndarray) -> np.ndarray:
        """The most accurate point; ties to the smaller MEM, then the higher AUROC."""
        order = np.lexsort((-points[:, 2], points[:, 1], -points[:, 0]))
        return points[order[0]]

    @property
    def ours_best(self) -> np.ndarray:
        """(3,) the most accurate point of ``ours``."""
        return self._best(self.ours)

    @property
    def theirs_best(self) -> np.ndarray:
        """(3,) the most accurate point of ``theirs``."""
        return self._best(self.theirs)

    def to_dict(self) -> dict[str, Any]:
        def side(points, value, count, best, **extra):
            best = dict(zip(("accuracy", "mem", "auroc"), best.tolist(), strict=True))
            return {"size": len(points), "non_dominated": count, "hypervolume": value,
                    "best_accuracy_point": best, "points": points.tolist(), **extra}

        return {
            "dataset": self.dataset,
            "hypervolume_reference": list(REFERENCE_POINT),
            "objectives": ["1 - accuracy", "mem", "1 - auroc"],
            "ours": side(self.ours, self.ours_hypervolume, self.ours_non_dominated, self.ours_best,
                         description=self.ours_description),
            "published": side(self.theirs, self.theirs_hypervolume, self.theirs_non_dominated,
                              self.theirs_best, published_hypervolume=self.published_hypervolume,
                              source=f"{SOURCE_REPOSITORY}/blob/{SOURCE_COMMIT}/{source_path(self.dataset)}"),
        }


def compare_to_published(ours: np.ndarray, name: str, description: str = "") -> PublishedComparison:
    """Our (K, 3) (accuracy, MEM, AUROC) front beside the authors' front ``name``.

    Both hypervolumes use the same reference (1, 1, 1) on the same minimised
    objectives (error, MEM, 1 - AUROC), so they can be read side by side.

    Raises:
      ValueError: ``name`` is not a published data set, or ``ours`` is not (K, 3).
    """
    name = dataset_name(name)
    ours = np.asarray(ours, np.float64)
    if ours.ndim != 2 or ours.shape[1] != 3 or len(ours) == 0:
        raise ValueError(f"compare_to_published: ours must be (K, 3) with K >= 1, got shape {ours.shape}")
    theirs = published_front(name)
    return PublishedComparison(
        dataset=name, ours=ours, theirs=theirs,
        ours_hypervolume=front_hypervolume(ours), theirs_hypervolume=front_hypervolume(theirs),
        published_hypervolume=published_hypervolume(name),
        ours_non_dominated=int(non_dominated(ours).sum()),
        theirs_non_dominated=int(non_dominated(theirs).sum()),
        ours_description=description,
    )
