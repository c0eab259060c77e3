"""``evojax-prune extract``: images -> ResNet-50 features -> a FeatureSet file.

One in-distribution data set (a TFDS name or an image folder) gives the train,
validation and test features; other data sets give the OoD validation and test
features by the authors' protocol (:func:`evojax_prune.data.ood_selection.ood_selection`).

How the images are chosen and resized is a protocol (:data:`PROTOCOLS`): ``default``
draws the OoD images at random (seeded) and resizes bilinearly; ``paper`` is the
authors' (the first images of each class in folder order, Keras' nearest-neighbour
resize, their image size per data set). Each choice can also be set on its own; the
FeatureSet's metadata records the protocol, the choices and which of them depart
from the protocol (``protocol_overrides``).

Features are cached on disk per (data set, split, image size, resize method, backbone weights),
one file per key holding the indices computed so far and their features, so a
second extraction with another seed, validation share or OoD mix computes only
the images it has not seen. A cache file is written atomically; an unreadable
one is recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.data import backbone, images, ood_selection, splits
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.io.atomic import write_atomically

CACHE_VERSION = 1
FEATURE_EXTRACTOR = (
    "keras.applications.ResNet50(include_top=False, pooling='avg'), "
    "keras.applications.resnet.preprocess_input (caffe), JAX backend"
)

ProgressFn = Callable[[str, int, int], None]  # (what, images done, images to compute)
MessageFn = Callable[[str], None]

# What each protocol chooses; the image size is the data set's (images.authors_image_size,
# which ``paper`` requires and ``default`` falls back from to 224).
PROTOCOLS = {
    "default": {"ood_order": "random", "resize": "bilinear"},
    "paper": {"ood_order": "folder", "resize": "nearest"},
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/evojax-prune``, by default ``~/.cache/evojax-prune``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "evojax-prune"


class FeatureCache:
    """Backbone features on disk, one ``.npz`` per (data set, split, image size, resize, weights).

    Each file holds ``indices`` (n,) int64, sorted, into the split, ``features``
    (n, 2048) float32 and the ``key`` it was written for (JSON). ``directory=None``
    disables the cache.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory).expanduser()

    @staticmethod
    def key(split: images.ImageSplit, image_size: int, weights_key: str,
            resize: str = images.DEFAULT_RESIZE) -> dict[str, Any]:
        """What a cache file is for; the resize method's text is in it (so in the file name's digest)."""
        return {
            "cache_version": CACHE_VERSION,
            "dataset": split.dataset,
            "split": split.split,
            "fingerprint": split.fingerprint,
            "image_size": int(image_size),
            "resize": images.RESIZE_METHODS[images.check_resize(resize)],
            "extractor": FEATURE_EXTRACTOR,
            "weights": weights_key,
        }

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(key["dataset"].split(":", 1)[-1]).name)[:40]
        weights = key["weights"].split(":")[0]
        return self.directory / f"{name}-{key['split']}-{key['image_size']}px-{weights}-{digest}.npz"

    def load(self, key: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(indices (n,) int64, features (n, D) float32) cached for ``key``; empty if none."""
        empty = (np.zeros(0, np.int64), np.zeros((0, backbone.FEATURE_DIM), np.float32))
        if self.directory is None:
            return empty
        path = self.path(key)
        if not path.exists():
            return empty
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored_key = json.loads(str(archive["key"]))
                indices = archive["indices"].astype(np.int64)
                features = archive["features"].astype(np.float32)
            valid = (
                stored_key == key and indices.ndim == 1
                and features.shape == (len(indices), backbone.FEATURE_DIM)
                and np.all(np.diff(indices) > 0) and np.all(np.isfinite(features))
            )
        except Exception as error:  # a damaged file is a miss, not a failure
            warnings.warn(f"{path}: unreadable feature cache file, recomputing ({error})", stacklevel=2)
            return empty
        if not valid:
            warnings.warn(f"{path}: feature cache file does not match its key, recomputing", stacklevel=2)
            return empty
        return indices, features

    def store(self, key: dict[str, Any], indices: np.ndarray, features: np.ndarray) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(
            self.path(key),
            lambda stream: np.savez(
                stream, key=np.asarray(json.dumps(key, sort_keys=True)),
                indices=np.asarray(indices, np.int64), features=np.asarray(features, np.float32),
            ),
        )


def extract_featureset(
    source: str | os.PathLike | images.ImageDataset,
    ood: Sequence[str | os.PathLike | images.ImageDataset],
    *,
    image_size: int | None = None,
    protocol: str = "default",
    ood_order: str | None = None,
    resize: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 64,
    weights: backbone.Weights = "imagenet",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    data_dir: str | os.PathLike | None = None,
    keras_cache_dir: str | os.PathLike | None = None,
    on_progress: ProgressFn | None = None,
    on_message: MessageFn | None = None,
) -> FeatureSet:
    """A FeatureSet of ResNet-50 features for an image data set and its OoD data sets.

    Args:
      source: the in-distribution data set: a TFDS name, a folder
        ``root/split/label/image`` (see :func:`images.load_dataset`) or an ImageDataset.
      ood: the other data sets for the OoD sets, at least one.
      image_size: side S every image is resized to (default: the authors' size for
        a data set they used, :func:`images.authors_image_size`, else 224; under
        ``protocol="paper"`` the authors' size, which must then be known); OoD images
        get the same.
      protocol: ``"default"`` or ``"paper"`` (:data:`PROTOCOLS`): the defaults of
        ``ood_order`` and ``resize``.
      ood_order: ``"random"`` (seeded) or ``"folder"`` (the authors' first images per
        class, :func:`ood_selection.ood_selection_folder`); default: the protocol's.
      resize: ``"bilinear"`` or ``"nearest"`` (Keras' default, the authors'), for the
        in-distribution and the OoD images alike; default: the protocol's.
      val_fraction, test_fraction: stratified shares of train held out for
        validation, and for test when the data set has no test split.
      seed: seeds the held-out splits and the OoD choice.
      batch_size: images per backbone call.
      weights: ``"imagenet"``, a weights file, or ``None`` (random, tests only).
      cache_dir: the feature cache (default :func:`default_cache_dir`); ``use_cache=False``
        reads and writes none.
      data_dir: TFDS' data directory; keras_cache_dir: Keras' (for the ImageNet weights).
      on_progress: called as ``(what, done, to_compute)`` before and during each split's
        extraction (``to_compute == 0``: all cached).
      on_message: called with a line of news (loading, building the backbone).

    Returns:
      A FeatureSet: x_* (n, 2048) float32, y_* int32, ood_val and ood_test with as many
      images each as x_test (in folder order: the authors' counts, which can differ,
      see :func:`ood_selection.ood_selection_folder`), and metadata saying how it was made.

    Raises:
      ValueError / FileNotFoundError: bad arguments, data or weights (the message names them).
    """
    say = on_message or (lambda text: None)
    if not ood:
        raise ValueError(
            "at least one OoD data set is needed (ood=[NAME_OR_PATH]): the robustness objective uses it"
        )
    if image_size is not None and int(image_size) < backbone.MIN_IMAGE_SIZE:
        raise ValueError(
            f"image size must be at least {backbone.MIN_IMAGE_SIZE} for ResNet-50, got {image_size}"
        )
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise ValueError(f"{name} must be in (0, 1), got {fraction}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    order = PROTOCOLS[protocol]["ood_order"] if ood_order is None else ood_order
    if order not in ood_selection.OOD_ORDERS:
        raise ValueError(
            f"unknown OoD order {order!r}; expected one of {', '.join(ood_selection.OOD_ORDERS)}"
        )
    resize = images.check_resize(PROTOCOLS[protocol]["resize"] if resize is None else resize)
    weights_key = backbone.weights_id(weights)  # a missing weights file fails here, before any work

    dataset = _as_dataset(source, data_dir, say)
    ood_datasets = [_as_dataset(spec, data_dir, say) for spec in ood]
    sources = [d.source for d in ood_datasets]
    if dataset.source in sources:
        raise ValueError(f"{dataset.source} is the in-distribution data set; it cannot also be OoD")
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise ValueError(f"OoD data set(s) given more than once: {repeated}")
    size, size_from = _image_size(dataset, image_size, protocol)
    plan = splits.make_splits(dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    selection = ood_selection.ood_selection(len(plan.test[1]), ood_datasets, seed=seed, order=order)
    for note in selection.metadata.get("short", []):
        say(f"OoD class short of images: {note}")
    overrides = [name for name, value in (("ood_order", order), ("resize", resize))
                 if value != PROTOCOLS[protocol][name]]
    if protocol == "paper" and size != images.authors_image_size(dataset):
        overrides.append("image_size")

    parts = {
        "train": [plan.train], "val": [plan.val], "test": [plan.test],
        "ood_val": selection.val, "ood_test": selection.test,
    }
    cache = FeatureCache((cache_dir if cache_dir is not None else default_cache_dir()) if use_cache else None)
    extractor: list[backbone.FeatureExtractor] = []  # built on first need: a full cache hit never builds it

    def get_extractor() -> backbone.FeatureExtractor:
        if not extractor:
            say(f"building ResNet-50 ({backbone.weights_id(weights)} weights, {size}x{size} images)")
            extractor.append(
                backbone.load_backbone(size, weights, batch_size=batch_size, keras_cache_dir=keras_cache_dir)
            )
        return extractor[0]

    # Every split that any part draws from, with all the indices wanted from it.
    wanted: dict[int, tuple[images.ImageSplit, np.ndarray]] = {}
    for role_parts in parts.values():
        for split, indices in role_parts:
            previous = wanted.get(id(split), (split, np.zeros(0, np.int64)))[1]
            wanted[id(split)] = (split, np.union1d(previous, indices))
    table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for split, needed in wanted.values():
        table[id(split)] = _split_features(
            split, needed, size, resize, weights_key, cache, get_extractor, on_progress
        )

    def gather(role: str) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for split, indices in parts[role]:
            known, rows = table[id(split)]
            features.append(rows[np.searchsorted(known, indices)])
            labels.append(split.labels[indices])
        return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int32)

    arrays = {role: gather(role) for role in parts}
    weights_meta = backbone.weights_metadata(weights)
    random_weights = weights_meta["random_weights"]
    metadata = {
        "name": dataset.name + ("-random-weights" if random_weights else ""),
        "source": dataset.source,
        "dataset_info": dataset.info,
        "feature_extractor": FEATURE_EXTRACTOR
        + ("; RANDOM WEIGHTS: not ImageNet features" if random_weights else "; ImageNet weights"),
        "backbone": {**weights_meta, "keras_version": _version("keras"), "batch_size": int(batch_size)},
        "random_weights": random_weights,
        "protocol": protocol,
        "ood_order": order,
        "resize": resize,
        "protocol_overrides": overrides,
        "image_size": size,
        "image_size_from": size_from,
        "resize_method": images.RESIZE_METHODS[resize],
        "splits": plan.metadata,
        "ood": selection.metadata,
        "created_by": f"evojax-prune {_version('evojax-prune')} extract",
    }
    return FeatureSet(
        x_train=arrays["train"][0], y_train=arrays["train"][1],
        x_val=arrays["val"][0], y_val=arrays["val"][1],
        x_test=arrays["test"][0], y_test=arrays["test"][1],
        ood_val=arrays["ood_val"][0], ood_test=arrays["ood_test"][0],
        class_names=dataset.class_names,
        metadata=metadata,
    )


def _image_size(dataset: images.ImageDataset, image_size: int | None, protocol: str) -> tuple[int, str]:
    """(side S, where it came from: "given", "authors' size for NAME" or "default")."""
    if image_size is not None:
        return int(image_size), "given"
    authors = images.authors_dataset(dataset)
    if authors is not None:
        return images.AUTHORS_DATASETS[authors][0], f"authors' size for {authors}"
    if protocol == "paper":
        known = "; ".join(
            f"{name} {side} ({', '.join(names)})" for name, (side, names) in images.AUTHORS_DATASETS.items()
        )
        raise ValueError(
            f"protocol='paper': {dataset.name!r} is not a data set the authors used, so their image size "
            f"is unknown (known: {known}); pass image_size=S"
        )
    return images.DEFAULT_IMAGE_SIZE, "default"


def _split_features(split: images.ImageSplit, needed: np.ndarray, image_size: int, resize: str,
                    weights_key: str, cache: FeatureCache,
                    get_extractor: Callable[[], backbone.FeatureExtractor],
                    on_progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted indices, their features) covering ``needed``: the cache's, plus what was missing."""
    key = FeatureCache.key(split, image_size, weights_key, resize)
    known, rows = cache.load(key)
    missing = np.setdiff1d(needed, known)
    label = f"{split.dataset.split(':', 1)[-1]} {split.split}"
    if on_progress is not None:
        on_progress(label, 0, len(missing))
    if len(missing) == 0:
        return known, rows
    new_rows = get_extractor()(
        split.images(image_size, missing, resize),
        on_batch=None if on_progress is None else (lambda done, total: on_progress(label, done, total)),
    )
    order = np.argsort(np.concatenate([known, missing]), kind="stable")
    known = np.concatenate([known, missing])[order]
    rows = np.concatenate([rows, new_rows])[order]
    cache.store(key, known, rows)
    return known, rows


def _as_dataset(spec, data_dir, say: MessageFn) -> images.ImageDataset:
    if isinstance(spec, images.ImageDataset):
        return spec
    say(f"loading {os.fspath(spec)}")
    return images.load_dataset(spec, data_dir=data_dir)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_weights(text: str) -> backbone.Weights:
    """``--weights``: ``imagenet``, ``none`` (random, tests only) or a path."""
    lowered = text.strip().lower()
    if lowered == "imagenet":
        return "imagenet"
    if lowered in ("none", "random"):
        return None
    return text


# ---------------------------------------------------------------------------
# The command


def register(parser: argparse.ArgumentParser) -> None:
    """Adds the ``extract`` arguments to ``parser`` (cheap: imports nothing heavy)."""
    parser.description = (
        "Compute ResNet-50 features (Keras, ImageNet weights, JAX backend) of an image data set and of "
        "other data sets for its OoD sets, and write them as a FeatureSet .npz."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    add = parser.add_argument
    what.add_argument("--tfds", metavar="NAME", help="in-distribution TFDS data set, e.g. citrus_leaves")
    what.add_argument("--folder", metavar="PATH", help="in-distribution image folder PATH/SPLIT/LABEL/IMAGE")
    add("--ood", metavar="NAME_OR_PATH", nargs="+", action="extend", default=[],
        help="other data sets for the OoD sets (TFDS names, folders, tfds:NAME, folder:PATH); at least one; "
             "the first get the remainders (the authors' order: SRSMAS LEAVES PAINTING RPS CATARACT PLANTS)")
    add("--image-size", type=int, metavar="S",
        help="resize images to SxS (default: the authors' size for a data set they used, by name: "
             "SRSMAS/corals 299, LEAVES 256, CATARACT 256, PAINTING 256, PLANTS 100, RPS 300; else 224)")
    add("--protocol", choices=tuple(PROTOCOLS), default="default",
        help="default: random (seeded) OoD choice, bilinear resize; paper: the authors' choices, "
             "--ood-order folder --resize nearest and their image size (default: default)")
    add("--ood-order", choices=ood_selection.OOD_ORDERS, default=None,
        help="which OoD images: random (seeded draw per class) or folder (the authors': the first of each "
             "class of each --ood data set's train split, classes and files by sorted name; the next ones "
             "for OoD validation); default: the protocol's")
    add("--resize", choices=tuple(images.RESIZE_METHODS), default=None,
        help="how images are resized to SxS, in-distribution and OoD alike: bilinear, or nearest (Keras' "
             "default, the authors'); default: the protocol's")
    add("--val-fraction", type=float, default=0.2, metavar="F",
        help="stratified share of train held out for validation (default 0.2)")
    add("--test-fraction", type=float, default=0.2, metavar="F",
        help="share of train held out for test when there is no test split (default 0.2)")
    add("--seed", type=int, default=0, metavar="S", help="seed of the splits and OoD choice (default 0)")
    add("--batch-size", type=int, default=64, metavar="B", help="images per backbone call (default 64)")
    parser.add_argument("--weights", default="imagenet", metavar="PATH|imagenet|none",
                        help=f"backbone weights: imagenet (Keras' cache, downloaded on first use), a local "
                             f"{backbone.IMAGENET_WEIGHTS_FILE}, or none (random: tests only)")
    parser.add_argument("--cache-dir", metavar="DIR", help="feature cache (default ~/.cache/evojax-prune)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    parser.add_argument("--data-dir", metavar="DIR", help="TFDS data directory (default TFDS' own)")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="the FeatureSet file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    """The ``extract`` command: checks, extracts with a progress bar, saves atomically."""
    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: directory {out.parent} does not exist")
    source = images.TFDS_PREFIX + args.tfds if args.tfds else images.FOLDER_PREFIX + args.folder

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True, quiet=args.quiet)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TimeRemainingColumn(), console=console,
    )
    tasks: dict[str, Any] = {}

    def on_progress(what: str, done: int, total: int) -> None:
        if what not in tasks:
            if total == 0:
                console.print(f"{what}: features cached", highlight=False)
                tasks[what] = None
                return
            tasks[what] = progress.add_task(what, total=total)
        if tasks[what] is not None:
            progress.update(tasks[what], completed=done)

    with progress:
        featureset = extract_featureset(
            source, args.ood,
            image_size=args.image_size, protocol=args.protocol, ood_order=args.ood_order,
            resize=args.resize, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, batch_size=args.batch_size, weights=parse_weights(args.weights),
            cache_dir=args.cache_dir, use_cache=not args.no_cache, data_dir=args.data_dir,
            on_progress=on_progress, on_message=lambda text: console.print(text, highlight=False),
        )
    featureset.save(out)
    console.print(f"{featureset}\nwritten to {out}", highlight=False, soft_wrap=True)
    if featureset.metadata.get("random_weights"):
        console.print("warning: random backbone weights (--weights none): these are not ImageNet features",
                      style="yellow", highlight=False, soft_wrap=True)
    return 0
