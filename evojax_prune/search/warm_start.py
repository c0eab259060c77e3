"""A warm start: masks that seed the first population (``--initial-masks``).

The masks come from an earlier run's ``pareto.npz`` (its front, best
validation accuracy first), from a run directory holding one, or from a
``.npy`` array (K, D) of bool or 0/1 values. They take the first K places of
the initial population (``operators.seed_population``); the other members are
drawn as without them. More masks than the population holds: the first P are
used, with a warning (a front sorted by accuracy keeps its most accurate
members). Every seeded mask is repaired like any other mask to
``SearchConfig.min_active`` and ``max_features``.

Everything is checked before a run directory is created; a problem is one
``InitialMasksError`` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PARETO = "pareto.npz"
# What the files numpy reads begin with: a .npy array, and an .npz (a zip archive).
NPY_MAGIC, NPZ_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


class InitialMasksError(ValueError):
    """Initial masks cannot be used: the message names the source, expected against found."""


def read_initial_masks(path: str | Path, num_features: int) -> np.ndarray:
    """(K, D) bool masks from a ``.npy`` array, a ``pareto.npz`` or a run directory holding one.

    Raises:
      InitialMasksError: missing or unreadable file, no ``masks`` in an archive,
        a shape other than (K >= 1, ``num_features``), values other than 0 and 1.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / PARETO).is_file():
            raise InitialMasksError(f"{path}: a directory without {PARETO}; expected a .npy (K, "
                                    f"{num_features}) mask array, a run's {PARETO} or its run directory")
        path = path / PARETO
    if not path.is_file():
        raise InitialMasksError(f"{path}: no such file; expected a .npy (K, {num_features}) mask array "
                                f"or a run's {PARETO}")
    try:
        with open(path, "rb") as stream:
            start = stream.read(len(NPY_MAGIC))
    except OSError as error:
        raise InitialMasksError(f"{path}: cannot be read ({error.strerror})") from None
    if not start.startswith((NPY_MAGIC, NPZ_MAGIC)):  # a CSV, a text file: not numpy's "pickled data"
        shown = f"starts with {start.decode('ascii', 'replace')!r}" if start else "is empty"
        raise InitialMasksError(f"{path}: not a .npy or .npz file (it {shown}, not numpy's header); "
                                f"expected a .npy (K, {num_features}) mask array, e.g. written by "
                                f"numpy.save, or a run's {PARETO}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "masks" not in loaded.files:
                    raise InitialMasksError(f"{path}: an .npz archive without a 'masks' array (found "
                                            f"{sorted(loaded.files)[:5]}); expected a run's {PARETO}")
                loaded = loaded["masks"]
    except InitialMasksError:
        raise
    except Exception as error:  # BadZipFile, ValueError (pickles, bad header), OSError, EOFError...
        raise InitialMasksError(f"{path}: not a readable .npy or .npz file ({type(error).__name__}: "
                                f"{' '.join(str(error).split())})") from None
    return check_initial_masks(loaded, num_features, source=str(path))


def check_initial_masks(masks: Any, num_features: int, *, source: str = "initial_masks") -> np.ndarray:
    """``masks`` as (K, D) bool, checked: 2-D, K >= 1, D columns, only 0 and 1 (or bool)."""
    array = np.asarray(masks)
    found = f"{array.dtype} {array.shape}"
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != num_features:
        raise InitialMasksError(f"{source}: masks are {found}, expected (K, {num_features}): one row per "
                                f"mask, one column per feature, K >= 1")
    if array.dtype != bool:
        if array.dtype.kind not in "iuf":
            raise InitialMasksError(f"{source}: masks are {found}, expected bool or 0/1 numbers")
        values = np.unique(array)
        other = values[(values != 0) & (values != 1)]
        if other.size:
            raise InitialMasksError(f"{source}: masks must hold only 0 and 1, found {other[:3].tolist()} "
                                    f"({other.size} other distinct values)")
    return array.astype(bool)


def for_population(masks: np.ndarray, population_size: int, *, source: str = "initial_masks",
                   stacklevel: int = 2) -> np.ndarray:
    """The first ``population_size`` masks, warning when there were more."""
    if len(masks) > population_size:
        warnings.warn(f"{source}: {len(masks)} masks for a population of {population_size}; the first "
                      f"{population_size} seed it", RuntimeWarning, stacklevel=stacklevel + 1)
        return masks[:population_size]
    return masks


def digest(masks: np.ndarray) -> str:
    """SHA-256 of (K, D) bool masks (their shape and bits): config.json's record of a warm start."""
    masks = np.asarray(masks, bool)
    hasher = hashlib.sha256(f"{masks.shape}".encode())
    hasher.update(np.packbits(masks, axis=1).tobytes())
    return hasher.hexdigest()


def record(masks: np.ndarray, source: str | None) -> dict[str, Any]:
    """config.json's ``initial_masks``: where the seeds came from, how many, their digest."""
    return {"source": source, "count": len(masks), "sha256": digest(masks)}
