"""The OoD sets of an extraction: which images of the other data sets, for validation and test.

Contract: :func:`ood_selection` picks two disjoint sets of OoD images (an
:class:`OodSelection`: indices into the data sets' splits, nothing decoded) following
MO-EvoPruneDeepTL (arXiv 2302.10253): as many images in total as the in-distribution
test split, spread evenly over the other data sets and then over their classes; the
second set, of the same counts, is the OoD validation set. Which images
(:data:`OOD_ORDERS`): a seeded draw (``order="random"``, the default) or the authors'
own rule (``order="folder"``: the first images of each class of each data set's train
folder, read in Keras' folder order; :func:`ood_selection_folder`). The same inputs
give the same selection; its metadata says how it was made.

References: the authors' code, github.com/ari-dasci/S-MOEvoPruneDeepTL (``main.py``,
``utility.read_dataset_ood``, ``fitness._process_ood_data``), transliterated in
tests/test_ood_selection.py; docs/PROTOCOL.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from evojax_prune.data.images import ImageDataset, ImageSplit

OOD_ORDERS = ("random", "folder")


def allocate_evenly(total: int, capacities: Sequence[int]) -> np.ndarray:
    """Spreads ``total`` items as evenly as possible over bins of limited capacity.

    Every round gives each bin with room an equal share of what is left, the
    remainder one each to the first such bins in order; bins that fill up drop out.
    Deterministic.

    Returns:
      (k,) int64 counts, ``counts <= capacities``, summing to ``total``.

    Raises:
      ValueError: ``total`` exceeds the sum of the capacities.
    """
    capacities = np.asarray(capacities, np.int64)
    if total < 0 or np.any(capacities < 0):
        raise ValueError(f"total and capacities must be non-negative, got {total} and {capacities.tolist()}")
    if total > capacities.sum():
        raise ValueError(f"cannot place {total} items in bins holding {int(capacities.sum())} in all")
    counts = np.zeros_like(capacities)
    left = int(total)
    while left > 0:
        open_bins = np.flatnonzero(counts < capacities)
        share, extra = divmod(left, len(open_bins))
        for rank, bin_index in enumerate(open_bins):
            give = min(int(capacities[bin_index] - counts[bin_index]), share + (rank < extra))
            counts[bin_index] += give
            left -= give
    return counts


@dataclasses.dataclass(frozen=True)
class OodSelection:
    """Two disjoint OoD image sets with the same counts per data set and class.

    ``val``, ``test``: lists of (source split, (n,) int64 indices into it).
    ``metadata``: sources, per-class counts, seed (JSON-serialisable).
    """

    val: list[tuple[ImageSplit, np.ndarray]]
    test: list[tuple[ImageSplit, np.ndarray]]
    metadata: dict[str, Any]

    def size(self, role: str) -> int:
        return sum(len(indices) for _, indices in getattr(self, role))


def ood_selection(total: int, datasets: Sequence[ImageDataset], *, seed: int = 0,
                  order: str = "random") -> OodSelection:
    """The authors' OoD sets: ``total`` images each for validation and for test.

    ``order="folder"`` is the authors' own choice of images, :func:`ood_selection_folder`
    (``seed`` unused). ``order="random"``, the default, is described here: the images
    of each OoD data set are pooled over its splits; ``total`` is spread
    evenly over the data sets, then each data set's share evenly over its classes
    (:func:`allocate_evenly`: remainders go to the first data sets, in the order
    given, and to the first classes). Each class gives the same count to both sets,
    drawn without replacement from a seeded permutation, so the two are disjoint; a
    class can give at most half its images, and what it cannot give goes to the
    other classes (and data sets).

    Raises:
      ValueError: no OoD data sets, too few images in them for two disjoint sets, or an
        unknown ``order``.
    """
    if order not in OOD_ORDERS:
        raise ValueError(f"unknown OoD order {order!r}; expected one of {', '.join(OOD_ORDERS)}")
    if order == "folder":
        return ood_selection_folder(total, datasets)
    if not datasets:
        raise ValueError("the OoD protocol needs at least one other data set")
    pools = []  # per data set: list over classes of (split, index) pairs
    for dataset in datasets:
        per_class: list[list[tuple[ImageSplit, int]]] = [[] for _ in dataset.class_names]
        for split_name in sorted(dataset.splits):
            split = dataset.splits[split_name]
            for index, label in enumerate(split.labels.tolist()):
                per_class[label].append((split, index))
        pools.append(per_class)
    class_caps = [np.array([len(members) // 2 for members in per_class], np.int64) for per_class in pools]
    available = sum(int(caps.sum()) for caps in class_caps)
    if total > available:
        raise ValueError(
            f"the OoD data sets ({', '.join(d.source for d in datasets)}) can give at most {available} "
            f"images to each of two disjoint sets, but the in-distribution test split has {total}: "
            "add OoD data sets or larger ones"
        )
    per_dataset = allocate_evenly(total, [int(caps.sum()) for caps in class_caps])
    val: dict[tuple[int, str], list[int]] = {}
    test: dict[tuple[int, str], list[int]] = {}
    splits_by_key: dict[tuple[int, str], ImageSplit] = {}
    counts_meta = []
    for d, (dataset, per_class, caps) in enumerate(zip(datasets, pools, class_caps, strict=True)):
        per_class_counts = allocate_evenly(int(per_dataset[d]), caps)
        for c, (members, count) in enumerate(zip(per_class, per_class_counts.tolist(), strict=True)):
            rng = np.random.default_rng([seed, d, c])
            order = rng.permutation(len(members))
            for destination, chosen in ((val, order[:count]), (test, order[count:2 * count])):
                for position in chosen.tolist():
                    split, index = members[position]
                    key = (d, split.split)
                    splits_by_key[key] = split
                    destination.setdefault(key, []).append(index)
        counts_meta.append({
            "source": dataset.source,
            "per_split": int(per_dataset[d]),
            "per_class": dict(zip(dataset.class_names, per_class_counts.tolist(), strict=True)),
        })

    def as_list(chosen: dict[tuple[int, str], list[int]]) -> list[tuple[ImageSplit, np.ndarray]]:
        return [(splits_by_key[key], np.sort(np.array(chosen[key], np.int64))) for key in sorted(chosen)]

    metadata = {
        "order": "random",
        "per_split": int(total),
        "seed": seed,
        "disjoint": True,
        "method": (
            "as many images as the in-distribution test split, spread evenly over the OoD data sets "
            "(pooled over their splits) and then over their classes, remainders to the first; the "
            "same counts again, disjoint, for validation"
        ),
        "sources": counts_meta,
    }
    return OodSelection(val=as_list(val), test=as_list(test), metadata=metadata)


def split_with_remainder(total: int, parts: int) -> np.ndarray:
    """The authors' counts: ``total // parts`` each, the remainder one each to the first parts.

    Their ``main.py`` spreads the in-distribution test size over the OoD data sets this
    way, and ``utility.read_dataset_ood`` each data set's share over its classes. It is
    :func:`allocate_evenly` without capacities: nothing is moved from a bin that cannot
    fill its count to the others.

    Returns:
      (parts,) int64 counts summing to ``total``.
    """
    if total < 0 or parts < 1:
        raise ValueError(f"need total >= 0 and parts >= 1, got {total} and {parts}")
    share, extra = divmod(int(total), int(parts))
    return np.array([share + (rank < extra) for rank in range(parts)], np.int64)


def ood_selection_folder(total: int, datasets: Sequence[ImageDataset]) -> OodSelection:
    """The authors' OoD test set, and the next images of each class as the OoD validation set.

    From MO-EvoPruneDeepTL's code (github.com/ari-dasci/S-MOEvoPruneDeepTL): ``main.py``
    gives data set ``d`` (in the order given) ``k_d`` of the ``total`` images
    (:func:`split_with_remainder`); ``utility.read_dataset_ood`` splits ``k_d`` over the
    data set's C classes the same way, ``k_c``, and reads the data set with Keras'
    ``flow_from_directory(shuffle=False)``: classes by sorted folder name, files by sorted
    name within a class (the order of :func:`~evojax_prune.data.images.load_folder`'s ``items``);
    ``fitness._process_ood_data`` then keeps the first ``k_c`` images of each class.

    Its quirk is kept, so the test set is theirs on their data too: on reaching a new
    class it always takes that class's first image, so a class after the first whose
    ``k_c`` is 0 still gives one image (the first class gives none). Counts are 0 when
    ``k_d < C``, which their data met: a 76-image SRSMAS test fold gives PLANTS (27
    classes) 15, and 27 images were taken. So the test set can hold more than ``total``.
    Like theirs, a class with fewer images than its count gives all it has (the set is
    smaller), nothing moves to the other classes; a class with no image at all gives none
    (their loop would have shifted the counts of the later classes).

    The images come from each data set's ``train`` split, the one every data set has (the
    authors read a copy of each data set's images from a folder of its own, one class per
    sub-folder). The authors had no OoD validation set; ours takes, per class, as many
    images as the test set took, the next ones in folder order, so the two are disjoint
    and alike; a class that runs out gives fewer.

    Args:
      total: the in-distribution test split's size.
      datasets: the OoD data sets, in the order that gets the remainders.

    Returns:
      An :class:`OodSelection` whose metadata gives, per data set, the allotted
      ``per_class`` counts (the authors' ``k_c``) and what ``test_per_class`` and
      ``val_per_class`` took, and lists in ``short`` the classes that ran out.

    Raises:
      ValueError: no OoD data sets, one without a ``train`` split, or no image left
        for the validation set.
    """
    if not datasets:
        raise ValueError("the OoD protocol needs at least one other data set")
    missing_train = [d.source for d in datasets if "train" not in d.splits]
    if missing_train:
        raise ValueError(f"OoD data set(s) without a 'train' split for the folder order: {missing_train}")
    per_dataset = split_with_remainder(total, len(datasets))
    val, test, sources, short = [], [], [], []
    for dataset, share in zip(datasets, per_dataset.tolist(), strict=True):
        split = dataset.splits["train"]
        allotted = split_with_remainder(share, len(dataset.class_names))
        # load_folder lists a split class by class, each in file-name order, as
        # flow_from_directory did; a stable sort by label keeps that order for any source.
        order = np.argsort(split.labels, kind="stable")
        first_label = int(split.labels[order[0]]) if len(order) else -1
        test_idx, val_idx = [], []
        test_counts, val_counts = {}, {}
        for c, class_name in enumerate(dataset.class_names):
            members = order[split.labels[order] == c]
            wanted = int(allotted[c])
            if wanted == 0 and c != first_label and len(members):
                wanted = 1  # _process_ood_data takes a new class's first image whatever its count
            chosen, following = members[:wanted], members[wanted:2 * wanted]
            test_idx.append(chosen)
            val_idx.append(following)
            test_counts[class_name], val_counts[class_name] = len(chosen), len(following)
            if len(following) < wanted:
                short.append(
                    f"{dataset.source} class {class_name!r}: {len(members)} image(s) for "
                    f"{wanted} test and {wanted} validation"
                )
        test.append((split, np.sort(np.concatenate(test_idx)).astype(np.int64)))
        val.append((split, np.sort(np.concatenate(val_idx)).astype(np.int64)))
        sources.append({
            "source": dataset.source,
            "split": "train",
            "per_split": int(share),
            "per_class": dict(zip(dataset.class_names, allotted.tolist(), strict=True)),
            "test_per_class": test_counts,
            "val_per_class": val_counts,
        })
    selection = OodSelection(val=val, test=test, metadata={})
    if selection.size("val") == 0:
        raise ValueError(
            "no OoD image is left for validation after the authors' test selection "
            f"({'; '.join(short)}): add OoD data sets or larger ones"
        )
    metadata = {
        "order": "folder",
        "per_split": int(total),
        "sizes": {"val": selection.size("val"), "test": selection.size("test")},
        "disjoint": True,
        "method": (
            "the authors' rule (MO-EvoPruneDeepTL main.py, utility.read_dataset_ood, "
            "fitness._process_ood_data): the in-distribution test size spread over the OoD data sets "
            "and then over their classes, total // n each and the remainder one each to the first; "
            "test: the first images of each class of each data set's train split in folder order "
            "(classes and files by sorted name), a class after the first with a count of 0 giving "
            "its first image; validation: the next as many images of each class"
        ),
        "sources": sources,
        "short": short,
    }
    return OodSelection(val=val, test=test, metadata=metadata)
