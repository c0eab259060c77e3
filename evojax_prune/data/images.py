"""Image data sets: TFDS names or image folders, read as labelled splits of encoded images.

Two sources, one shape (:class:`ImageDataset`: class names and splits of
encoded images with labels):

  * a TensorFlow Datasets name, e.g. ``rock_paper_scissors`` or ``citrus_leaves``
    (downloaded and prepared by TFDS on first use; needs the ``features`` extra);
  * a folder in TFDS' ImageFolder layout ``root/split/label/image`` (``.jpg``,
    ``.jpeg``, ``.png``; labels are the sorted folder names). Only Pillow is
    needed to read it.

Contract: loading lists and fingerprints the images and decodes none of them.
Images are decoded with Pillow only when asked for, converted to RGB and resized
to S x S (aspect ratio not kept), as uint8 arrays: bilinear by default, or nearest
neighbour as the authors' Keras ``flow_from_directory`` did (:data:`RESIZE_METHODS`).
A split's fingerprint changes when its images do. The authors' image size per data
set (:data:`AUTHORS_DATASETS`, from configs/configDataset*.csv of
github.com/ari-dasci/S-MOEvoPruneDeepTL) is found by name.

Which images become the in-distribution train / validation / test splits is
:mod:`evojax_prune.data.splits`; which become the OoD sets,
:mod:`evojax_prune.data.ood_selection`.
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
    from evojax_prune.io.keras_backend import prefer_jax_backend

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
