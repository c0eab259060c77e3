"""Image data sets: TFDS names or image folders, the splits, and the authors' OoD protocol.

Two sources, one shape (:class:`ImageDataset`: class names and splits of
encoded images with labels):

  * a TensorFlow Datasets name, e.g. ``rock_paper_scissors`` or ``citrus_leaves``
    (downloaded and prepared by TFDS on first use; needs the ``features`` extra);
  * a folder in TFDS' ImageFolder layout ``root/split/label/image`` (``.jpg``,
    ``.jpeg``, ``.png``; labels are the sorted folder names). Only Pillow is
    needed to read it.

Images are decoded with Pillow only when asked for, converted to RGB and resized
to S x S (aspect ratio not kept), as uint8 arrays: bilinear by default, or nearest
neighbour as the authors' Keras ``flow_from_directory`` did (:data:`RESIZE_METHODS`).

The in-distribution splits (:func:`make_splits`): ``train`` is required; a
``validation`` split is used as it is, else a stratified, seeded share of train
is held out; likewise ``test``. The OoD sets (:func:`ood_selection`) follow
MO-EvoPruneDeepTL (arXiv 2302.10253): as many images in total as the
in-distribution test split, spread evenly over the other data sets and then over
their classes; a second, disjoint set of the same counts is the OoD validation set.
Which images: a seeded draw (``order="random"``, the default) or the authors' own
rule (``order="folder"``: the first images of each class of each data set's train
folder, read in Keras' folder order; :func:`ood_selection_folder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what TFDS' ImageFolder reads
# Each method's text is part of the feature cache's key: features made with one are never
# served for the other. The bilinear text is the one cache files were keyed with before
# "nearest" existed, so those files stay valid.
RESIZE_METHODS = {
    "bilinear": "Pillow bilinear resize to S x S (aspect ratio not kept), RGB",
    "nearest": (
        "Pillow nearest-neighbour resize to S x S (aspect ratio not kept), RGB: Keras' "
        "load_img / flow_from_directory default, as the authors read every image"
    ),
}
DEFAULT_RESIZE = "bilinear"
RESIZE_METHOD = RESIZE_METHODS[DEFAULT_RESIZE]
OOD_ORDERS = ("random", "folder")
# The authors' image sizes (configs/configDataset*.csv of github.com/ari-dasci/S-MOEvoPruneDeepTL,
# height and width columns), by paper name, with the names a data set may come under: the TFDS
# name, the paper's name, and the authors' own folder name (corales, leaves, cataract, painting,
# plants, rps in their configs' paths).
AUTHORS_DATASETS = {
    "SRSMAS": (299, ("srsmas", "corals", "corales")),
    "LEAVES": (256, ("leaves", "citrus_leaves")),
    "CATARACT": (256, ("cataract",)),
    "PAINTING": (256, ("painting", "paintings")),
    "PLANTS": (100, ("plants",)),
    "RPS": (300, ("rps", "rock_paper_scissors")),
}
KNOWN_IMAGE_SIZES = {alias: size for size, aliases in AUTHORS_DATASETS.values() for alias in aliases}
DEFAULT_IMAGE_SIZE = 224
TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of a data set: labels, and the encoded images to decode on demand.

    Attributes:
      dataset: the data set's source, ``"tfds:NAME"`` or ``"folder:/absolute/root"``.
      split: the split's name (``"train"``, ``"test"``, ...).
      labels: (N,) int32 class indices into the data set's ``class_names``.
      items: N image files (``Path``) or encoded images (``bytes``).
      fingerprint: a hex digest that changes when the images change (file names,
        sizes and modification times, or the encoded bytes).
    """

    dataset: str
    split: str
    labels: np.ndarray
    items: tuple[Path | bytes, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.items)

    def item_name(self, index: int) -> str:
        """How an error names image ``index``: its path, or ``tfds:NAME/split[index]``."""
        item = self.items[index]
        return str(item) if isinstance(item, Path) else f"{self.dataset}/{self.split}[{index}]"

    def images(self, image_size: int, indices: np.ndarray | None = None,
               resize: str = DEFAULT_RESIZE) -> DecodedImages:
        """The images at ``indices`` (default: all), decoded lazily, (n, S, S, 3) uint8.

        ``resize``: ``"bilinear"`` or ``"nearest"`` (:data:`RESIZE_METHODS`).
        """
        check_resize(resize)
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        return DecodedImages(self, indices, int(image_size), resize)


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedImages:
    """A lazy (n, S, S, 3) uint8 array: ``len()`` and slices ``[a:b]`` decode on demand.

    Slices are decoded by a thread pool (Pillow releases the GIL while decoding).
    """

    split: ImageSplit
    indices: np.ndarray
    image_size: int
    resize: str = DEFAULT_RESIZE

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"DecodedImages takes slices, got {type(key).__name__}")
        chosen = self.indices[key]
        out = np.empty((len(chosen), self.image_size, self.image_size, 3), np.uint8)
        if len(chosen) == 0:
            return out

        def decode_one(position: int) -> None:
            index = int(chosen[position])
            name = self.split.item_name(index)
            out[position] = decode_image(self.split.items[index], self.image_size, name, self.resize)

        with ThreadPoolExecutor(max_workers=min(len(chosen), os.cpu_count() or 1)) as pool:
            list(pool.map(decode_one, range(len(chosen))))  # list(): re-raise the first error
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:]
        return array if dtype is None else array.astype(dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image data set.

    Attributes:
      name: a short name (the TFDS name or the folder's name).
      source: ``"tfds:NAME"`` or ``"folder:/absolute/root"``.
      class_names: C names; label ``i`` is ``class_names[i]``.
      splits: split name -> :class:`ImageSplit`.
      info: JSON-serialisable facts for the metadata (e.g. the TFDS version).
    """

    name: str
    source: str
    class_names: tuple[str, ...]
    splits: dict[str, ImageSplit]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(split)}" for name, split in self.splits.items())
        return f"ImageDataset({self.source!r}: {sizes}; C={len(self.class_names)} classes)"


def check_resize(resize: str) -> str:
    """``resize`` if it names a method of :data:`RESIZE_METHODS`, else a ValueError naming it."""
    if resize not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {resize!r}; expected one of {', '.join(RESIZE_METHODS)}")
    return resize


def decode_image(item: Path | bytes, image_size: int, name: str, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Decodes one image file or encoded image to (S, S, 3) uint8 RGB, resized to S x S.

    RGB first, then the resize, as Keras' ``load_img`` does (it was the authors' reader:
    ``convert("RGB")``, then ``Image.resize(size, NEAREST)`` by default); an image already
    S x S is not resampled, by either.

    Args:
      resize: ``"bilinear"`` or ``"nearest"`` (Pillow's filters of those names).

    Raises:
      ValueError: the image cannot be read (the message names it), or an unknown ``resize``.
    """
    from PIL import Image, UnidentifiedImageError

    check_resize(resize)
    try:
        with Image.open(item if isinstance(item, Path) else io.BytesIO(item)) as image:
            rgb = image.convert("RGB")  # also forces the full decode: truncated files fail here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{name}: cannot read this image ({' '.join(str(error).split())})") from None
    if rgb.size != (image_size, image_size):
        method = Image.Resampling.NEAREST if resize == "nearest" else Image.Resampling.BILINEAR
        rgb = rgb.resize((image_size, image_size), method)
    return np.asarray(rgb, np.uint8)


def authors_dataset(dataset: ImageDataset | str) -> str | None:
    """The paper's name (``"PLANTS"``, ...) of a data set the authors used, else None.

    Matched on the data set's name (a TFDS name or a folder's name), ignoring case and
    treating ``-`` and spaces as ``_``: ``rock_paper_scissors``, ``RPS``, ``Corales``,
    ``citrus-leaves``, ... (:data:`AUTHORS_DATASETS`).
    """
    name = dataset if isinstance(dataset, str) else dataset.name
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    for paper_name, (_, aliases) in AUTHORS_DATASETS.items():
        if key in aliases:
            return paper_name
    return None


def authors_image_size(dataset: ImageDataset | str) -> int | None:
    """The side the authors resized a data set's images to (:func:`authors_dataset`), else None."""
    paper_name = authors_dataset(dataset)
    return None if paper_name is None else AUTHORS_DATASETS[paper_name][0]


def default_image_size(dataset: ImageDataset) -> int:
    """The authors' image size for a data set they used (:func:`authors_dataset`), else 224."""
    size = authors_image_size(dataset)
    return DEFAULT_IMAGE_SIZE if size is None else size


# ---------------------------------------------------------------------------
# Loading


def load_dataset(spec: str | os.PathLike, *, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """A TFDS name or an image folder, by ``spec``.

    ``"tfds:NAME"`` is a TFDS name and ``"folder:PATH"`` a folder; otherwise a
    spec that is an existing directory, or that contains a path separator or
    starts with ``.`` or ``~``, is a folder, and anything else a TFDS name.

    Args:
      data_dir: TFDS' data directory (default: TFDS' own, ``~/tensorflow_datasets``).
    """
    spec = os.fspath(spec)
    if spec.startswith(TFDS_PREFIX):
        return load_tfds(spec[len(TFDS_PREFIX):], data_dir=data_dir)
    if spec.startswith(FOLDER_PREFIX):
        return load_folder(spec[len(FOLDER_PREFIX):])
    path = Path(spec).expanduser()
    if path.is_dir() or os.sep in spec or "/" in spec or spec.startswith((".", "~")):
        return load_folder(path)
    return load_tfds(spec, data_dir=data_dir)


def load_folder(root: str | os.PathLike) -> ImageDataset:
    """An image folder in the layout ``root/split/label/image`` (TFDS' ImageFolder).

    Every split folder under ``root`` becomes a split; ``train`` must exist.
    Labels are the sorted class folder names, the same in every split; files
    other than ``.jpg``, ``.jpeg``, ``.png`` (any case) and hidden entries are
    ignored. Nothing is decoded here.

    Raises:
      FileNotFoundError: ``root`` or its ``train`` folder is missing.
      ValueError: an empty class folder, or class folders that differ between splits.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "no such folder"
        raise FileNotFoundError(f"{root}: {what} (expected an image folder ROOT/SPLIT/LABEL/IMAGE)")
    root = root.resolve()
    split_dirs = {path.name: path for path in _visible_subdirs(root)}
    if "train" not in split_dirs:
        found = ", ".join(sorted(split_dirs)) or "no folders"
        raise FileNotFoundError(
            f"{root}: no 'train' split folder (found {found}); expected the layout "
            f"{root}/train/LABEL/IMAGE and optionally {root}/test/LABEL/IMAGE"
        )
    listed = {name: _list_split(path) for name, path in sorted(split_dirs.items())}
    class_names = tuple(sorted(listed["train"]))
    for name, classes in listed.items():
        if set(classes) != set(class_names):
            only_here = sorted(set(classes) - set(class_names))
            missing = sorted(set(class_names) - set(classes))
            raise ValueError(
                f"{root}: the class folders of split '{name}' differ from those of 'train' "
                f"(only in '{name}': {only_here}; missing from '{name}': {missing})"
            )
    source = FOLDER_PREFIX + str(root)
    splits = {}
    for name, classes in listed.items():
        files = [(path, label) for label, name_ in enumerate(class_names) for path in classes[name_]]
        labels = np.array([label for _, label in files], np.int32)
        items = tuple(path for path, _ in files)
        splits[name] = ImageSplit(source, name, labels, items, _files_fingerprint(root, items))
    return ImageDataset(root.name, source, class_names, splits, {"layout": "ROOT/SPLIT/LABEL/IMAGE"})


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    classes = {}
    for class_dir in _visible_subdirs(split_dir):
        files = sorted(
            path for path in class_dir.iterdir()
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(
                f"{class_dir}: empty class folder (no {', '.join(IMAGE_EXTENSIONS)} images); "
                "remove it or add its images"
            )
        classes[class_dir.name] = files
    if not classes:
        raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/LABEL/IMAGE)")
    return classes


def _files_fingerprint(root: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def import_tfds():
    """Imports tensorflow_datasets with TensorFlow kept off any GPU (JAX owns the accelerator).

    Raises:
      ImportError: the ``features`` extra is not installed (the message says so).
    """
    from evojax_prune.data.backbone import prefer_jax_backend

    prefer_jax_backend()  # importing TensorFlow imports Keras, whose backend is fixed then
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"TFDS data sets need tensorflow and tensorflow-datasets ({error}): "
            "pip install 'evojax-prune[features]', or use an image folder (--folder)"
        ) from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices: too late, and harmless on CPU
        pass
    return tfds


def load_tfds(name: str, *, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """A TFDS image classification data set, downloaded and prepared by TFDS if needed.

    Uses the builder's supervised keys (image, label) and class names; images stay
    encoded (``tfds.decode.SkipDecoding``) until asked for. Reads every split the
    builder lists (``train`` and ``test`` when it lists none, as under
    ``tfds.testing.mock_data``).

    Raises:
      ValueError: unknown name, no (image, label) supervised keys, or the download
        or preparation failed (the message says what to do).
    """
    tfds = import_tfds()
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except Exception as error:  # DatasetNotFoundError lists the whole catalogue: keep its first line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name!r} is not a TFDS data set ({first_line}); for an image folder give its path"
        ) from None
    try:
        builder.download_and_prepare()
    except Exception as error:
        raise ValueError(
            f"TFDS could not download or prepare {name!r} ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}); on a machine with internet run it once to fill "
            "TFDS' data directory (or pass --data-dir with a prepared copy), or use an image folder"
        ) from None
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise ValueError(f"TFDS data set {name!r} has no (image, label) supervised keys")
    image_key, label_key = info.supervised_keys
    class_names = tuple(str(label) for label in info.features[label_key].names)
    split_names = sorted(info.splits) or ["test", "train"]
    source = TFDS_PREFIX + name
    splits = {}
    for split in split_names:
        dataset = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
        items, labels, digest = [], [], hashlib.sha256()
        for encoded, label in tfds.as_numpy(dataset):
            items.append(bytes(encoded))
            labels.append(int(label))
            digest.update(hashlib.sha256(encoded).digest())
        labels = np.array(labels, np.int32)
        splits[split] = ImageSplit(source, split, labels, tuple(items), digest.hexdigest())
    return ImageDataset(name, source, class_names, splits, {"tfds_version": str(info.version)})


# ---------------------------------------------------------------------------
# Splits


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


# ---------------------------------------------------------------------------
# The OoD protocol


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
    name within a class (the order of :func:`load_folder`'s ``items``);
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
