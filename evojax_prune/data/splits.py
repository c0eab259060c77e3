"""The in-distribution train / validation / test splits of an image data set.

Contract: :func:`make_splits` turns an :class:`~evojax_prune.data.images.ImageDataset`
into a :class:`SplitPlan`, indices into its splits (nothing is decoded). ``train`` is
required; a ``validation`` split is used as it is, else a stratified, seeded share of
train is held out (:func:`stratified_holdout`); likewise ``test``. The same data set,
fractions and seed give the same plan, and the plan's metadata records how it was made:
``extract`` writes it into the FeatureSet, and ``explain`` rebuilds a run's splits from it.

References: scikit-learn's ``train_test_split(stratify=labels)``, which draws the
held-out shares.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from evojax_prune.data.images import ImageDataset, ImageSplit


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Where each in-distribution split comes from.

    ``train``, ``val``, ``test``: (source split, (n,) int64 indices into it).
    ``metadata``: how the splits were made (JSON-serialisable).
    """

    train: tuple[ImageSplit, np.ndarray]
    val: tuple[ImageSplit, np.ndarray]
    test: tuple[ImageSplit, np.ndarray]
    metadata: dict[str, Any]


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``range(len(labels))`` into (kept, held out), stratified by label and seeded.

    Args:
      labels: (N,) int class labels.
      fraction: share held out, in (0, 1).

    Returns:
      Two sorted, disjoint (n,) int64 index arrays covering ``range(N)``; every class keeps
      at least one image and, when it has two or more, gives at least one to the held-out part.

    Raises:
      ValueError: ``fraction`` outside (0, 1), or a class with a single image.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    lonely = [int(c) for c in np.flatnonzero(counts == 1)]
    if lonely:
        raise ValueError(f"cannot hold out a stratified share: class(es) {lonely} have a single image")
    try:
        kept, held = train_test_split(
            np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:
        raise ValueError(
            f"cannot hold out {fraction} of {len(labels)} images stratified by class: {error}"
        ) from None
    return np.sort(kept).astype(np.int64), np.sort(held).astype(np.int64)


def make_splits(dataset: ImageDataset, *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                seed: int = 0) -> SplitPlan:
    """The train / validation / test splits of an in-distribution data set.

    ``test``: the data set's ``test`` split if it has one, else ``test_fraction`` of
    ``train`` (stratified, seeded with ``seed``). ``val``: its ``validation`` split if
    it has one, else ``val_fraction`` of what remains of ``train`` (stratified, seed
    ``seed + 1``).
    """
    train_split = dataset.splits["train"]
    remaining = np.arange(len(train_split), dtype=np.int64)
    how: dict[str, Any] = {"seed": seed, "stratified_by": "label"}
    if "test" in dataset.splits:
        test = (dataset.splits["test"], np.arange(len(dataset.splits["test"]), dtype=np.int64))
        how["test"] = {"from": "test"}
    else:
        kept, held = stratified_holdout(train_split.labels, test_fraction, seed)
        remaining, test = kept, (train_split, held)
        how["test"] = {"from": "train", "fraction_of_train": test_fraction, "seed": seed}
    if "validation" in dataset.splits:
        val_split = dataset.splits["validation"]
        val = (val_split, np.arange(len(val_split), dtype=np.int64))
        how["val"] = {"from": "validation"}
    else:
        kept, held = stratified_holdout(train_split.labels[remaining], val_fraction, seed + 1)
        val, remaining = (train_split, remaining[held]), remaining[kept]
        how["val"] = {"from": "train", "fraction": val_fraction, "seed": seed + 1}
    how["train"] = {"from": "train"}
    plan = {"train": (train_split, remaining), "val": val, "test": test}
    for role, (_, indices) in plan.items():
        how[role]["size"] = len(indices)
    return SplitPlan(train=plan["train"], val=plan["val"], test=plan["test"], metadata=how)
