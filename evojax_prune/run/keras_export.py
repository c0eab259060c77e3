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

``inputs="images"`` puts the run's backbone in front, one model from images
to classes, as the authors deployed theirs (``build_image_model``):

  (N, S, S, 3) RGB in 0..255, resized as ``extract`` resized them
  -> Dense(3, fixed; "caffe_preprocessing"): RGB -> BGR minus the ImageNet means
  -> ResNet-50 (include_top=False, pooling="avg": global average pooling; frozen;
     the run's weights) -> (N, 2048)
  -> the head above, as inputs="features"

``extract`` records what that takes in the FeatureSet's metadata (config.json's
``features``): ``backbone`` (the weights: ``imagenet``, a file and its SHA-256,
or ``random``), ``image_size`` and ``resize``; ``backbone_weights`` finds the
weights again. The preprocessing is Keras' ``preprocess_input`` ("caffe") as a
per-pixel linear map, for the same reason as the one-hot selection (no
``Lambda``); it is exact in float32: products by 0 and 1, then the same
subtraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.data import backbone
from evojax_prune.head import CompactHead
from evojax_prune.io.keras_backend import import_keras
from evojax_prune.version import __version__

INPUTS = ("features", "kept")  # what a head alone takes
IMAGES = "images"  # what a head behind the run's backbone takes
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


def caffe_preprocessing():
    """Keras' ``resnet.preprocess_input`` ("caffe") as a fixed, non-trainable ``Dense(3)`` on the channels.

    Applied to (..., 3) RGB values, it gives BGR minus ``backbone.CAFFE_BGR_MEANS``:
    output channel j is input channel 2 - j (kernel: the reversal permutation)
    plus the bias -mean_j.
    """
    keras = import_keras()
    layer = keras.layers.Dense(3, trainable=False, name="caffe_preprocessing")
    layer.build((None, 3))
    layer.set_weights([np.eye(3, dtype=np.float32)[::-1].copy(),
                       -np.asarray(backbone.CAFFE_BGR_MEANS, np.float32)])
    return layer


def backbone_weights(features_metadata: dict[str, Any] | None,
                     weights: backbone.Weights = None) -> backbone.Weights:
    """The backbone weights ``extract`` recorded, as ``backbone.build_resnet50`` takes them.

    Args:
      features_metadata: the run's FeatureSet metadata (config.json's ``features``).
      weights: a weights file to use instead of the recorded one (the recorded
        path is another machine's); it must be the same file (the recorded
        SHA-256, or the MD5 of Keras' ImageNet file). None: the recorded weights.

    Raises:
      ValueError: the features were not made by ``extract`` (no backbone in
        their metadata), or were made with random weights and ``weights`` is given.
      WeightsUnavailableError: the weights file is missing or is not the recorded one.
    """
    metadata = features_metadata or {}
    recorded = metadata.get("backbone")
    if not isinstance(recorded, dict) or "weights" not in recorded or "image_size" not in metadata:
        raise ValueError(
            f"the run's features {metadata.get('name', 'unnamed')!r} "
            f"({metadata.get('source', 'source unknown')}) were not made by 'evojax-prune extract' from "
            "images: their metadata records no backbone, so "
            "there is no backbone to export; export the head alone (without with_backbone=True)")
    kind = recorded["weights"]
    if kind == "random":
        if weights is not None:
            raise ValueError("the run's features were extracted with random backbone weights (tests only); "
                             "no weights file can stand in for them")
        return None  # seeded: build_resnet50 makes the same ones again
    if kind == "imagenet" and weights is None:
        try:  # found (or downloaded) now, so that a failure names export's argument, not extract's
            backbone.imagenet_weights_file()
        except backbone.WeightsUnavailableError:
            raise backbone.WeightsUnavailableError(
                f"{backbone.IMAGENET_WEIGHTS_FILE}, the weights the run's features were extracted with, is "
                "not in Keras' cache (~/.keras/models) and cannot be downloaded; pass a copy of it "
                "(backbone_weights=PATH), checked against its MD5") from None
        return "imagenet"
    path = Path(recorded.get("file", "") if weights is None else weights).expanduser()
    if not path.is_file():
        raise backbone.WeightsUnavailableError(
            f"{path}: no such file, and the run's features were extracted with it; pass the same weights "
            "file where it is on this machine (backbone_weights=PATH)")
    if kind == "imagenet":
        expected, found = recorded.get("md5", backbone.IMAGENET_WEIGHTS_MD5), _md5(path)
    else:
        expected, found = recorded.get("sha256"), backbone.weights_metadata(path)["sha256"]
    if found != expected:
        raise backbone.WeightsUnavailableError(
            f"{path}: not the weights the run's features were extracted with ({kind} weights, digest "
            f"{expected}; this file's is {found})")
    return path


