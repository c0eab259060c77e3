"""The run directory: what a search writes, written atomically, and its checkpoint.

Layout:
  config.json      the resolved configuration, seed, data set, package versions, JAX devices
  history.jsonl    one JSON line per generation
  checkpoint.npz   everything needed to resume after the last finished generation
  pareto.csv       the final front, one row per member (validation and test metrics)
  pareto.npz       the front's masks and trained head parameters, and the baseline's
  summary.json     baseline, front, hypervolume, wall time

Every file is replaced atomically (``atomic.write_atomically``), so a run killed
at any moment leaves complete files from the last finished generation.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune import atomic

RUN_FILES = (
    "config.json", "history.jsonl", "checkpoint.npz", "pareto.csv", "pareto.npz", "summary.json",
    # written by ``evojax-prune report`` and ``evojax-prune explain``
    "report.md", "ensembles.json", "figures", "explain",
)


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked; the message says why and what to do."""


def prepare(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Checks (and creates) the run directory before anything is computed.

    An existing, non-empty directory is refused unless ``resume`` (continue the
    run in it) or ``overwrite`` (delete the earlier run's files first) is given;
    ``overwrite`` refuses a directory holding files that are not a run's.
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path}: exists and is not a directory")
    existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if resume:
        if not (path / "checkpoint.npz").is_file():
            raise RunDirectoryError(f"{path}: nothing to resume (no checkpoint.npz)")
        return path
    if existing:
        if not overwrite:
            raise RunDirectoryError(
                f"{path}: directory exists and is not empty; pass --resume to continue the run in it "
                "or --overwrite to replace it"
            )
        foreign = [name for name in existing if name not in RUN_FILES and not name.startswith(".")]
        if foreign:
            raise RunDirectoryError(
                f"{path}: will not overwrite, it holds files that are not a run's: {foreign[:5]}"
            )
        for name in existing:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not _writable(parent):
        raise RunDirectoryError(f"{path}: cannot write here ({parent} is not writable)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"{path}: cannot create the run directory ({error.strerror})") from None
    return path


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def environment() -> dict[str, Any]:
    """Package versions and devices, recorded beside the configuration."""
    import jax

    versions = {}
    for package in ("evojax-prune", "jax", "jaxlib", "flax", "optax", "evosax", "numpy", "moocore"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "devices": [str(device) for device in jax.devices()],
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
    }


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic.write_text(path / "history.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic.write_atomically(path / "checkpoint.npz", lambda stream: np.savez(stream, **arrays))


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path / "checkpoint.npz", allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"{path / 'checkpoint.npz'}: cannot be read ({error})") from None
