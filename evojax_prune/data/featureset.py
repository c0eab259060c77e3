"""FeatureSet: the arrays a search runs on, and their ``.npz`` file format.

A FeatureSet holds what the frozen backbone produced once per image:

  * ``x_train (N_tr, D)``, ``x_val (N_va, D)``, ``x_test (N_te, D)``: float32 features;
  * ``y_train``, ``y_val``, ``y_test``: int32 labels in ``[0, C)``;
  * ``ood_val (M_va, D)``, ``ood_test (M_te, D)``: features of out-of-distribution
    images (other data sets), used by the robustness objective;
  * ``class_names``: C names; ``metadata``: a JSON-serialisable dict (data set
    name, feature extractor, image size, how the splits were made, ...).

On disk it is one ``.npz`` (no pickles) with a ``format_version``; ``load``
validates everything and names the problem, ``save`` writes atomically.

A FeatureSet of one class is a valid file (``inspect`` prints it, with a
warning), but no search runs on it: every head is then right on every sample
and no OoD score separates anything, so ``check_searchable`` refuses it at the
start of a search (``loop.run_search``, ``evojax-prune run``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.io.atomic import write_atomically

FORMAT_NAME = "evojax-prune.FeatureSet"
FORMAT_VERSION = 1

FEATURE_ARRAYS = ("x_train", "x_val", "x_test", "ood_val", "ood_test")
LABEL_ARRAYS = ("y_train", "y_val", "y_test")
SPLITS = (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test"))
MIN_SEARCH_CLASSES = 2  # a search needs two classes at least (``FeatureSet.check_searchable``)


class FeatureSetError(ValueError):
    """A FeatureSet (or its file) is malformed; the message names the problem."""


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features and labels of one in-distribution data set plus its OoD features.

    Construct it directly (it validates) or with ``FeatureSet.load(path)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ood_val: np.ndarray
    ood_test: np.ndarray
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._validate(source="FeatureSet")

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "unnamed"))

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{split}={getattr(self, 'x_' + split).shape[0]}" for split in ("train", "val", "test")
        )
        return (
            f"FeatureSet({self.name!r}: {sizes}; D={self.num_features} features; "
            f"C={self.num_classes} classes {list(self.class_names)}; "
            f"OoD val={self.ood_val.shape[0]}, test={self.ood_test.shape[0]})"
        )

    __str__ = __repr__

    def _validate(self, *, source: str) -> None:
        def fail(message: str):
            raise FeatureSetError(f"{source}: {message}")

        widths = {}
        for name in FEATURE_ARRAYS:
            array = getattr(self, name)
            if not isinstance(array, np.ndarray):
                fail(f"{name} must be a numpy array, found {type(array).__name__}")
            if not np.issubdtype(array.dtype, np.floating):
                fail(f"{name} must hold floating-point features, found dtype {array.dtype}")
            if array.ndim != 2:
                fail(f"{name} must be 2-D (samples, features), found shape {array.shape}")
            if array.shape[0] == 0:
                fail(f"{name} is empty (0 samples)")
            if not np.all(np.isfinite(array)):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                fail(f"{name} has {bad} non-finite values (NaN or inf)")
            widths[name] = array.shape[1]
        if len(set(widths.values())) != 1:
            expected = widths["x_train"]
            other = next(name for name, width in widths.items() if width != expected)
            fail(
                f"feature width differs between splits: x_train has {expected} features, "
                f"{other} has {widths[other]}"
            )
        if not self.class_names or not all(isinstance(c, str) for c in self.class_names):
            fail(f"class_names must be a non-empty sequence of strings, found {self.class_names!r}")
        num_classes = len(self.class_names)
        for x_name, y_name in SPLITS:
            labels = getattr(self, y_name)
            if not isinstance(labels, np.ndarray):
                fail(f"{y_name} must be a numpy array, found {type(labels).__name__}")
            if not np.issubdtype(labels.dtype, np.integer):
                fail(f"{y_name} must hold integer labels, found dtype {labels.dtype}")
            if labels.shape != (getattr(self, x_name).shape[0],):
                fail(
                    f"{y_name} must have shape ({getattr(self, x_name).shape[0]},) to match "
                    f"{x_name}, found {labels.shape}"
                )
            outside = (labels < 0) | (labels >= num_classes)
            if np.any(outside):
                fail(
                    f"{y_name} has labels outside [0, {num_classes}): "
                    f"{sorted(set(labels[outside].tolist()))[:5]}"
                )
        missing = sorted(set(range(num_classes)) - set(np.unique(self.y_train).tolist()))
        if missing:
            names = [self.class_names[i] for i in missing]
            fail(f"class(es) missing from train: {names} (labels {missing})")
        if not isinstance(self.metadata, dict):
            fail(f"metadata must be a dict, found {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata)
        except TypeError as error:
            fail(f"metadata must be JSON-serialisable: {error}")

    def search_problem(self, source: str | None = None) -> str | None:
        """Why no search can run on this FeatureSet (``source``: its file, else its name), or None."""
        if self.num_classes >= MIN_SEARCH_CLASSES:
            return None
        return (f"{source or f'FeatureSet {self.name!r}'}: has {self.num_classes} class; the search needs "
                f"at least {MIN_SEARCH_CLASSES} (with one class every head is right on every sample and its "
                "softmax is 1 on any input, so no OoD score ranks anything)")

    def check_searchable(self, source: str | None = None) -> None:
        """Refuses a FeatureSet no search can run on (``search_problem``): a FeatureSetError."""
        problem = self.search_problem(source)
        if problem:
            raise FeatureSetError(problem)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of the arrays and class names as ``save`` stores them; the metadata (paths,
        times) is not in it. A run's fingerprint holds it, so a run's files are tied to their data."""
        hasher = hashlib.sha256()
        arrays = [(name, np.asarray(getattr(self, name), np.float32)) for name in FEATURE_ARRAYS]
        arrays += [(name, np.asarray(getattr(self, name), np.int32)) for name in LABEL_ARRAYS]
        for name, array in arrays:
            hasher.update(f"{name}{array.dtype.str}{array.shape}".encode())
            hasher.update(np.ascontiguousarray(array).tobytes())
        hasher.update(json.dumps(list(self.class_names)).encode())
        return hasher.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the FeatureSet to ``path`` (.npz) atomically: a complete file or none."""
        path = Path(path)
        arrays = {name: np.asarray(getattr(self, name), np.float32) for name in FEATURE_ARRAYS}
        arrays.update({name: np.asarray(getattr(self, name), np.int32) for name in LABEL_ARRAYS})
        arrays["class_names"] = np.asarray(self.class_names, dtype=np.str_)
        arrays["metadata_json"] = np.asarray(json.dumps(self.metadata, sort_keys=True))
        arrays["format"] = np.asarray(FORMAT_NAME)
        arrays["format_version"] = np.asarray(FORMAT_VERSION, np.int32)
        if not path.parent.is_dir():
            raise FeatureSetError(f"{path}: directory {path.parent} does not exist")
        write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Reads and validates a FeatureSet file; raises FeatureSetError naming the problem."""
        path = Path(path)
        if not path.exists():
            raise FeatureSetError(f"{path}: no such file")
        if path.is_dir():
            raise FeatureSetError(f"{path}: is a directory, expected a FeatureSet .npz file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                contents = {name: archive[name] for name in archive.files}
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as error:
            raise FeatureSetError(f"{path}: not a FeatureSet .npz file ({error})") from None
        if not isinstance(contents, dict) or contents.get("format") is None:
            raise FeatureSetError(
                f"{path}: not a FeatureSet file (no 'format' entry; found arrays {sorted(contents)})"
            )
        if str(contents["format"]) != FORMAT_NAME:
            raise FeatureSetError(f"{path}: not a FeatureSet file (format is {str(contents['format'])!r})")
        version = int(contents.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise FeatureSetError(
                f"{path}: FeatureSet format version {version} is not supported (expected {FORMAT_VERSION})"
            )
        required = (*FEATURE_ARRAYS, *LABEL_ARRAYS, "class_names", "metadata_json")
        missing = [name for name in required if name not in contents]
        if missing:
            raise FeatureSetError(f"{path}: missing array(s) {missing}")
        try:
            metadata = json.loads(str(contents["metadata_json"]))
        except json.JSONDecodeError as error:
            raise FeatureSetError(f"{path}: metadata is not valid JSON ({error})") from None
        fields = {name: contents[name] for name in (*FEATURE_ARRAYS, *LABEL_ARRAYS)}
        class_names = tuple(str(name) for name in np.atleast_1d(contents["class_names"]))
        featureset = object.__new__(cls)
        for name, value in {**fields, "class_names": class_names, "metadata": metadata}.items():
            object.__setattr__(featureset, name, value)
        featureset._validate(source=str(path))
        return featureset

    def arrays(self) -> dict[str, np.ndarray]:
        """The feature and label arrays by name."""
        return {name: getattr(self, name) for name in (*FEATURE_ARRAYS, *LABEL_ARRAYS)}