def build_image_model(compact: CompactHead, image_size: int, weights: backbone.Weights):
    """One ``keras.Model``: (N, S, S, 3) RGB images -> (N, C) logits (module docstring), weights set.

    The ResNet-50 is a copy of ``backbone.build_resnet50(image_size, weights)``,
    the network ``extract`` ran, frozen (its weights are not trainable), so the
    model's trainable weights are the head's kept units only.
    """
    keras = import_keras()
    extracting = backbone.build_resnet50(image_size, weights)
    resnet = keras.models.clone_model(extracting)  # not the cached model itself: it is frozen below
    resnet.set_weights(extracting.get_weights())
    resnet.trainable = False
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    logits = build_model(compact, "features")(resnet(caffe_preprocessing()(images)))
    return keras.Model(images, logits, name="pruned_head_on_resnet50")


def export_head(compact: CompactHead, path: str | os.PathLike, *, inputs: str = "features",
                overwrite: bool = False, record: dict[str, Any] | None = None,
                features_metadata: dict[str, Any] | None = None,
                weights: backbone.Weights = None) -> Path:
    """Writes ``compact`` to ``path`` (a ``.keras`` file), whole or not at all.

    Args:
      compact: the head (``SearchResult.head``).
      path: where; must end in ``.keras``. An existing file is refused unless ``overwrite``.
      inputs: ``"features"`` (the model takes all D features), ``"kept"`` (the k
        kept ones) or ``"images"`` (the run's backbone in front: ``build_image_model``).
      record: what the head is (member, metrics, run), stored in the archive's ``evojax_prune.json``.
      features_metadata, weights: with ``inputs="images"``, the run's FeatureSet
        metadata and a weights file to use instead of the recorded one (``backbone_weights``).

    Raises:
      ValueError: a bad path or ``inputs``; with ``"images"``, features not made by ``extract``.
      FileExistsError, FileNotFoundError: the file exists, its directory does not, or the
        backbone's weights cannot be found (``WeightsUnavailableError``).
    """
    path = Path(path)
    if inputs not in (*INPUTS, IMAGES):
        raise ValueError(f"inputs must be one of {(*INPUTS, IMAGES)}, got {inputs!r}")
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory")
    described = {
        "format": 1, "written_by": f"evojax-prune {__version__}", "inputs": inputs,
        "num_features": compact.num_features,
        "feature_indices": np.asarray(compact.feature_indices).tolist(),
        "trained_parameters": compact.num_parameters, **(record or {}),
    }
    if inputs == IMAGES:
        resolved = backbone_weights(features_metadata, weights)  # before the build: a clear error first
        size = int(features_metadata["image_size"])
        model = build_image_model(compact, size, resolved)
        described["images"] = {
            "shape": [size, size, 3], "values": "RGB, 0..255 (uint8 or float)",
            "resize": features_metadata.get("resize"),
            "resize_method": features_metadata.get("resize_method"),
            "preprocessing": "inside the model: keras.applications.resnet.preprocess_input (caffe)",
            "backbone": features_metadata["backbone"],
        }
    else:
        model = build_model(compact, inputs)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(RECORD_NAME, json.dumps(described, indent=2, sort_keys=True))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``evojax_prune.json`` entry of an exported model file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(RECORD_NAME))
