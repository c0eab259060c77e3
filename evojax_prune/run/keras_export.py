"""A pruned head as a Keras model file (``.keras``) that plain Keras loads.

``export_head`` builds a ``keras.Sequential`` from a ``head.CompactHead``:

  inputs="features":  (N, D) -> Dense(k, fixed one-hot, non-trainable; "kept_features")
  inputs="kept":      (N, k), the kept features in ``feature_indices`` order
  then                Dense(h1, relu, no bias) [-> Dense(h2, relu, no bias)] -> Dense(C) logits

so ``keras.saving.load_model(path)(x)`` gives the head's logits with no
evojax-prune import. Keras has no built-in gather layer (a ``Lambda`` would
need ``safe_mode=False`` to load), hence the fixed one-hot selection of the
first form: its D x k zeros and ones are not trained weights, every trained
weight in the file belongs to a kept unit. The archive also holds
``evojax_prune.json``: the feature indices, D, the member's metrics and where
it came from (Keras ignores the entry; ``zipfile`` reads it).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.head import CompactHead
from evojax_prune.io.keras_backend import import_keras
from evojax_prune.version import __version__

INPUTS = ("features", "kept")
RECORD_NAME = "evojax_prune.json"  # the archive entry that says what the model is


def build_model(compact: CompactHead, inputs: str = "features"):
    """The ``keras.Sequential`` of ``compact`` (module docstring), weights set."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got {inputs!r}")
    keras = import_keras()
    kept = len(compact.feature_indices)
    width = compact.num_features if inputs == "features" else kept
    layers: list[Any] = [keras.Input(shape=(width,), name=inputs)]
    weights: list[list[np.ndarray]] = []
    if inputs == "features":
        selection = np.zeros((compact.num_features, kept), np.float32)
        selection[np.asarray(compact.feature_indices), np.arange(kept)] = 1.0
        layers.append(keras.layers.Dense(kept, use_bias=False, trainable=False, name="kept_features"))
        weights.append([selection])
    kernels = [np.asarray(compact.hidden_kernel)]
    if compact.second_kernel is not None:
        kernels.append(np.asarray(compact.second_kernel))
    for number, kernel in enumerate(kernels, start=1):
        layers.append(keras.layers.Dense(kernel.shape[1], activation="relu", use_bias=False,
                                         name=f"hidden{number}"))
        weights.append([kernel])
    layers.append(keras.layers.Dense(compact.output_bias.shape[-1], name="logits"))
    weights.append([np.asarray(compact.output_kernel), np.asarray(compact.output_bias)])
    model = keras.Sequential(layers, name="pruned_head")
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer, values in zip(dense, weights, strict=True):
        layer.set_weights(values)
    return model


def export_head(compact: CompactHead, path: str | os.PathLike, *, inputs: str = "features",
                overwrite: bool = False, record: dict[str, Any] | None = None) -> Path:
    """Writes ``compact`` to ``path`` (a ``.keras`` file), whole or not at all.

    Args:
      compact: the head (``SearchResult.head``).
      path: where; must end in ``.keras``. An existing file is refused unless ``overwrite``.
      inputs: ``"features"`` (the model takes all D features) or ``"kept"`` (the k kept ones).
      record: what the head is (member, metrics, run), stored in the archive's ``evojax_prune.json``.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    model = build_model(compact, inputs)
    described = {
        "format": 1, "written_by": f"evojax-prune {__version__}", "inputs": inputs,
        "num_features": compact.num_features,
        "feature_indices": np.asarray(compact.feature_indices).tolist(),
        "trained_parameters": compact.num_parameters, **(record or {}),
    }
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(RECORD_NAME, json.dumps(described, indent=2, sort_keys=True))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``evojax_prune.json`` entry of an exported model file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(RECORD_NAME))
